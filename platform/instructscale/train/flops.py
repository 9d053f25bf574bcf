"""What training efficiency is measured against: the model's FLOPs per trained token and the
machine's matmul peak (the same measurement as ``benchmarks/peak.py``)."""

from __future__ import annotations

import time

import torch


def matmul_peak_tflops(
    dtype: torch.dtype, device: torch.device | str = "cpu", size: int = 2048, seconds: float = 0.3
) -> float:
    """Dense ``size``x``size`` matmul TFLOP/s at ``dtype`` on ``device`` with this process's threads:
    the best of short timed bursts over about ``seconds`` (after a warm-up)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)

    def burst(reps: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        _sync(device)
        return time.perf_counter() - t0

    one = burst(1)  # warm-up, and a first guess of the time per matmul
    reps = max(1, int(seconds / 6 / max(one, 1e-6)))
    best = min(burst(reps) for _ in range(5)) / reps
    return 2 * size**3 / best / 1e12


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_token(model: torch.nn.Module, full_finetune: bool) -> float:
    """Training FLOPs per token, the usual estimate: 2N forward, 2N for the activations' gradients,
    and 2N more for the weights' gradients when every weight trains (LoRA adapters are negligible).
    N counts each parameter tensor once, without an untied input embedding (a lookup, no
    matmul); attention's sequence-length term is left out (a few percent at 96-512 tokens for
    models of this shape)."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    seen = {id(embed.weight)} if head is None or head.weight is not embed.weight else set()
    n = 0
    for name, p in model.named_parameters():
        if "lora_" in name or id(p) in seen:
            continue
        seen.add(id(p))
        n += p.numel()
    return (6 if full_finetune else 4) * n
