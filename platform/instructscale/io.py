"""Atomic output helpers: every stage writes to a staging path and renames into place."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from instructscale.config import ConfigError

MANIFEST = "_manifest.json"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_parquet_atomic(path: str | Path, table: pa.Table) -> None:
    """Write one Parquet file via a temp name in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of a completed output directory, or None if the output is absent/incomplete."""
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def publish_dir(staging: str | Path, final: str | Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into ``staging`` and move it to ``final`` (replacing an old output)."""
    staging, final = Path(staging), Path(final)
    write_json_atomic(staging / MANIFEST, manifest)
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)


def staging_dir(final: str | Path) -> Path:
    """A fresh sibling directory of ``final`` to build an output in before publishing it."""
    final = Path(final)
    path = final.with_name(f".{final.name}.staging-{uuid.uuid4().hex[:8]}")
    path.mkdir(parents=True)
    return path


def existing_path(path: str, field: str) -> str:
    """``path`` made absolute (Ray workers may run in another directory); a ConfigError naming
    the config ``field`` if it does not exist."""
    if not os.path.exists(path):
        raise ConfigError(f"{field}: {path!r} does not exist")
    return os.path.abspath(path)


def model_ref(ref: str, field: str = "model") -> str:
    """A local model directory made absolute, or a hub id unchanged; a path-like ``ref``
    (absolute, ./ or ../, or existing) that is not a directory is a ConfigError."""
    if os.path.isdir(ref):
        return os.path.abspath(ref)
    if os.path.isabs(ref) or ref.startswith(".") or os.path.exists(ref):
        raise ConfigError(f"{field}: {ref!r} is not a model directory")
    return ref
