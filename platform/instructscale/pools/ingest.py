"""Ingest stage: read instruction files of any supported format, validate, and write canonical
Parquet parts plus a quarantine of malformed rows, in one streaming Ray Data pass."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Discriminator, Field, Tag

from instructscale import storage
from instructscale.config import ConfigError, StrictModel
from instructscale.lifecycle import StageConfig, StageRun, commit_file, commit_part, part_name
from instructscale.markdown import markdown_table
from instructscale.plugins import register
from instructscale.pools.records import ColumnMap, RecordLimits
from instructscale.pools.registry import RegistryInput, registry_inputs
from instructscale.progress import Progress
from instructscale.schema import POOL_COLUMNS, POOL_SCHEMA
from instructscale.stage import Pipe, Stage

if TYPE_CHECKING:
    from ray.data import Dataset

log = logging.getLogger(__name__)
NO_DATA = "no data: set `inputs`, or `demo: {}` for the built-in demo pool"


class PoolInput(StrictModel):
    """One input: a file, a directory or a glob (local or a URI), in one format."""

    path: str
    format: Literal["jsonl", "parquet", "alpaca", "sharegpt", "hf", "seed_tasks"] = Field(
        description="hf: a Hugging Face `datasets` folder (save_to_disk Arrow files or Parquet); "
        "seed_tasks: Self-Instruct seed-task JSONL"
    )
    source: str | None = Field(None, description="value of the `source` column when rows carry none")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="canonical name (prompt, query, response, history, system, messages, "
        "tools) -> this input's field name, as LLaMA-Factory's dataset_info",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="role_tag, content_tag, user_tag, assistant_tag, system_tag, "
        "observation_tag, function_tag -> this input's names",
    )
    weight: float | None = Field(
        None, ge=0, description="this source's mixture weight (a registry's `weight`), recorded in the manifest"
    )


def _input_kind(value: Any) -> str:
    """Which kind of input a config entry is: a registry when it names a ``dataset_info``."""
    is_registry = isinstance(value, RegistryInput) or (isinstance(value, dict) and "dataset_info" in value)
    return "RegistryInput" if is_registry else "PoolInput"


InputSpec = Annotated[
    Annotated[PoolInput, Tag("PoolInput")] | Annotated[RegistryInput, Tag("RegistryInput")],
    Discriminator(_input_kind),
]


class IngestOptions(StrictModel):
    """Validation bounds and part size; the `ingest` section of a pipeline config."""

    max_field_chars: int = Field(32_768, ge=1)
    max_messages: int = Field(256, ge=1)
    rows_per_shard: int = Field(100_000, ge=1, description="rows per output part")


class IngestConfig(IngestOptions, StageConfig):
    """`instructscale ingest`: inputs -> out_dir/pool (Parquet parts) and out_dir/quarantine (JSONL)."""

    inputs: list[InputSpec] = Field(
        min_length=1, description="files ({path, format, ...}) or LLaMA-Factory registries ({dataset_info, names})"
    )
    out_dir: str

    def file_inputs(self) -> list[PoolInput]:
        """Every input as a file input: a registry's datasets in its place."""
        out: list[PoolInput] = []
        for i, inp in enumerate(self.inputs):
            if isinstance(inp, RegistryInput):
                out += [PoolInput(**fields) for fields in registry_inputs(inp, f"inputs[{i}]")]
            else:
                out.append(inp)
        return out


def _expand(inp: PoolInput, index: int) -> list[str]:
    """The files of one input, as absolute paths or URIs."""
    if any(ch in inp.path for ch in "*?["):
        paths = storage.glob(inp.path)
    elif storage.is_file(inp.path):
        paths = [storage.normalize(inp.path)]
    else:
        from instructscale.pools.datasource import FORMATS  # Ray Data: imported where files are read

        extensions = tuple(f".{e}" for e in FORMATS[inp.format][0])
        paths = [p for p in storage.list_files(inp.path) if p.endswith(extensions)]
    if not paths:
        raise ConfigError(f"inputs[{index}].path: no file or directory matches {inp.path!r}")
    return paths


