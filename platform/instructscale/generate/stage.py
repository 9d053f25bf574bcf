"""The generation stage: stream a pool through an autoscaling pool of teacher actors.

Each actor call handles one batch of input rows and commits its output rows as one Parquet part
(named by a hash of the batch's input ids) under ``out_dir/rows``. A rerun skips input rows whose
`parent_id` is already in a committed part (a hash anti-join in Ray Data: the finished ids never
gather in one process), so a crashed run resumes without regenerating or duplicating rows. Rows a mode cannot use stay in the parts with a `reject_reason` (read them with
:func:`read_generated`); nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from instructscale import storage
from instructscale.backends.base import GenerationError, SamplingConfig
from instructscale.backends.faults import is_row_fault
from instructscale.generate.config import GenerateConfig, GenerateOptions
from instructscale.generate.engines import ATTEMPTS, FAULT_IDS, GEN_SCHEMA, ROWS, EnginePool, Job, part_stats
from instructscale.lifecycle import StageRun, commit_part, commit_records, part_files, require_dataset
from instructscale.plugins import Backend, GenerationMode, register
from instructscale.progress import Progress
from instructscale.schema import POOL_COLUMNS, POOL_SCHEMA, decode_metadata
from instructscale.shuffle import anti_join
from instructscale.stage import Pipe, Stage

log = logging.getLogger(__name__)

WORK = "work"  # a multi-pass mode's intermediate datasets, removed when the stage publishes
WRITER = "_writer.json"  # the token of the run that may commit parts, removed when the stage publishes
MIN_ROWS_FOR_CAP = 100  # the faulty-row cap is judged once this many inputs are done
RESUME_ROWS_PER_PARTITION = 500_000  # input rows per partition of the resume anti-join
ONE_TASK_DISTINCT_ROWS = 1_000_000  # output rows whose distinct parents one task counts


def _root_message(err: BaseException) -> str:
    """The innermost GenerationError's own message: Ray re-raises it wrapped in a task error
    whose text is a traceback header, and appends retry notes after a newline."""
    message, seen = str(err), set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, GenerationError) and "ray::" not in str(err).split("\n", 1)[0]:
            message = str(err)
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return message.split("\n", 1)[0]


def read_generated(out_dir: str, include_rejected: bool = False) -> pa.Table:
    """All rows of a generation output (in memory: for tests and small pools; use Ray Data for big ones)."""
    table = storage.read_parquet(part_files(storage.join(out_dir, ROWS)), schema=GEN_SCHEMA)
    return table if include_rejected else table.filter(pc.is_null(table["reject_reason"]))


def _resumed_inputs(rows_uri: str) -> int:
    """Input rows already done, from the committed parts' records."""
    return sum(r["inputs"] for r in commit_records(rows_uri))


def _distinct_parents(rows_uri: str, rows: int) -> int:
    """Distinct ``parent_id`` values of a generation output of ``rows`` rows: in one task when they
    are few (Ray Data's shuffle starts aggregator actors: 6-11 s on 2 cores), else a groupby."""
    files = part_files(rows_uri)
    if not files:
        return 0
    if rows <= ONE_TASK_DISTINCT_ROWS:
        return ray.get(_count_distinct.remote(files, "parent_id"))
    ds = ray.data.read_parquet([storage.resolve(u)[1] for u in files], filesystem=storage.resolve(files[0])[0])
    return ds.select_columns(["parent_id"]).groupby("parent_id", num_partitions=2).count().count()


@ray.remote
def _count_distinct(files: list[str], column: str) -> int:
    return len(pc.unique(storage.read_parquet(files, columns=[column])[column]))


class _Tally:
    """What the replicas report, summed on the driver; stops the job when too many rows fault."""

    def __init__(self, cap: float):
        self.cap, self.t0 = cap, time.time()
        self.inputs = self.rows = self.tokens = self.faults = 0
        self.rejected: Counter = Counter()
        self.fault_ids: list[str] = []
        self.load_s: list[float] = []
        self.busy_s = self.engine_s = 0.0

    def add(self, rec: dict) -> None:
        self.inputs, self.rows, self.tokens = (
            self.inputs + rec["inputs"],
            self.rows + rec["rows"],
            self.tokens + rec["tokens"],
        )
        self.rejected.update(json.loads(rec["rejected"]))
        self.faults += rec["faults"]
        self.fault_ids += json.loads(rec["fault_ids"])[: FAULT_IDS - len(self.fault_ids)]
        self.busy_s += rec["busy_s"]
        self.engine_s += rec["engine_s"]
        if self.inputs >= MIN_ROWS_FOR_CAP:
            self.check()

    def check(self) -> None:
        """Fail with a summary when row faults exceed the cap: then the pool, not a row, is wrong."""
        if self.inputs and self.faults / self.inputs > self.cap:
            faults = {k: v for k, v in self.rejected.items() if is_row_fault(k)}
            raise GenerationError(
                f"generate: {self.faults} of {self.inputs} inputs faulted ({self.faults / self.inputs:.1%} > "
                f"max_faulty_fraction {self.cap:.1%}): {faults}; first ids: {self.fault_ids}. The committed "
                "parts stay; fix the cause (see reject_reason in the output) and rerun to resume"
            )

    def this_run(self) -> dict:
        elapsed = time.time() - self.t0
        return {
            "inputs": self.inputs,
            "rows": self.rows,
            "tokens": self.tokens,
            "seconds": round(elapsed, 2),
            "rows_per_s": round(self.rows / elapsed, 2) if elapsed else None,
            "tokens_per_s": round(self.tokens / elapsed, 2) if elapsed else None,
            "replica_load_s": [round(x, 2) for x in self.load_s],
            "replica_busy_s": round(self.busy_s, 2),
            "engine_s": round(self.engine_s, 2),
            "rejected": dict(self.rejected),
            "faults": self.faults,
        }


