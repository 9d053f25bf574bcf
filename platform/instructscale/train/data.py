"""Training rows: reading the usable rows of a pool and their curriculum difficulty."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from instructscale import storage
from instructscale.lifecycle import part_files

TEXT_COLUMNS = ["id", "instruction", "input", "output", "messages", "tools"]  # what tokenizing a row reads
FILTER_COLUMNS = ("output", "reject_reason")  # what :func:`usable_rows` reads


def difficulty_of(row: dict, key: str) -> float:
    """Difficulty from a column, else from the metadata JSON; missing difficulty is an error."""
    value = row.get(key)
    if value is None:
        value = json.loads(row.get("metadata") or "{}").get(key)
    if value is None:
        raise ValueError(f"row {row.get('id')}: no '{key}' column or metadata key for the curriculum")
    return float(value)


def usable_rows(table: pa.Table) -> pa.Table:
    """Rows with a non-empty response and no `reject_reason` (the rows training can use)."""
    mask = pc.and_(
        pc.is_valid(table["output"]), pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table["output"])), 0)
    )
    if "reject_reason" in table.column_names:
        mask = pc.and_(mask, pc.is_null(table["reject_reason"]))
    return table.filter(mask)


def read_training_columns(path: str, columns: list[str]) -> pa.Table:
    """``columns`` (those that exist) of the usable rows of a small Parquet dataset (path or URI),
    such as held-out rows; training rows stream through :mod:`instructscale.train.plan`."""
    files = part_files(path)
    names = storage.parquet_schema(files[0]).names if files else []
    filters = [c for c in FILTER_COLUMNS if c in names]
    return usable_rows(storage.read_parquet(files, columns=sorted({c for c in columns if c in names} | set(filters))))
