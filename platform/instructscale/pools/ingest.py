"""Ingest stage: read instruction files of any supported format, validate, and write canonical
Parquet shards plus a quarantine of malformed rows, in one streaming Ray Data pass."""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field
from ray.data import Dataset
from ray.data.block import Block
from ray.data.datasource import Datasink

from instructscale.config import ConfigError, StrictModel
from instructscale.io import publish_dir, read_manifest, write_json_atomic, write_parquet_atomic
from instructscale.pools.datasource import PoolDatasource
from instructscale.pools.records import RecordLimits
from instructscale.schema import POOL_COLUMNS, POOL_SCHEMA

log = logging.getLogger(__name__)
_COUNTS = "_counts"


class PoolInput(StrictModel):
    """One input: a file, a directory or a glob, in one format."""

    path: str
    format: Literal["jsonl", "parquet", "alpaca", "sharegpt"]
    source: str | None = Field(None, description="value of the `source` column when rows carry none")


class IngestOptions(StrictModel):
    """Validation bounds and shard size; the `ingest` section of a pipeline config."""

    max_field_chars: int = Field(32_768, ge=1)
    max_messages: int = Field(256, ge=1)
    rows_per_shard: int = Field(100_000, ge=1)
    overwrite: bool = False


class IngestConfig(IngestOptions):
    """`instructscale ingest`: inputs -> out_dir/pool/*.parquet and out_dir/quarantine/*.jsonl."""

    inputs: list[PoolInput] = Field(min_length=1)
    out_dir: str


def _expand(inp: PoolInput, index: int) -> list[str]:
    if any(ch in inp.path for ch in "*?["):
        paths = sorted(glob.glob(inp.path))
    else:
        paths = [inp.path] if os.path.exists(inp.path) else []
    if not paths:
        raise ConfigError(f"inputs[{index}].path: no file or directory matches {inp.path!r}")
    return [os.path.abspath(p) for p in paths]


def read_pool(cfg: IngestConfig) -> Dataset:
    """A Ray Dataset over every input, with `_file/_line/_reason/_raw` validation columns."""
    limits = RecordLimits(max_field_chars=cfg.max_field_chars, max_messages=cfg.max_messages)
    datasets = [
        ray.data.read_datasource(PoolDatasource(_expand(inp, i), fmt=inp.format, source=inp.source, limits=limits))
        for i, inp in enumerate(cfg.inputs)
    ]
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


class _IngestSink(Datasink[dict]):
    """Splits each write task's blocks into canonical Parquet rows and quarantined JSONL rows."""

    def __init__(self, staging: Path, rows_per_write: int):
        self._staging = staging
        self._rows_per_write = rows_per_write

    @property
    def min_rows_per_write(self) -> int:
        return self._rows_per_write

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        good, bad = [], []
        for block in blocks:
            is_bad = pc.is_valid(block["_reason"])
            good.append(block.filter(pc.invert(is_bad)).select(list(POOL_COLUMNS)).cast(POOL_SCHEMA))
            bad.append(block.filter(is_bad).select(["_file", "_line", "_reason", "_raw"]))
        name = f"part-{ctx.task_idx:05d}"
        good_t = pa.concat_tables(good) if good else POOL_SCHEMA.empty_table()
        if good_t.num_rows:
            write_parquet_atomic(self._staging / "pool" / f"{name}.parquet", good_t)
        reasons: Counter[str] = Counter()
        files: Counter[str] = Counter()
        bad_rows = [r for t in bad for r in t.to_pylist()]
        if bad_rows:
            lines = []
            for r in bad_rows:
                reasons[r["_reason"].split(":", 1)[0]] += 1
                files[r["_file"]] += 1
                lines.append(json.dumps({"file": r["_file"], "line": r["_line"], "reason": r["_reason"], "raw": r["_raw"]}))
            tmp = self._staging / "quarantine" / f".{name}.jsonl.tmp"
            tmp.write_text("\n".join(lines) + "\n")
            tmp.replace(self._staging / "quarantine" / f"{name}.jsonl")
        counts = {"rows": good_t.num_rows, "quarantined": len(bad_rows), "reasons": dict(reasons), "files": dict(files)}
        write_json_atomic(self._staging / _COUNTS / f"{name}.json", counts)
        return counts


def _collect_counts(staging: Path) -> list[dict]:
    """Per-write-task counts, read back from the files the tasks wrote (then removed)."""
    paths = sorted((staging / _COUNTS).glob("*.json"))
    counts = [json.loads(p.read_text()) for p in paths]
    shutil.rmtree(staging / _COUNTS, ignore_errors=True)
    return counts


def ingest(cfg: IngestConfig) -> dict:
    """Run the ingest stage; returns (and writes) the manifest with exact counts.

    A finished output for the same config is reused unless ``cfg.overwrite`` is set.
    """
    out = Path(cfg.out_dir)
    done = read_manifest(out)
    if done and done.get("config") == cfg.model_dump(mode="json") and not cfg.overwrite:
        log.info("ingest: %s already complete (%d rows), skipping", out, done["rows"])
        return done
    t0 = time.time()
    ds = read_pool(cfg)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "pool").mkdir(parents=True)
    (staging / "quarantine").mkdir()
    sink = _IngestSink(staging, cfg.rows_per_shard)
    ds.write_datasink(sink)
    results = _collect_counts(staging)
    manifest = {
        "config": cfg.model_dump(mode="json"),
        "rows": sum(r["rows"] for r in results),
        "quarantined": sum(r["quarantined"] for r in results),
        "quarantine_reasons": dict(sum((Counter(r["reasons"]) for r in results), Counter())),
        "quarantine_by_file": dict(sum((Counter(r["files"]) for r in results), Counter())),
        "shards": sorted(p.name for p in (staging / "pool").glob("*.parquet")),
        "seconds": round(time.time() - t0, 2),
    }
    publish_dir(staging, out, manifest)
    return manifest
