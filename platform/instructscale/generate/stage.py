"""The generation stage: stream a pool through an autoscaling pool of teacher actors.

Each actor call handles one batch of input rows and writes its output rows as one Parquet file,
atomically, named by a hash of the batch's input ids. A rerun skips input rows whose `parent_id`
is already in a finished file, so a crashed run resumes without regenerating or duplicating rows.
Rows a mode cannot use stay in the files with a `reject_reason` (read them with
:func:`read_generated`); nothing is dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from instructscale.config import ConfigError
from instructscale.generate.backends import GenerationError, OpenAIGenerator, make_backend, resolve_api_key
from instructscale.generate.config import GenerateConfig, OpenAIBackend
from instructscale.generate.modes import Distill, make_mode
from instructscale.io import existing_path, model_ref, read_manifest, write_json_atomic, write_parquet_atomic
from instructscale.runtime import ModelThread
from instructscale.schema import POOL_COLUMNS, POOL_SCHEMA

log = logging.getLogger(__name__)

GEN_SCHEMA = pa.schema(
    list(POOL_SCHEMA)
    + [
        pa.field("parent_id", pa.string()),
        pa.field("sample_idx", pa.int32()),
        pa.field("gen_model", pa.string()),
        pa.field("gen_tokens", pa.int32()),
        pa.field("gen_logprob", pa.float32()),
        pa.field("finish_reason", pa.string()),
        pa.field("reject_reason", pa.string()),
    ]
)
CONFIG_FILE = "_config.json"


class GenerationActor:
    """One replica: loads the backend once (on its own `ModelThread`), then turns batches of rows
    into output files."""

    def __init__(self, cfg_json: str, api_key: str | None = None):
        t0 = time.time()
        self.cfg = GenerateConfig.model_validate_json(cfg_json)
        self.mode = make_mode(self.cfg)
        self.thread = ModelThread()
        self.backend = self.thread.run(make_backend, self.cfg, api_key)
        self.out = Path(self.cfg.out_dir)
        self.load_s = time.time() - t0  # reported once, with this replica's first batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.time()
        rows = batch.to_pylist()
        keep = [r for r in rows if isinstance(self.mode, Distill) and not self.mode.needs_teacher(r)]
        ask = [r for r in rows if r not in keep] if keep else rows
        completions = self.thread.run(self.backend.generate, self.mode.prompts(ask), self.cfg.sampling) if ask else []
        out_rows = [self.mode._out(r, None, 0) for r in keep]
        for row, comps in zip(ask, completions):
            out_rows += self.mode.outputs(row, comps)
        table = pa.Table.from_pylist(out_rows, schema=GEN_SCHEMA)
        name = hashlib.sha1("\n".join(sorted(r["id"] for r in rows)).encode()).hexdigest()[:16]
        write_parquet_atomic(self.out / f"part-{name}.parquet", table)
        rejected = Counter(r["reject_reason"] for r in out_rows if r["reject_reason"])
        load_s, self.load_s = self.load_s, 0.0
        return pa.table({"inputs": [len(rows)], "rows": [len(out_rows) - sum(rejected.values())],
                         "tokens": [sum(r["gen_tokens"] or 0 for r in out_rows)],
                         "rejected": [json.dumps(rejected)], "load_s": [load_s], "busy_s": [time.time() - t0]})


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


def read_generated(out_dir: str | Path, include_rejected: bool = False) -> pa.Table:
    """All rows of a generation output (in memory: for tests and small pools; use Ray Data for big ones)."""
    table = pads.dataset(str(out_dir), format="parquet", schema=GEN_SCHEMA,
                         exclude_invalid_files=False).to_table()
    return table if include_rejected else table.filter(pc.is_null(table["reject_reason"]))


def _part_files(out: Path) -> list[str]:
    return sorted(str(p) for p in out.glob("part-*.parquet"))


def _done_parents(out: Path) -> pa.Array:
    files = _part_files(out)
    if not files:
        return pa.array([], pa.string())
    return pc.unique(pq.read_table(files, columns=["parent_id"])["parent_id"].combine_chunks())


def _pending(batch: pa.Table, done: list) -> pa.Table:
    """Input rows not yet in a finished output file. ``done`` holds one ObjectRef to the finished
    ids, wrapped in a list so that Ray hands it over unresolved whether or not it fuses operators."""
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=ray.get(done[0]))))


def _resolve(cfg: GenerateConfig) -> GenerateConfig:
    """``cfg`` with absolute local paths, after checking that input, model and endpoint exist."""
    if isinstance(cfg.backend, OpenAIBackend):  # fail before starting actors; the model is remote
        OpenAIGenerator(cfg.model, cfg.backend).check_reachable()
        model = cfg.model
    else:
        model = model_ref(cfg.model)
    return cfg.model_copy(update={"input": existing_path(cfg.input, "input"), "model": model,
                                  "out_dir": os.path.abspath(cfg.out_dir)})


def _prepare_out(cfg: GenerateConfig, out: Path, identity: dict) -> None:
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / CONFIG_FILE
    if cfg_file.exists() and json.loads(cfg_file.read_text()) != identity:
        raise ConfigError(f"out_dir: {out} holds a run with a different config; "
                          "use another out_dir or set overwrite: true")
    write_json_atomic(cfg_file, identity)


def generate(cfg: GenerateConfig) -> dict:
    """Run (or resume) the generation stage; returns the manifest written to ``out_dir``."""
    out = Path(cfg.out_dir)
    done = read_manifest(out)
    identity = cfg.model_dump(mode="json", exclude={"overwrite", "replicas"})
    if done and done["config"] == identity and not cfg.overwrite:
        log.info("generate: %s already complete, skipping", out)
        return done
    cfg = _resolve(cfg)
    _prepare_out(cfg, out, identity)
    (out / "_manifest.json").unlink(missing_ok=True)

    finished = _done_parents(out)
    ctx = ray.data.DataContext.get_current()  # captured by the datasets below
    raise_original, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True
    ds = ray.data.read_parquet(cfg.input, schema=POOL_SCHEMA).select_columns(list(POOL_COLUMNS))
    if len(finished):
        ds = ds.map_batches(_pending, batch_format="pyarrow", fn_kwargs={"done": [ray.put(finished)]})
        log.info("generate: resuming, %d input rows already done", len(finished))
    r = cfg.replicas
    # The key travels as an actor argument (never in the config, a log or the runtime env).
    api_key = resolve_api_key(cfg.backend) if isinstance(cfg.backend, OpenAIBackend) else None
    results = ds.map_batches(
        GenerationActor, fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "api_key": api_key},
        batch_format="pyarrow", **r.map_batches_args())
    t0, inputs, rows, tokens, rejected = time.time(), 0, 0, 0, Counter()
    load_s, busy_s = [], 0.0
    try:
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            for rec in batch.to_pylist():
                inputs, rows, tokens = inputs + rec["inputs"], rows + rec["rows"], tokens + rec["tokens"]
                rejected.update(json.loads(rec["rejected"]))
                busy_s += rec["busy_s"]
                if rec["load_s"]:
                    load_s.append(rec["load_s"])
            elapsed = time.time() - t0
            log.info("generate: %d inputs done this run, %d rows, %.1f rows/s, %.0f tokens/s",
                     inputs, rows, rows / elapsed, tokens / elapsed)
    except GenerationError as err:
        raise GenerationError(_root_message(err)) from None
    finally:
        ctx.raise_original_map_exception = raise_original
    elapsed = time.time() - t0
    totals = pq.read_table(_part_files(out), columns=["parent_id", "reject_reason"])
    reasons = Counter(v for v in totals["reject_reason"].to_pylist() if v)
    manifest = {
        "config": identity,
        "rows": totals.num_rows - sum(reasons.values()),
        "rejected": dict(reasons),
        "inputs": len(pc.unique(totals["parent_id"])),
        "resumed_inputs": len(finished),
        "files": len(_part_files(out)),
        "this_run": {"inputs": inputs, "rows": rows, "tokens": tokens, "seconds": round(elapsed, 2),
                     "rows_per_s": round(rows / elapsed, 2) if elapsed else None,
                     "tokens_per_s": round(tokens / elapsed, 2) if elapsed else None,
                     "replica_load_s": [round(x, 2) for x in load_s], "replica_busy_s": round(busy_s, 2),
                     "rejected": dict(rejected)},
    }
    write_json_atomic(out / "_manifest.json", manifest)
    return manifest
