"""The one stage lifecycle: identity -> skip-if-done -> start (resume or clean) -> committed parts ->
publish (manifests written last).

An output directory (local path or object-store URI) holds one or more *datasets* (``pool/``,
``scores/``, ...). A part is written whole, then gets a small commit record under
``<dataset>/_commits/``; readers trust committed parts only, so a crash never exposes half an
output, on disks or on object stores (which have no rename). ``publish`` writes each dataset's
``_manifest.json`` (its parts and row counts) and then the stage's ``_manifest.json``: a stage is
done exactly when that file exists with the same identity and schema version.

A rerun keeps the committed parts of *resumable* datasets (generation and selection features resume
from them) and removes everything uncommitted; other datasets are rebuilt.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, field_validator

from instructscale import storage
from instructscale.config import ConfigError, StrictModel, without_operational
from instructscale.plugins import resolve_entry
from instructscale.redact import redact
from instructscale.storage import StorageConfig

SCHEMA_VERSION = 4  # of manifests and canonical rows (3: tool calls, 4: reasoning, loss_weight)
READABLE_VERSIONS = (3, 4)  # a schema-3 row reads as a schema-4 row without reasoning or loss weights
MANIFEST = "_manifest.json"
STARTED = "_started.json"
COMMITS = "_commits"


class StageConfig(StrictModel):
    """Base of every stage config: plug-ins, storage settings, overwrite, and the stage's identity.

    Parsing one has no side effects: the process that parses it imports its ``plugins`` first and
    applies its ``storage`` settings when the stage runs (:mod:`instructscale.process`)."""

    plugins: list[str] = Field(default_factory=list, description="modules or .py files that register plug-ins")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    overwrite: bool = Field(False, description="discard this stage's earlier output and run again")

    IDENTITY_EXCLUDE: ClassVar[frozenset[str]] = frozenset()

    @field_validator("plugins")
    @classmethod
    def _absolute_files(cls, entries: list[str]) -> list[str]:
        return [resolve_entry(e) for e in entries]

    def identity(self) -> dict:
        """What decides whether an earlier output can be reused: the config without run settings."""
        exclude = {"plugins", "storage", "overwrite", *self.IDENTITY_EXCLUDE}
        return without_operational(self, self.model_dump(mode="json", exclude=exclude))

    def shared(self) -> dict:
        """The settings a stage hands to the stages and workers it starts."""
        return {"plugins": self.plugins, "storage": self.storage}


def part_name(keys: list[str], prefix: str = "part") -> str:
    """A deterministic part file name from the keys (row ids) it holds: a retried task rewrites the
    same part instead of adding a second copy."""
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return f"{prefix}-{digest}.parquet"


def record_commit(dataset: str, name: str, rows: int, **extra: Any) -> dict:
    """Commit the part ``name`` of ``dataset``, already written whole; returns the record."""
    record = {"file": name, "rows": rows, **extra}
    storage.write_json(storage.join(dataset, COMMITS, f"{name}.json"), record)
    return record


def commit_part(dataset: str, name: str, table: pa.Table, **extra: Any) -> dict:
    """Write one Parquet part whole, then its commit record; returns the record."""
    storage.write_parquet(storage.join(dataset, name), table)
    return record_commit(dataset, name, table.num_rows, **extra)


def commit_file(dataset: str, name: str, data: bytes, rows: int, **extra: Any) -> dict:
    """As :func:`commit_part` for a non-Parquet part (e.g. quarantine JSONL)."""
    storage.write_bytes(storage.join(dataset, name), data)
    return record_commit(dataset, name, rows, **extra)


def commit_records(dataset: str) -> list[dict]:
    """Every commit record of ``dataset`` (sorted by file name)."""
    uris = storage.list_files(storage.join(dataset, COMMITS), suffix=".json", hidden=True)
    return sorted((storage.read_json(u) for u in uris), key=lambda r: r["file"])


def part_files(dataset: str, suffix: str = ".parquet") -> list[str]:
    """The files a reader may trust: a published dataset's parts, else its committed parts, else (a
    plain directory or file given by a user) every ``suffix`` file under it."""
    dataset = storage.normalize(dataset)
    manifest = storage.read_json_if_exists(storage.join(dataset, MANIFEST))
    if manifest is not None and "parts" in manifest:
        return [storage.join(dataset, p["file"]) for p in manifest["parts"] if p["file"].endswith(suffix)]
    records = commit_records(dataset)
    if records:
        return [storage.join(dataset, r["file"]) for r in records if r["file"].endswith(suffix)]
    if storage.is_file(dataset):
        return [dataset]
    return storage.list_files(dataset, suffix=suffix)


def require_dataset(path: str, field: str) -> str:
    """``path`` normalised, after checking it holds Parquet rows; a ConfigError naming ``field`` if not."""
    if not storage.exists(path) or not part_files(path):
        raise ConfigError(f"{field}: {path!r} does not exist or holds no Parquet files")
    return storage.normalize(path)


def dataset_rows(dataset: str) -> int:
    """Rows of a published dataset (from its manifest, without reading the parts)."""
    manifest = storage.read_json_if_exists(storage.join(dataset, MANIFEST))
    if manifest is None:
        raise ConfigError(f"{dataset}: not a published dataset (no {MANIFEST})")
    return manifest["rows"]


class StageRun:
    """One run of a stage into ``out``: decides skip/resume/clean and publishes the manifests."""

    def __init__(self, stage: str, out: str, identity: dict, overwrite: bool = False):
        self.stage, self.out, self.overwrite = stage, storage.normalize(out), overwrite
        self.identity = redact(identity)  # manifests are shared: no credential in a URL reaches one

    def uri(self, *parts: str) -> str:
        return storage.join(self.out, *parts)

    def finished(self) -> dict | None:
        """The manifest of a finished run with this identity (None: run the stage)."""
        manifest = storage.read_json_if_exists(self.uri(MANIFEST))
        if manifest is None or self.overwrite:
            return None
        version = manifest.get("schema_version", 1)
        if version not in READABLE_VERSIONS:
            raise ConfigError(
                f"{self.out}: written by another instructscale version (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); rerun with --overwrite or use another output directory"
            )
        return manifest if manifest.get("config") == self.identity else None

    def start(self, resumable: tuple[str, ...] = (), rebuilt: tuple[str, ...] = ()) -> None:
        """Begin (or resume) the run: ``resumable`` datasets keep their committed parts, ``rebuilt``
        ones are emptied; uncommitted leftovers are removed either way."""
        if self.overwrite:
            storage.remove(self.out)
        started = storage.read_json_if_exists(self.uri(STARTED)) or storage.read_json_if_exists(self.uri(MANIFEST))
        if started is not None and started.get("config") != self.identity:
            kept = [d for d in resumable if commit_records(self.uri(d))]
            if kept:
                raise ConfigError(
                    f"{self.out} holds a run with a different config ({', '.join(kept)} already "
                    "has parts); use another output directory or --overwrite"
                )
        storage.remove(self.uri(MANIFEST))
        storage.write_json(
            self.uri(STARTED),
            {"config": self.identity, "schema_version": SCHEMA_VERSION, "stage": self.stage, "time": time.time()},
        )
        for name in rebuilt:
            storage.remove(self.uri(name))
        for name in resumable:
            self._drop_uncommitted(self.uri(name))

    @staticmethod
    def _drop_uncommitted(dataset: str) -> None:
        storage.remove(storage.join(dataset, MANIFEST))
        committed = {storage.join(dataset, r["file"]) for r in commit_records(dataset)}
        for uri in storage.list_files(dataset, hidden=True):
            if f"/{COMMITS}/" not in uri and uri not in committed:
                storage.remove(uri)

    def publish_dataset(self, name: str, **extra: Any) -> dict:
        """Write ``name``'s manifest from its commit records; returns it."""
        records = commit_records(self.uri(name))
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "parts": records,
            "rows": sum(r["rows"] for r in records),
            **extra,
        }
        storage.write_json(self.uri(name, MANIFEST), manifest)
        return manifest

    def publish(self, summary: dict, datasets: tuple[str, ...] = ()) -> dict:
        """Publish ``datasets`` and then the stage manifest (``summary`` plus identity); returns it."""
        rows = {name: self.publish_dataset(name)["rows"] for name in datasets}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "stage": self.stage,
            "config": self.identity,
            **({"datasets": rows} if rows else {}),
            **redact(summary),
        }
        storage.write_json(self.uri(MANIFEST), manifest)
        storage.remove(self.uri(STARTED))
        return manifest
