"""Ray Data's shuffles on this machine, in one run.

1. Strategies: the wall time of instructscale's hash join (shuffle.mark_in: a union and a groupby
   over a hash partition column, as dedup and selection use it) with each of Ray 2.60's shuffles:
   ``hash_shuffle`` (aggregator actors), ``shuffle_v2`` (task-based hash shuffle, Ray's default and
   the one instructscale.runtime pins: it honours num_partitions) and ``sort_shuffle_pull_based``.
2. Anti-join: generation's resume (the pool rows whose id is not a parent_id of a finished part)
   with Ray's own ``Dataset.join(join_type="left_anti")`` (which needs ``pip install polars``) against
   shuffle.anti_join, same inputs.
    python benchmarks/ray_data_shuffle.py --rows 2000 100000 --repeats 3
"""

from __future__ import annotations

import statistics
import time
import zlib

from harness import Bench


def arguments(p) -> None:
    p.add_argument("--rows", type=int, nargs="+", default=[2000, 100_000])
    p.add_argument("--repeats", type=int, default=3)


def _median_times(bench: Bench, arms: dict, run, row: dict) -> None:
    """``row[f"{arm}_median_s"]`` for each arm, the arms interleaved so that none runs only warm."""
    for name in [*arms, *arms]:
        for _ in range(bench.args.repeats):
            t0 = time.time()
            run(arms[name])
            row.setdefault(f"{name}_s", []).append(time.time() - t0)
    for name in arms:
        row[f"{name}_median_s"] = statistics.median(row[f"{name}_s"])


def strategies(bench: Bench, files: list[str], rows: int) -> dict:
    import pyarrow as pa
    import ray
    from ray.data.context import ShuffleStrategy

    from instructscale.shuffle import mark_in
    from instructscale.storage import parquet_schema

    ctx = ray.data.DataContext.get_current()
    arms = {
        "hash": ShuffleStrategy.HASH_SHUFFLE,
        "hash_v2": ShuffleStrategy.SHUFFLE_V2,
        "sort_pull": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED,
    }
    partitions = max(1, rows // 25_000)
    pool_schema = parquet_schema(files[0])
    schema = pa.schema([pool_schema.field("id"), pool_schema.field("instruction")])  # the files' own

    def run(strategy) -> None:
        ctx.shuffle_strategy = strategy
        ds = ray.data.read_parquet(files, columns=["id", "instruction"])
        keys = ds.filter(lambda r: hash(r["id"]) % 2 == 0).select_columns(["id"])
        marked = mark_in(ds, keys, key="id", right_key="id", schema=schema, flag="in", partitions=partitions)
        assert marked.count() == rows

    row = {"rows": rows, "partitions": partitions}
    _median_times(bench, arms, run, row)
    ctx.shuffle_strategy = ShuffleStrategy.SHUFFLE_V2
    row["hash_over_sort_pull"] = row["hash_median_s"] / row["sort_pull_median_s"]
    row["hash_v2_over_sort_pull"] = row["hash_v2_median_s"] / row["sort_pull_median_s"]
    return row


def anti_joins(bench: Bench, files: list[str], rows: int) -> dict:
    import ray

    from instructscale.shuffle import anti_join
    from instructscale.storage import parquet_schema

    partitions = max(2, rows // 25_000)
    schema = parquet_schema(files[0])

    def pool_and_done():
        ds = ray.data.read_parquet(files)
        done = ds.filter(lambda r: zlib.crc32(r["id"].encode()) % 2 == 0).select_columns(["id"])
        return ds, done.rename_columns({"id": "parent_id"})

    def run(way: str) -> None:
        ds, done = pool_and_done()
        if way == "ours":
            left = anti_join(ds, done, key="id", right_key="parent_id", schema=schema, partitions=partitions)
        else:
            left = ds.join(done, "left_anti", partitions, on=("id",), right_on=("parent_id",))
        ids = ray.data.read_parquet(files, columns=["id"]).to_pandas()["id"]
        expected = sum(zlib.crc32(i.encode()) % 2 != 0 for i in ids)
        assert left.count() == expected

    row = {"rows": rows, "partitions": partitions}
    _median_times(bench, {"ours": "ours", "ray_join": "ray_join"}, run, row)
    row["ray_join_over_ours"] = row["ray_join_median_s"] / row["ours_median_s"]
    return row


def main() -> None:
    from instructscale.lifecycle import part_files

    bench = Bench("ray_data_shuffle", __doc__, arguments)
    bench.ray()
    joins = []
    for rows in bench.args.rows:
        files = part_files(bench.demo(rows, shards=8, folder=f"data-{rows}")[0])
        bench.results.append(strategies(bench, files, rows))
        joins.append(anti_joins(bench, files, rows))
    strategy_medians = [f"{n}_median_s" for n in ("hash", "hash_v2", "sort_pull")]
    bench.table(["rows", "partitions", *strategy_medians, "hash_over_sort_pull", "hash_v2_over_sort_pull"])
    print()
    bench.table(["rows", "partitions", "ours_median_s", "ray_join_median_s", "ray_join_over_ours"], joins)
    bench.write(anti_join=joins)


if __name__ == "__main__":
    main()
