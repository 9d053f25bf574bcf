"""Generation backends (plug-ins): vLLM, Hugging Face transformers, OpenAI-compatible HTTP."""

from instructscale.backends.base import (
    Completion,
    Conversation,
    GenerationError,
    SamplingConfig,
    build_backend,
    cut_at_stop,
)

__all__ = ["Completion", "Conversation", "GenerationError", "SamplingConfig", "build_backend", "cut_at_stop"]