def read_pool(cfg: IngestConfig) -> Dataset:
    """A Ray Dataset over every input, with `_file/_line/_reason/_raw` validation columns."""
    from instructscale.pools.datasource import PoolDatasource

    limits = RecordLimits(max_field_chars=cfg.max_field_chars, max_messages=cfg.max_messages)
    datasets = []
    for i, inp in enumerate(cfg.file_inputs()):
        paths = _expand(inp, i)
        fs, _ = storage.resolve(paths[0])
        prefix = "" if storage.is_local(paths[0]) else f"{storage.scheme(paths[0])}://"
        source = PoolDatasource(
            [storage.resolve(p)[1] for p in paths],
            fmt=inp.format,
            source=inp.source,
            limits=limits,
            filesystem=fs,
            uri_prefix=prefix,
            columns=ColumnMap(inp.columns, inp.tags),
        )
        datasets.append(ray.data.read_datasource(source))
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _quarantine_jsonl(bad: pa.Table) -> bytes:
    return "".join(
        json.dumps({"file": r["_file"], "line": r["_line"], "reason": r["_reason"], "raw": r["_raw"]}) + "\n"
        for r in bad.to_pylist()
    ).encode()


DUPLICATE_SCHEMA = pa.schema([("_file", pa.string()), ("_line", pa.int64()), ("first", pa.string())])


def _valid_keys(block: pa.Table) -> pa.Table:
    return block.filter(pc.is_null(block["_reason"])).select(["id", "_file", "_line"])


def _later_copies(group: pa.Table) -> pa.Table:
    """For one id: every occurrence after the first (by file and line), with where the first is."""
    if group.num_rows < 2:
        return DUPLICATE_SCHEMA.empty_table()
    rows = sorted(zip(group["_file"].to_pylist(), group["_line"].to_pylist()))
    (first_file, first_line), later = rows[0], rows[1:]
    first = f"{group['id'][0].as_py()!r} first at {first_file}:{first_line}"
    return pa.table(
        {"_file": [f for f, _ in later], "_line": [n for _, n in later], "first": [first] * len(later)},
        schema=DUPLICATE_SCHEMA,
    )


ID_PARTITION_BYTES = 256 * 2**20  # input bytes per partition of the id groupby


