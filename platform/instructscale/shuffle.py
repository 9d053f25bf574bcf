"""Hash-partitioned Ray Data operations whose memory follows a partition, never the whole dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import xxhash

PART, KEYED = "_part", "_keyed"


def digests(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable 64-bit hash (xxh64, the same in every process) of each string key."""
    return np.fromiter((xxhash.xxh64_intdigest(k.encode()) for k in keys.to_pylist()), np.uint64, len(keys))


def partition_of(keys: pa.Array | pa.ChunkedArray, partitions: int | np.ndarray) -> pa.Array:
    """A stable partition number in [0, partitions) for each string key (``partitions`` may differ per key)."""
    return pa.array((digests(keys) % np.asarray(partitions, dtype=np.uint64)).astype(np.int32))


def _tag(batch: pa.Table, key: str, partitions: int, keyed: bool) -> pa.Table:
    flags = pa.array(np.full(batch.num_rows, keyed))
    return batch.append_column(PART, partition_of(batch[key], partitions)).append_column(KEYED, flags)


def _as_keys(batch: pa.Table, key: str, right_key: str, schema: pa.Schema, partitions: int) -> pa.Table:
    """``batch``'s keys as rows of the left schema (other columns null), tagged as keys."""
    columns = [batch[right_key] if f.name == key else pa.nulls(batch.num_rows, f.type) for f in schema]
    return _tag(pa.Table.from_arrays(columns, schema=schema), key, partitions, True)


def _mark(group: pa.Table, key: str, flag: str, unique: bool) -> pa.Table:
    keys = group.filter(group[KEYED])[key].combine_chunks()
    rows = group.filter(pc.invert(group[KEYED])).drop_columns([PART, KEYED])
    if unique and len(pc.unique(rows[key])) != rows.num_rows:
        counts = pc.value_counts(rows[key])
        repeated = [c["values"] for c in counts.to_pylist() if c["counts"] > 1][:3]
        raise ValueError(f"{key} is not unique: {repeated} appear more than once")
    return rows.append_column(flag, pc.is_in(rows[key], value_set=keys))


def mark_in(
    ds: ray.data.Dataset,
    keys: ray.data.Dataset,
    *,
    key: str,
    right_key: str,
    schema: pa.Schema,
    flag: str,
    partitions: int,
    unique: bool = False,
) -> ray.data.Dataset:
    """The rows of ``ds`` (of ``schema``) plus a bool column ``flag``: whether their ``key`` is a
    ``right_key`` of ``keys``. One hash shuffle of both; each partition is decided on its own (and,
    with ``unique``, checks that no ``key`` repeats), so nothing gathers on the driver."""
    left = ds.map_batches(
        _tag, batch_format="pyarrow", fn_kwargs={"key": key, "partitions": partitions, "keyed": False}
    )
    right = keys.map_batches(
        _as_keys,
        batch_format="pyarrow",
        fn_kwargs={"key": key, "right_key": right_key, "schema": schema, "partitions": partitions},
    )
    return (
        left.union(right)
        .groupby(PART, num_partitions=partitions)
        .map_groups(_mark, batch_format="pyarrow", fn_kwargs={"key": key, "flag": flag, "unique": unique})
    )


def _unflagged(batch: pa.Table, flag: str) -> pa.Table:
    return batch.filter(pc.invert(batch[flag])).drop_columns([flag])


def anti_join(
    ds: ray.data.Dataset, keys: ray.data.Dataset, *, key: str, right_key: str, schema: pa.Schema, partitions: int
) -> ray.data.Dataset:
    """The rows of ``ds`` whose ``key`` is not a ``right_key`` of ``keys`` (see :func:`mark_in`).

    Ray 2.60's ``Dataset.join(join_type="left_anti")`` does the same, but it needs polars and ran
    2.8-3.4x slower here on generation's resume (benchmarks/ray_data_shuffle.py, 2k and 50k rows),
    so this one stays."""
    marked = mark_in(ds, keys, key=key, right_key=right_key, schema=schema, flag=KEYED, partitions=partitions)
    return marked.map_batches(_unflagged, batch_format="pyarrow", fn_kwargs={"flag": KEYED})
