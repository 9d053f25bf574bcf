"""instructscale: turn a raw instruction pool into a better instruction-tuned model on Ray."""

__version__ = "0.1.0"