def id_partitions(cfg: IngestConfig) -> int:
    """Partitions for the id groupby: one per 256 MiB of input files."""
    size = 0
    for i, inp in enumerate(cfg.file_inputs()):
        for uri in _expand(inp, i):
            fs, path = storage.resolve(uri)
            size += fs.get_file_info(path).size or 0
    return max(1, -(-size // ID_PARTITION_BYTES))


def duplicate_ids(ds: Dataset, partitions: int) -> pa.Table:
    """Every row whose id an earlier row already has, found by a distributed groupby on the ids
    (the driver receives the duplicates only, never the set of all ids)."""
    later = (
        ds.map_batches(_valid_keys, batch_format="pyarrow")
        .groupby("id", num_partitions=partitions)
        .map_groups(_later_copies, batch_format="pyarrow")
    )
    tables = [t for t in ray.get(later.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables).cast(DUPLICATE_SCHEMA) if tables else DUPLICATE_SCHEMA.empty_table()


def _mark_duplicates(block: pa.Table, duplicates: pa.Table) -> pa.Table:
    """Quarantine the rows of ``block`` that repeat an earlier row's id (reason ``duplicate_id``)."""
    if not duplicates.num_rows:
        return block
    keys = pc.binary_join_element_wise(block["_file"], pc.cast(block["_line"], pa.string()), "\x1f")
    dup_keys = pc.binary_join_element_wise(duplicates["_file"], pc.cast(duplicates["_line"], pa.string()), "\x1f")
    where = pc.index_in(keys, value_set=dup_keys)
    hit = pc.is_valid(where)
    if not pc.any(hit).as_py():
        return block
    reasons = [
        f"duplicate_id: {duplicates['first'][i].as_py()}" if i is not None else r
        for i, r in zip(where.to_pylist(), block["_reason"].to_pylist())
    ]
    return block.set_column(block.schema.get_field_index("_reason"), "_reason", pa.array(reasons, pa.string()))


def _write_block(block: pa.Table, out: str, duplicates: list) -> pa.Table:
    """One block -> a committed pool part and a committed quarantine part; returns its counts.
    ``duplicates`` holds one ObjectRef to the later copies of repeated ids."""
    block = _mark_duplicates(block, ray.get(duplicates[0]))
    is_bad = pc.is_valid(block["_reason"])
    good = block.filter(pc.invert(is_bad)).select(list(POOL_COLUMNS)).cast(POOL_SCHEMA)
    bad = block.filter(is_bad).select(["_file", "_line", "_reason", "_raw"])
    keys = [f"{f}:{line}" for f, line in zip(block["_file"].to_pylist(), block["_line"].to_pylist())]
    name = part_name(keys)
    if good.num_rows:
        commit_part(storage.join(out, "pool"), name, good)
    reasons: Counter[str] = Counter(r.split(":", 1)[0] for r in bad["_reason"].to_pylist())
    files: Counter[str] = Counter(bad["_file"].to_pylist())
    if bad.num_rows:
        commit_file(
            storage.join(out, "quarantine"), name.replace(".parquet", ".jsonl"), _quarantine_jsonl(bad), bad.num_rows
        )
    return pa.table(
        {
            "rows": [good.num_rows],
            "quarantined": [bad.num_rows],
            "reasons": [json.dumps(reasons)],
            "files": [json.dumps(files)],
        }
    )


@register("ingest")
class Ingest(Stage[IngestConfig]):
    """Every input through Ray Data: canonical Parquet parts, and a quarantine of malformed rows
    with file, line and reason; exact counts in the manifest."""

    Config = IngestConfig
    Options = IngestOptions
    summary = "read/validate pools into canonical Parquet shards plus a quarantine"
    after = "demo"
    rebuilt = ("pool", "quarantine")
    published = ("pool", "quarantine")

    def check(self) -> IngestConfig:
        return self.cfg.model_copy(update={"inputs": self.cfg.file_inputs()})

    def before_start(self, run: StageRun) -> None:
        # the repeated ids are found before the output is touched: a bad input fails the stage early
        self.t0 = time.time()
        self.duplicates = duplicate_ids(read_pool(self.cfg), id_partitions(self.cfg))

    def run(self, run: StageRun) -> dict:
        counts = read_pool(self.cfg).map_batches(
            _write_block,
            batch_size=self.cfg.rows_per_shard,
            batch_format="pyarrow",
            fn_kwargs={"out": run.out, "duplicates": [ray.put(self.duplicates)]},
        )
        rows, quarantined, reasons, files = 0, 0, Counter(), Counter()
        progress = Progress("ingest")
        for rec in counts.iter_rows():
            rows, quarantined = rows + rec["rows"], quarantined + rec["quarantined"]
            reasons.update(json.loads(rec["reasons"]))
            files.update(json.loads(rec["files"]))
            progress.update(rec["rows"] + rec["quarantined"])
        progress.close(f"{quarantined:,} quarantined")
        return {
            "rows": rows,
            "quarantined": quarantined,
            "quarantine_reasons": dict(reasons),
            "quarantine_by_file": dict(files),
            **({"source_weights": weights} if (weights := self._weights()) else {}),
            "seconds": round(time.time() - self.t0, 2),
        }

    def _weights(self) -> dict[str, float]:
        return {inp.source or inp.path: inp.weight for inp in self.cfg.inputs if inp.weight is not None}

    @classmethod
    def wiring(cls, pipe: Pipe) -> dict:
        if not pipe.inputs:
            raise ConfigError(NO_DATA)
        return {"inputs": pipe.inputs}

    @classmethod
    def hand_on(cls, manifest: dict, pipe: Pipe) -> None:
        pipe.pool = storage.join(cls.out_dir(pipe.run_dir), "pool")
        pipe.source_weights = manifest.get("source_weights", {})

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(entry["quarantine_reasons"].items())) or "none"
        return [f"ingest     {entry['rows']:,} rows, {entry['quarantined']:,} quarantined ({reasons})"]

    @classmethod
    def report(cls, entry: dict, run: str) -> list[str]:
        reasons = [{"reason": k, "rows": v} for k, v in sorted(entry["quarantine_reasons"].items())]
        return [
            "## Ingest",
            "",
            f"{entry['rows']:,} rows kept, {entry['quarantined']:,} quarantined.",
            "",
            markdown_table(reasons, ["reason", "rows"]),
            "",
        ]


def ingest(cfg: IngestConfig) -> dict:
    """Run the ingest stage; returns (and writes) the manifest with exact counts. A finished output
    for the same config is reused unless ``cfg.overwrite`` is set."""
    return Ingest(cfg).execute()
