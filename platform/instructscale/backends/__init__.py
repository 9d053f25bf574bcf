"""Generation backends (plug-ins of :class:`instructscale.plugins.Backend`): vLLM, Hugging Face
transformers, OpenAI-compatible HTTP; their shared types are in :mod:`.base`."""
