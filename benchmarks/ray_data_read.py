"""Ray Data's two Parquet readers on this machine, in one run: the wall time of reading a dataset
(read_parquet -> materialize) with DataSourceV2 (Ray 2.60's default, which starts footer-reading
actors for every read) and with the V1 reader that instructscale.runtime selects.
    python benchmarks/ray_data_read.py --rows 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import print_table, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 200_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.lifecycle import part_files
    from instructscale.runtime import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=8))
    ctx = ray.data.DataContext.get_current()
    results = []
    for rows in args.rows:
        out = Path(tempfile.mkdtemp(prefix="bench-read-"))
        make_demo(DemoConfig(out_dir=str(out), rows=rows, shards=8, eval_rows=0, malformed_jsonl_rows=0))
        files = part_files(str(out / "pool"))
        row = {"rows": rows, "files": len(files)}
        for v2 in (True, False, True, False):  # interleaved, so neither runs only warm
            ctx.use_datasource_v2 = v2
            times = []
            for _ in range(args.repeats):
                t0 = time.time()
                ray.data.read_parquet(files).materialize()
                times.append(time.time() - t0)
            row.setdefault("v2_s" if v2 else "v1_s", []).extend(times)
        row["v2_median_s"], row["v1_median_s"] = statistics.median(row["v2_s"]), statistics.median(row["v1_s"])
        row["v2_over_v1"] = row["v2_median_s"] / row["v1_median_s"]
        results.append(row)
    ctx.use_datasource_v2 = False
    print_table(results, ["rows", "files", "v2_median_s", "v1_median_s", "v2_over_v1"])
    write_result("ray_data_read", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
