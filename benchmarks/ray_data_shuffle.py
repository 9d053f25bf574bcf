"""Ray Data's shuffle strategies on this machine, in one run: the wall time of instructscale's hash
join (shuffle.mark_in: a union and a groupby over a hash partition column, as dedup, selection
and generation's resume use it) with each of Ray 2.60's shuffles: ``hash_shuffle`` (aggregator
actors), ``shuffle_v2`` (task-based hash shuffle, Ray's default and the one instructscale.runtime
pins: it honours num_partitions) and ``sort_shuffle_pull_based`` (tasks, ranges of sampled keys).
    python benchmarks/ray_data_shuffle.py --rows 2000 100000 --repeats 3
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
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import pyarrow as pa
    import ray
    from ray.data.context import ShuffleStrategy

    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.lifecycle import part_files
    from instructscale.runtime import RayConfig, init_ray
    from instructscale.shuffle import mark_in
    from instructscale.storage import parquet_schema

    init_ray(RayConfig(num_cpus=8))
    ctx = ray.data.DataContext.get_current()
    strategies = {
        "hash": ShuffleStrategy.HASH_SHUFFLE,
        "hash_v2": ShuffleStrategy.SHUFFLE_V2,
        "sort_pull": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED,
    }
    results = []
    for rows in args.rows:
        out = Path(tempfile.mkdtemp(prefix="bench-shuffle-"))
        make_demo(DemoConfig(out_dir=str(out), rows=rows, shards=8, eval_rows=0, malformed_jsonl_rows=0))
        files = part_files(str(out / "pool"))
        partitions = max(1, rows // 25_000)
        pool_schema = parquet_schema(files[0])
        schema = pa.schema([pool_schema.field("id"), pool_schema.field("instruction")])  # the files' own
        row = {"rows": rows, "partitions": partitions}
        for name in [*strategies, *strategies]:  # interleaved, so neither runs only warm
            ctx.shuffle_strategy = strategies[name]
            for _ in range(args.repeats):
                ds = ray.data.read_parquet(files, columns=["id", "instruction"])
                keys = ds.filter(lambda r: hash(r["id"]) % 2 == 0).select_columns(["id"])
                t0 = time.time()
                marked = mark_in(ds, keys, key="id", right_key="id", schema=schema, flag="in", partitions=partitions)
                assert marked.count() == rows
                row.setdefault(f"{name}_s", []).append(time.time() - t0)
        for name in strategies:
            row[f"{name}_median_s"] = statistics.median(row[f"{name}_s"])
        row["hash_over_sort_pull"] = row["hash_median_s"] / row["sort_pull_median_s"]
        row["hash_v2_over_sort_pull"] = row["hash_v2_median_s"] / row["sort_pull_median_s"]
        results.append(row)
    print_table(
        results,
        ["rows", "partitions", *(f"{n}_median_s" for n in strategies), "hash_over_sort_pull", "hash_v2_over_sort_pull"],
    )
    write_result("ray_data_shuffle", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
