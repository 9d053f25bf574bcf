"""The generation stage: stream a pool through an autoscaling pool of teacher actors.

Each actor call handles one batch of input rows and commits its output rows as one Parquet part
(named by a hash of the batch's input ids) under ``out_dir/rows``. A rerun skips input rows whose
`parent_id` is already in a committed part, so a crashed run resumes without regenerating or
duplicating rows. Rows a mode cannot use stay in the parts with a `reject_reason` (read them with
:func:`read_generated`); nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from instructscale import storage
from instructscale.backends.base import GenerationError, build_backend
from instructscale.backends.openai import resolve_api_key
from instructscale.config import ConfigError
from instructscale.generate.config import GenerateConfig
from instructscale.lifecycle import StageRun, commit_part, part_files, part_name
from instructscale.plugins import Backend, GenerationMode
from instructscale.progress import Progress
from instructscale.runtime import ModelThread
from instructscale.schema import POOL_COLUMNS, POOL_SCHEMA

log = logging.getLogger(__name__)

GEN_SCHEMA = pa.schema(
    [
        *list(POOL_SCHEMA),
        pa.field("parent_id", pa.string()),
        pa.field("sample_idx", pa.int32()),
        pa.field("gen_model", pa.string()),
        pa.field("gen_tokens", pa.int32()),
        pa.field("gen_logprob", pa.float32()),
        pa.field("finish_reason", pa.string()),
        pa.field("reject_reason", pa.string()),
    ]
)
ROWS = "rows"


class GenerationActor:
    """One replica: loads the backend once (on its own `ModelThread`), then turns batches of rows
    into committed output parts."""

    def __init__(self, cfg: dict, api_key: str | None = None):
        t0 = time.time()
        self.cfg = GenerateConfig.model_validate(cfg)
        self.mode = GenerationMode.registry.build(self.cfg.mode, self.cfg)
        self.thread = ModelThread()
        self.backend = self.thread.run(build_backend, self.cfg.backend, self.cfg.model, api_key)
        self.rows_uri = storage.join(self.cfg.out_dir, ROWS)
        self.load_s = time.time() - t0  # reported once, with this replica's first batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.time()
        rows = batch.to_pylist()
        ask = [r for r in rows if self.mode.needs_teacher(r)]
        asked = {r["id"] for r in ask}
        completions = self.thread.run(self.backend.generate, self.mode.prompts(ask), self.cfg.sampling) if ask else []
        out_rows = [self.mode.output_row(r, None, 0) for r in rows if r["id"] not in asked]
        for row, comps in zip(ask, completions):
            out_rows += self.mode.outputs(row, comps)
        table = pa.Table.from_pylist(out_rows, schema=GEN_SCHEMA)
        commit_part(self.rows_uri, part_name([r["id"] for r in rows]), table)
        rejected = Counter(r["reject_reason"] for r in out_rows if r["reject_reason"])
        load_s, self.load_s = self.load_s, 0.0
        return pa.table(
            {
                "inputs": [len(rows)],
                "rows": [len(out_rows) - sum(rejected.values())],
                "tokens": [sum(r["gen_tokens"] or 0 for r in out_rows)],
                "rejected": [json.dumps(rejected)],
                "load_s": [load_s],
                "busy_s": [time.time() - t0],
            }
        )


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


def _done_parents(rows_uri: str) -> pa.Array:
    files = part_files(rows_uri)
    if not files:
        return pa.array([], pa.string())
    return pc.unique(storage.read_parquet(files, columns=["parent_id"])["parent_id"].combine_chunks())


def _pending(batch: pa.Table, done: list) -> pa.Table:
    """Input rows not yet in a committed part. ``done`` holds one ObjectRef to the finished ids,
    wrapped in a list so that Ray hands it over unresolved whether or not it fuses operators."""
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=ray.get(done[0]))))


def _check(cfg: GenerateConfig) -> GenerateConfig:
    """``cfg`` with normalised paths, after checking that the input, model and endpoint exist."""
    files = part_files(cfg.input) if storage.exists(cfg.input) else []
    if not files:
        raise ConfigError(f"input: {cfg.input!r} does not exist or holds no Parquet files")
    if Backend.registry.get(cfg.backend.kind).remote:  # fail before starting actors; the model is remote
        build_backend(cfg.backend, cfg.model, resolve_api_key(cfg.backend))
        model = cfg.model
    else:
        model = storage.model_ref(cfg.model)
    return cfg.model_copy(
        update={"input": storage.normalize(cfg.input), "model": model, "out_dir": storage.normalize(cfg.out_dir)}
    )


def generate(cfg: GenerateConfig) -> dict:
    """Run (or resume) the generation stage; returns the manifest written to ``out_dir``."""
    run = StageRun("generate", cfg.out_dir, cfg.identity(), cfg.overwrite)
    if done := run.finished():
        log.info("generate: %s already complete, skipping", run.out)
        return done
    cfg = _check(cfg)
    run.start(resumable=(ROWS,))
    rows_uri = run.uri(ROWS)
    finished = _done_parents(rows_uri)
    ctx = ray.data.DataContext.get_current()  # captured by the datasets below
    raise_original, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True
    fs, _ = storage.resolve(cfg.input)
    ds = ray.data.read_parquet(
        [storage.resolve(u)[1] for u in part_files(cfg.input)], filesystem=fs, schema=POOL_SCHEMA
    ).select_columns(list(POOL_COLUMNS))
    if len(finished):
        ds = ds.map_batches(_pending, batch_format="pyarrow", fn_kwargs={"done": [ray.put(finished)]})
        log.info("generate: resuming, %d input rows already done", len(finished))
    # The key travels as an actor argument (never in the config, a log or the runtime env).
    results = ds.map_batches(
        GenerationActor,
        fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json"), "api_key": resolve_api_key(cfg.backend)},
        batch_format="pyarrow",
        **cfg.replicas.map_batches_args(),
    )
    t0, inputs, rows, tokens, rejected = time.time(), 0, 0, 0, Counter()
    load_s, busy_s = [], 0.0
    progress = Progress("generate", unit="inputs")
    try:
        for rec in results.iter_rows():
            inputs, rows, tokens = inputs + rec["inputs"], rows + rec["rows"], tokens + rec["tokens"]
            rejected.update(json.loads(rec["rejected"]))
            busy_s += rec["busy_s"]
            if rec["load_s"]:
                load_s.append(rec["load_s"])
            progress.update(rec["inputs"], f"{tokens / max(time.time() - t0, 1e-9):,.0f} tokens/s")
    except GenerationError as err:
        raise GenerationError(_root_message(err)) from None
    finally:
        ctx.raise_original_map_exception = raise_original
    elapsed = time.time() - t0
    progress.close(f"{rows:,} rows, {sum(rejected.values()):,} rejected")
    totals = storage.read_parquet(part_files(rows_uri), columns=["parent_id", "reject_reason"])
    reasons = Counter(v for v in totals["reject_reason"].to_pylist() if v)
    summary = {
        "rows": totals.num_rows - sum(reasons.values()),
        "rejected": dict(reasons),
        "inputs": len(pc.unique(totals["parent_id"])),
        "resumed_inputs": len(finished),
        "files": len(part_files(rows_uri)),
        "this_run": {
            "inputs": inputs,
            "rows": rows,
            "tokens": tokens,
            "seconds": round(elapsed, 2),
            "rows_per_s": round(rows / elapsed, 2) if elapsed else None,
            "tokens_per_s": round(tokens / elapsed, 2) if elapsed else None,
            "replica_load_s": [round(x, 2) for x in load_s],
            "replica_busy_s": round(busy_s, 2),
            "rejected": dict(rejected),
        },
    }
    return run.publish(summary, datasets=(ROWS,))
