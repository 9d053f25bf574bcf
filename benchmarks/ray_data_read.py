"""Ray Data's two Parquet readers on this machine, in one run: the wall time of reading a dataset
(read_parquet -> materialize) with DataSourceV2 (Ray 2.60's default, which starts footer-reading
actors for every read) and with the V1 reader that instructscale.runtime selects.
    python benchmarks/ray_data_read.py --rows 2000 --repeats 3
"""

from __future__ import annotations

import statistics
import time

from harness import Bench


def arguments(p) -> None:
    p.add_argument("--rows", type=int, nargs="+", default=[2000, 200_000])
    p.add_argument("--repeats", type=int, default=3)


def main() -> None:
    import ray

    from instructscale.lifecycle import part_files

    bench = Bench("ray_data_read", __doc__, arguments)
    args = bench.args
    bench.ray()
    ctx = ray.data.DataContext.get_current()
    for rows in args.rows:
        pool, _ = bench.demo(rows, shards=8, folder=f"data-{rows}")
        files = part_files(pool)
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
        bench.results.append(row)
    ctx.use_datasource_v2 = False
    bench.table(["rows", "files", "v2_median_s", "v1_median_s", "v2_over_v1"])
    bench.write()


if __name__ == "__main__":
    main()
