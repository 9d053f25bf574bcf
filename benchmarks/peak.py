"""This machine's dense matmul peak, the yardstick of the training metrics' MFU: TFLOP/s of a
2048x2048 matmul in bf16 and fp32 with 1 thread and with every core (and on each GPU where there
is one). The training stage measures the same thing in each worker at start-up
(``instructscale.train.flops.matmul_peak_tflops``) unless ``train.peak_tflops`` is set.
    python benchmarks/peak.py
"""

from __future__ import annotations

import os

import torch

from harness import Bench
from instructscale.train.flops import matmul_peak_tflops


def arguments(p) -> None:
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seconds", type=float, default=2.0, help="timed bursts per measurement")


def main() -> None:
    bench = Bench("peak", __doc__, arguments)
    args, rows = bench.args, bench.results
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        for dtype in (torch.bfloat16, torch.float32):
            tflops = matmul_peak_tflops(dtype, "cpu", args.size, args.seconds)
            rows.append({"device": "cpu", "threads": threads, "dtype": str(dtype)[6:], "tflops": tflops})
    for i in range(torch.cuda.device_count()):
        for dtype in (torch.bfloat16, torch.float32):
            tflops = matmul_peak_tflops(dtype, f"cuda:{i}", max(args.size, 8192), args.seconds)
            rows.append(
                {"device": torch.cuda.get_device_name(i), "threads": None, "dtype": str(dtype)[6:], "tflops": tflops}
            )
    bench.table(["device", "threads", "dtype", "tflops"])
    bench.write(cpu_count=os.cpu_count())


if __name__ == "__main__":
    main()