def _pool(cfg: GenerateConfig) -> ray.data.Dataset:
    """The input rows still to generate (of a generation output: its rows without a reject_reason)."""
    fs, _ = storage.resolve(cfg.input)
    files = part_files(cfg.input)
    generated = "reject_reason" in storage.parquet_schema(files[0]).names
    ds = ray.data.read_parquet(
        [storage.resolve(u)[1] for u in files], filesystem=fs, schema=GEN_SCHEMA if generated else POOL_SCHEMA
    )
    if generated:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("reject_reason").is_null())
    ds = ds.select_columns(list(POOL_COLUMNS))
    rows_uri = storage.join(cfg.out_dir, ROWS)
    done = part_files(rows_uri)
    if done:
        partitions = max(2, math.ceil(storage.parquet_rows(files) / RESUME_ROWS_PER_PARTITION))
        finished = ray.data.read_parquet([storage.resolve(u)[1] for u in done], filesystem=storage.resolve(done[0])[0])
        schema = pa.schema([POOL_SCHEMA.field(c) for c in POOL_COLUMNS])
        keys = finished.select_columns(["parent_id"])
        ds = anti_join(ds, keys, key="id", right_key="parent_id", schema=schema, partitions=partitions)
        log.info("generate: resuming, %d input rows already done", _resumed_inputs(rows_uri))
    return ds


def _run_pass(engines: EnginePool, cfg: GenerateConfig, tally: _Tally, job: Job, label: str = "generate") -> _Tally:
    """One pass of the replicas over ``cfg.input``'s rows still to do, into ``job.out_dir``."""
    ctx = ray.data.DataContext.get_current()  # captured by the datasets below: a job-level
    raise_original, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True  # error surfaces as is
    progress = Progress(label, unit="inputs")
    rows0, rejected0, tokens0, t0 = tally.rows, sum(tally.rejected.values()), tally.tokens, time.time()
    try:
        for rec in engines.run(_pool(cfg), job):
            tally.add(rec)
            progress.update(rec["inputs"], f"{(tally.tokens - tokens0) / max(time.time() - t0, 1e-9):,.0f} tokens/s")
    except GenerationError as err:
        raise GenerationError(_root_message(err)) from None
    finally:
        ctx.raise_original_map_exception = raise_original
    progress.close(f"{tally.rows - rows0:,} rows, {sum(tally.rejected.values()) - rejected0:,} rejected")
    return tally


@register("generate")
class Generate(Stage[GenerateConfig]):
    """Teacher generation: a pool through an autoscaling pool of engine actors, resumable per part."""

    Config = GenerateConfig
    Options = GenerateOptions
    summary = "teacher generation: distill, k-sample, self-instruct or evolve a pool"
    after = "ingest"
    resumable = (ROWS,)
    published = (ROWS,)

    def check(self) -> GenerateConfig:
        """Normalised paths, after checking that the input and the model exist (an endpoint
        answers: a remote backend is built once here, before any actor starts)."""
        cfg = self.cfg
        source = require_dataset(cfg.input, "input")
        if Backend.registry.get(cfg.backend.kind).remote:
            Backend.load(cfg.backend, cfg.model)
        model = Backend.model_ref(cfg.backend, cfg.model)
        return cfg.model_copy(update={"input": source, "model": model, "out_dir": storage.normalize(cfg.out_dir)})

    def run(self, run: StageRun) -> dict:
        cfg = self.cfg
        # first the token, then the listing of finished parts: a replica of an earlier, killed run
        # commits nothing after this (see GenerationActor._commit)
        writer = (run.uri(WRITER), uuid.uuid4().hex)
        storage.write_json(writer[0], {"token": writer[1]})
        tally, resumed = _Tally(cfg.max_faulty_fraction), 0
        mode = GenerationMode.registry.build(cfg.mode, cfg)
        engines = EnginePool(cfg, writer)
        try:
            if mode.multi_pass:
                mode.drive(StagePasses(cfg, run, tally, engines))
            else:
                resumed = _resumed_inputs(run.uri(ROWS))
                _run_pass(engines, cfg, tally, Job(cfg.out_dir))
        finally:
            tally.load_s = engines.load_s()
            engines.close()
        summary = _totals(run, tally, mode.multi_pass)
        for name in (ATTEMPTS, WORK, WRITER):
            storage.remove(run.uri(name))
        return {**summary, "resumed_inputs": resumed}

    @classmethod
    def wiring(cls, pipe: Pipe) -> dict:
        return {"input": pipe.pool, "model": pipe.models["teacher"]}

    @classmethod
    def hand_on(cls, manifest: dict, pipe: Pipe) -> None:
        pipe.pool = storage.join(cls.out_dir(pipe.run_dir), ROWS)

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        rejected = sum(entry["rejected"].values())
        return [
            (
                f"generate   {entry['rows']:,} rows, {rejected:,} rejected {entry['rejected']}, "
                f"{entry['this_run']['tokens']:,} teacher tokens this run"
            )
        ]

    @classmethod
    def report(cls, entry: dict, run: str) -> list[str]:
        return [
            "## Teacher generation",
            "",
            f"{entry['rows']:,} rows; rejected: {entry['rejected'] or 'none'}; "
            f"{entry['this_run']['tokens']:,} teacher tokens this run.",
            "",
        ]


