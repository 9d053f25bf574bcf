"""What this machine computes with: the precision that is fast on it, and its dense matmul peak per
device, precision and thread count, the yardstick of every MFU figure. The peak is measured once
per machine (``instructscale peak``, which ``setup.sh`` runs on an idle machine: the method of
``benchmarks/peak.py``, 2 s a figure) and cached under the node's cache directory; a process that
finds no cached figure measures and caches it, and says so."""

from __future__ import annotations

import hashlib
import json
import os
import time
from functools import lru_cache
from pathlib import Path

import torch

from instructscale import storage
from instructscale.train.flops import matmul_peak_tflops

SECONDS = 2.0  # per figure: the benchmark's measurement, long enough to ride out a busy moment


def bf16_fast(device: str = "cpu") -> bool:
    """bf16 runs at hardware speed: a GPU, or a CPU with AVX-512 BF16 or AMX (elsewhere it is emulated
    and slower than fp32)."""
    if device != "cpu":
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def fast_dtype(device: str = "cpu") -> str:
    """The precision models run in by default on ``device``: bfloat16 where it is fast, else float32."""
    return "bfloat16" if bf16_fast(device) else "float32"


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    """The CPU's model name and a digest of its feature flags (a VM's model name can be generic)."""
    info = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    model = fields.get("model name") or os.uname().machine
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:8]
    return f"{model} [{flags}] x{os.cpu_count()}"


def machine_key(dtype: torch.dtype, device: str = "cpu") -> str:
    """What a peak figure is valid for: the processor, the precision and (on CPU) the threads."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} {str(dtype)[6:]}"
    return f"{_cpu_name()} {str(dtype)[6:]} {torch.get_num_threads()} threads"


def _cache() -> Path:
    return storage.cache_root() / "peak_tflops.json"


def _read_cache() -> dict:
    path = _cache()
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def peak_tflops(dtype: torch.dtype, device: str = "cpu") -> tuple[float, str]:
    """This process's matmul peak at ``dtype`` (with its threads on CPU) and where the figure came
    from: the machine's cache, or a measurement now (then cached)."""
    key = machine_key(dtype, device)
    if hit := _read_cache().get(key):
        return hit["tflops"], f"measured {hit['measured']} by {hit['by']}, cached"
    return measure(dtype, device, by="this run at start-up"), "measured at start-up (cached for later runs)"


def measure(dtype: torch.dtype, device: str = "cpu", by: str = "instructscale peak") -> float:
    """Measure the peak now and cache the best figure seen for this machine (a busy moment reads
    low, never high; the file is replaced whole, so concurrent writers never tear it)."""
    tflops = matmul_peak_tflops(dtype, device, 8192 if device.startswith("cuda") else 2048, SECONDS)
    cache, key = _read_cache(), machine_key(dtype, device)
    if tflops < cache.get(key, {}).get("tflops", 0.0):
        return tflops
    cache[key] = {"tflops": round(tflops, 4), "measured": time.strftime("%Y-%m-%d %H:%M"), "by": by}
    path = _cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return tflops


def measure_all(threads: list[int]) -> list[dict]:
    """Measure and cache the CPU peak in bf16 (where fast) and fp32 at each thread count, and on
    every GPU: what ``instructscale peak`` prints."""
    rows = []
    dtypes = [torch.bfloat16, torch.float32] if bf16_fast() else [torch.float32]
    before = torch.get_num_threads()
    for n in threads:
        torch.set_num_threads(n)
        rows += [{"key": machine_key(d), "tflops": measure(d)} for d in dtypes]
    torch.set_num_threads(before)
    for i in range(torch.cuda.device_count()):
        for d in (torch.bfloat16, torch.float32):
            rows.append({"key": machine_key(d, f"cuda:{i}"), "tflops": measure(d, f"cuda:{i}")})
    return rows
