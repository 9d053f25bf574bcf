"""Pool generation and ingest at two pool sizes in one run: rows/s and peak memory.

Target: peak memory bounded (under 2 GiB) and independent of pool size.
    python benchmarks/pool.py                 # 100k and 1M rows
    python benchmarks/pool.py --rows 20000 200000
"""

from __future__ import annotations

import platform as host
import shutil
import time
from pathlib import Path

import ray

from harness import Bench, PeakRSS
from instructscale.demo.pool import DemoConfig, make_demo
from instructscale.pools.ingest import IngestConfig, PoolInput, ingest


def measure(rows: int, work: Path, shards: int) -> dict:
    data, out = work / f"data-{rows}", work / f"ingest-{rows}"
    with PeakRSS() as gen_mem:
        t0 = time.time()
        make_demo(DemoConfig(out_dir=str(data), rows=rows, shards=shards, eval_rows=0, malformed_jsonl_rows=0))
        gen_s = time.time() - t0
    with PeakRSS() as ing_mem:
        t0 = time.time()
        m = ingest(IngestConfig(inputs=[PoolInput(path=str(data / "pool"), format="parquet")], out_dir=str(out)))
        ing_s = time.time() - t0
    assert m["rows"] == rows, m
    shutil.rmtree(data)
    shutil.rmtree(out)
    return {
        "rows": rows,
        "shards": shards,
        "generate_rows_per_s": rows / gen_s,
        "generate_peak_gib": gen_mem.gib,
        "ingest_rows_per_s": rows / ing_s,
        "ingest_peak_gib": ing_mem.gib,
    }


def arguments(p) -> None:
    p.add_argument("--rows", type=int, nargs=2, default=[100_000, 1_000_000])
    p.add_argument("--shards", type=int, default=16, help="same for both sizes: equal parallelism")


def main() -> None:
    bench = Bench("pool", __doc__, arguments)
    bench.ray()
    time.sleep(3)  # let Ray's daemons settle before reading the idle footprint
    idle_gib = PeakRSS().now() / 2**30
    results = bench.results
    results += [measure(n, bench.work, bench.args.shards) for n in bench.args.rows]
    for r in results:
        r["ingest_above_idle_gib"] = r["ingest_peak_gib"] - idle_gib
    small, large = results
    ratios = {
        "rows_ratio": large["rows"] / small["rows"],
        "ingest_peak_ratio": large["ingest_peak_gib"] / small["ingest_peak_gib"],
        "generate_peak_ratio": large["generate_peak_gib"] / small["generate_peak_gib"],
        "ingest_throughput_ratio": large["ingest_rows_per_s"] / small["ingest_rows_per_s"],
    }
    print()
    print(f"idle Ray (driver + daemons + workers): {idle_gib:.2f} GiB")
    bench.table(
        [
            "rows",
            "shards",
            "generate_rows_per_s",
            "generate_peak_gib",
            "ingest_rows_per_s",
            "ingest_peak_gib",
            "ingest_above_idle_gib",
        ],
    )
    print(
        f"\n{large['rows'] // small['rows']}x the rows -> peak memory x{ratios['ingest_peak_ratio']:.2f} (ingest), "
        f"x{ratios['generate_peak_ratio']:.2f} (generate); target: under 2 GiB and ~flat"
    )
    bench.write(
        host=host.node(),
        cpus=ray.cluster_resources().get("CPU"),
        ratios=ratios,
        idle_gib=idle_gib,
        target_peak_gib=2.0,
        within_target=max(r["ingest_above_idle_gib"] for r in results) < 2.0,
    )


if __name__ == "__main__":
    main()