def _totals(run: StageRun, tally: _Tally, multi_pass: bool) -> dict:
    """The output's counts from the commit records (resumed parts included); fails over the fault cap."""
    this_run = tally.this_run()
    records = commit_records(run.uri(ROWS))
    tally.faults = sum(r["faults"] for r in records)
    # a multi-pass mode's parts may share parents (rounds of one seed): count them distinct
    rows = sum(r["rows"] for r in records)
    tally.inputs = _distinct_parents(run.uri(ROWS), rows) if multi_pass else sum(r["inputs"] for r in records)
    tally.check()  # over the whole output, resumed parts included
    return {
        "rows": sum(r["usable"] for r in records),
        "rejected": dict(sum((Counter(r["rejected"]) for r in records), Counter())),
        "faults": tally.faults,
        "inputs": tally.inputs,
        "files": len(part_files(run.uri(ROWS))),
        "this_run": this_run,
    }


def generate(cfg: GenerateConfig) -> dict:
    """Run (or resume) the generation stage; returns the manifest written to ``out_dir``."""
    return Generate(cfg).execute()


class StagePasses:
    """The generation stage's side of :class:`instructscale.plugins.Passes`: passes of the teacher
    pool over datasets a multi-pass mode writes under ``work/`` (each pass resumable per part like
    the stage), and the stage's output rows. ``work/`` is keyed by the run's identity, so a changed
    config starts over."""

    def __init__(self, cfg: GenerateConfig, run: StageRun, tally: _Tally, engines: EnginePool):
        self.cfg, self.tally, self.engines = cfg, tally, engines
        self.input, self.out_dir, self.rows = cfg.input, run.out, run.uri(ROWS)
        self._work = run.uri(WORK, hashlib.sha1(json.dumps(run.identity, sort_keys=True).encode()).hexdigest()[:12])

    def work(self, *parts: str) -> str:
        return storage.join(self._work, *parts)

    def generate(
        self, input_uri: str, out_dir: str, label: str, step: str = "", sampling: SamplingConfig | None = None
    ) -> str:
        if not part_files(input_uri):  # an earlier pass left nothing to do
            return storage.join(out_dir, ROWS)
        cfg = self.cfg.model_copy(update={"input": input_uri, "out_dir": out_dir})
        _run_pass(self.engines, cfg, self.tally, Job(out_dir, step, sampling), f"generate {label}")
        storage.remove(storage.join(out_dir, ATTEMPTS))
        return storage.join(out_dir, ROWS)

    def copy_parts(
        self, rows_uri: str, prefix: str, rejected_only: bool = False, parent_key: str | None = None
    ) -> None:
        """One Ray task a part; the driver sees part names only. ``parent_key`` names the metadata
        key that holds the row's real parent (a pass's own parent is its input row)."""
        ray.get(
            [
                _copy_part.remote(uri, self.rows, f"{prefix}-{uri.rsplit('/', 1)[-1]}", rejected_only, parent_key)
                for uri in part_files(rows_uri)
            ]
        )

    def commit(self, name: str, table: pa.Table) -> None:
        commit_part(self.rows, name, table, **part_stats(table))

    def input_rows(self, columns: list[str]) -> pa.Table:
        return storage.read_parquet(part_files(self.input), columns=columns)


@ray.remote
def _copy_part(uri: str, dataset: str, name: str, rejected_only: bool, parent_key: str | None) -> None:
    table = storage.read_parquet([uri], schema=GEN_SCHEMA)
    if rejected_only:
        table = table.filter(pc.is_valid(table["reject_reason"]))
    if parent_key:
        parents = [
            decode_metadata(m).get(parent_key, p)
            for m, p in zip(table["metadata"].to_pylist(), table["parent_id"].to_pylist())
        ]
        table = table.set_column(table.schema.get_field_index("parent_id"), "parent_id", pa.array(parents, pa.string()))
    commit_part(dataset, name, table, **part_stats(table))
