"""Training metrics as one JSON-lines object (object stores have no append): rank 0 buffers the
records and rewrites the whole object now and then; a resumed run starts from what is there."""

from __future__ import annotations

import json
import time

from instructscale import storage

METRICS = "metrics.jsonl"


class MetricsLog:
    """Every logged step of a run, flushed as a whole object at most every ``every_s`` seconds
    (and whenever ``flush(force=True)``)."""

    def __init__(self, uri: str, every_s: float = 10.0):
        self.uri, self.every_s = uri, every_s
        text = storage.read_text(uri) if storage.is_file(uri) else ""
        self.lines = [line for line in text.splitlines() if line.strip()]
        self._flushed = time.time()

    def add(self, record: dict) -> None:
        self.lines.append(json.dumps(record))

    def flush(self, force: bool = False) -> None:
        if force or time.time() - self._flushed >= self.every_s:
            storage.write_text(self.uri, "\n".join(self.lines) + "\n")
            self._flushed = time.time()


def read_history(uri: str) -> list[dict]:
    """Logged metrics per step; a step logged again after a restart keeps its latest record."""
    by_step = {}
    text = storage.read_text(uri) if storage.is_file(uri) else ""
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def efficiency(history: list[dict]) -> dict | None:
    """Throughput over the logged steps after the first (which pays for lazy initialisation; all
    of them when only one was logged): the rows' tokens and the padded positions per second, the
    share of padding, and model FLOPs utilisation against the workers' matmul peak (with where
    that figure came from)."""
    steady = [r for r in history[1:] if "padded_tokens" in r] or [r for r in history if "padded_tokens" in r]
    if not steady:
        return None
    seconds = sum(r["seconds"] for r in steady)
    tokens, padded = sum(r["tokens"] for r in steady), sum(r["padded_tokens"] for r in steady)
    tflops = sum(r["model_tflops_per_s"] * r["seconds"] for r in steady) / seconds
    peak = steady[-1]["peak_tflops"]
    return {
        "real_tokens_per_s": round(tokens / seconds, 1),
        "padded_tokens_per_s": round(padded / seconds, 1),
        "padding_pct": round(100 * (1 - tokens / padded), 1) if padded else 0.0,
        "model_tflops_per_s": round(tflops, 4),
        "peak_tflops": round(peak, 3),
        "mfu_pct": round(100 * tflops / peak, 2),
        "peak_source": steady[-1].get("peak_source", "unknown"),
    }


def efficiency_text(eff: dict | None) -> str:
    """The summary's efficiency in words (empty for a run without the figures), for the CLI and report."""
    if not eff:
        return ""
    return (
        f"{eff['real_tokens_per_s']:.0f} tok/s ({eff['padding_pct']:.0f}% padding, "
        f"MFU {eff['mfu_pct']:.1f}% of {eff['peak_tflops']:.2f} TFLOP/s), "
    )
