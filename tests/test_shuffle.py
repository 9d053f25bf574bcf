"""Hash-partitioned Ray Data operations: the resume anti-join."""

from __future__ import annotations

import pyarrow as pa
import ray

from instructscale.shuffle import anti_join, partition_of


def test_partition_of_is_stable_and_in_range():
    keys = pa.array([f"row-{i}" for i in range(1000)])
    parts = partition_of(keys, 7).to_numpy()
    assert parts.min() >= 0 and parts.max() < 7 and len(set(parts)) == 7
    assert partition_of(pa.array(["row-5"]), 7)[0].as_py() == parts[5]  # the same key, the same partition


def test_anti_join_keeps_exactly_the_rows_not_done(ray_local):
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    rows = pa.table({"id": [f"r{i}" for i in range(500)], "text": [f"t{i}" for i in range(500)]}, schema=schema)
    done = pa.table({"parent_id": [f"r{i}" for i in range(0, 500, 3)] + ["not-an-input"]})
    ds = ray.data.from_arrow([rows.slice(0, 200), rows.slice(200)])
    out = anti_join(ds, ray.data.from_arrow(done), key="id", right_key="parent_id", schema=schema, partitions=3)
    out = pa.concat_tables(ray.get(out.to_arrow_refs()))
    assert out.schema == schema
    assert sorted(out["id"].to_pylist()) == sorted(f"r{i}" for i in range(500) if i % 3)
    assert dict(zip(out["id"].to_pylist(), out["text"].to_pylist()))["r1"] == "t1"
