"""The selection stage.

1. **Features** (streamed through Ray Data, resumable): cheap text features and the row filters as
   a stateless UDF, then each scorer (stateless tasks or an autoscaling actor pool). Every input row,
   with its feature columns, is committed under ``features/rows`` in parts; a rerun reuses the
   committed parts and computes only the missing rows.
2. **Decisions** (:mod:`instructscale.select.decide`, Ray Data operations; the driver holds
   counts, rank summaries and the allocation only): generation rejects, filters, unscorable rows,
   the IFD cap, a weighted score, exact and near duplicates (one shuffle), quotas per stratum and
   the selector plug-in per stratum shard.
3. **Outputs**: ``scores/`` (every row: scores, status, reason, duplicate_of), ``selected/`` (the
   chosen rows with `score` and `difficulty`), and the manifest with counts per removal reason.
   Nothing vanishes without a recorded reason.
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
from instructscale.backends.openai import resolve_api_key
from instructscale.config import ConfigError
from instructscale.lifecycle import StageRun, commit_part, commit_records, part_files, part_name, require_dataset
from instructscale.plugins import Scorer, Selector
from instructscale.progress import Progress
from instructscale.select import decide
from instructscale.select.config import SelectConfig
from instructscale.select.features import text_features
from instructscale.select.scoring import ScorerActor, score_in_task

log = logging.getLogger(__name__)

ROWS = "rows"


def _commit_block(block: pa.Table, dataset: str) -> pa.Table:
    commit_part(dataset, part_name(block["id"].to_pylist()), block)
    return pa.table({"rows": [block.num_rows]})


def _pending(batch: pa.Table, done: list) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=ray.get(done[0]))))


def _with_scorers(ds: ray.data.Dataset, cfg: SelectConfig) -> ray.data.Dataset:
    cfg_dict, cfg_json = cfg.model_dump(mode="json"), cfg.model_dump_json()
    for i, spec in enumerate(cfg.scorers):
        if Scorer.registry.get(spec.kind).actor:  # the key travels as an actor argument, never in a config
            # one call's rows per block: a pool of N replicas gets N inputs at once, however few the rows
            ds = ds.repartition(target_num_rows_per_block=spec.batch_size).map_batches(
                ScorerActor,
                fn_constructor_kwargs={
                    "cfg": cfg_dict,
                    "index": i,
                    "api_key": resolve_api_key(getattr(spec, "backend", None)),
                },
                batch_format="pyarrow",
                **spec.map_batches_args(),
            )
        else:
            ds = ds.map_batches(
                score_in_task,
                batch_format="pyarrow",
                batch_size=cfg.batch_size,
                fn_kwargs={"cfg_json": cfg_json, "index": i},
            )
    return ds


def compute_features(cfg: SelectConfig) -> tuple[str, dict]:
    """Compute (or reuse, or finish) the per-row feature table; returns its dataset URI and manifest."""
    uri = storage.normalize(cfg.features_dir or storage.join(cfg.out_dir, "features"))
    run = StageRun("select-features", uri, cfg.feature_identity(), cfg.overwrite)
    if done := run.finished():
        log.info("select: reusing features in %s", uri)
        return run.uri(ROWS), done
    if cfg.features_dir:
        raise ConfigError(f"features_dir: {uri} holds no features for this input and these scorer settings")
    t0 = time.time()
    run.start(resumable=(ROWS,))
    reused = len(commit_records(run.uri(ROWS)))
    done_ids = [
        r for f in part_files(run.uri(ROWS)) for r in storage.read_parquet([f], columns=["id"])["id"].to_pylist()
    ]
    ds = decide.read_parquet(part_files(cfg.input))
    if done_ids:
        log.info("select: resuming features, %d rows in %d committed parts", len(done_ids), reused)
        ds = ds.map_batches(_pending, batch_format="pyarrow", fn_kwargs={"done": [ray.put(pa.array(done_ids))]})
    # blocks of a few batches, so that every scorer task and replica gets work
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size * 2)
    ds = ds.map_batches(
        text_features, batch_format="pyarrow", batch_size=cfg.batch_size, fn_kwargs={"cfg_json": cfg.model_dump_json()}
    )
    ds = _with_scorers(ds, cfg).map_batches(
        _commit_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"dataset": run.uri(ROWS)}
    )
    progress = Progress("features")
    for rec in ds.iter_rows():
        progress.update(rec["rows"])
    progress.close()
    computed = len(commit_records(run.uri(ROWS))) - reused
    manifest = run.publish(
        {
            "rows": len(done_ids) + progress.done,
            "parts_reused": reused,
            "parts_computed": computed,
            "seconds": round(time.time() - t0, 2),
        },
        datasets=(ROWS,),
    )
    return run.uri(ROWS), manifest


def _check(cfg: SelectConfig) -> SelectConfig:
    source = require_dataset(cfg.input, "input")
    for f in cfg.filters:
        for uri in getattr(f, "eval_sets", ()):
            require_dataset(uri, f"{f.kind}.eval_sets")
    scorers = []
    for spec in cfg.scorers:
        model = getattr(spec, "model", None)
        if spec.kind == "model" and not model:
            raise ConfigError("scorers: the model scorer needs `model` (a small causal LM, e.g. the student)")
        remote = hasattr(spec, "backend") and getattr(spec.backend, "base_url", None)
        if model and not remote:
            spec = spec.model_copy(update={"model": storage.model_ref(model, f"scorers.{spec.kind}.model")})
        scorers.append(spec)
    return cfg.model_copy(update={"input": source, "out_dir": storage.normalize(cfg.out_dir), "scorers": scorers})


def _light(features: list[str], embedding: bool = False) -> ray.data.Dataset:
    """The features rows without the dedup columns (and without embeddings unless asked)."""
    drop = set(decide.HEAVY) - ({"embedding"} if embedding else set())
    return decide.read_parquet(features).select_columns(
        [n for n in storage.parquet_schema(features[0]).names if n not in drop]
    )


def select(cfg: SelectConfig) -> dict:
    """Score, filter, dedup and select; returns the manifest written to ``out_dir``."""
    run = StageRun("select", cfg.out_dir, cfg.identity(), cfg.overwrite)
    if done := run.finished():
        log.info("select: %s already complete, skipping", run.out)
        return done
    cfg = _check(cfg)
    t0 = time.time()
    run.start(rebuilt=(decide.SCORES, decide.SELECTED))
    features_uri, feats = compute_features(cfg)
    features = part_files(features_uri)
    t_decide = time.time()
    ranks = decide.rank_summaries(decide.read_parquet(features), list(cfg.weights))
    dups = [decide.duplicates(cfg, features, feats["rows"], ranks)]
    ray.wait(dups, fetch_local=False)
    dedup_seconds = time.time() - t_decide
    counts, judge_unparsable = decide.count_decisions(cfg, _light(features), ranks, dups)
    budget, alloc = decide.allocation(cfg, counts)
    embeddings = Selector.registry.get(cfg.selector.kind).needs_embeddings
    chosen = decide.chosen_ids(cfg, _light(features, embeddings), ranks, dups, counts, alloc)
    progress, by_stratum = Progress("select", total=feats["rows"]), Counter()
    for rows, selected in decide.write_outputs(cfg, features, feats["rows"], chosen, ranks, dups, run.out):
        progress.update(rows)
        by_stratum.update(selected)
    removed, eligible = Counter(), 0
    for (_, reason), n in counts.items():
        removed[reason or ""] += n
    eligible = removed.pop("", 0)
    summary = {
        "input_rows": sum(counts.values()),
        "removed": dict(sorted(removed.items())),
        "eligible": eligible,
        "budget": budget,
        "selected": sum(by_stratum.values()),
        "not_selected": eligible - sum(by_stratum.values()),
        "selected_by_stratum": dict(sorted(by_stratum.items())),
        "allocation": alloc,
        **({"judge_unparsable": judge_unparsable} if "judge" in cfg.score_columns() else {}),
        "dedup_seconds": round(dedup_seconds, 2),
        "decide_seconds": round(time.time() - t_decide, 2),
        "features_seconds": feats["seconds"],
        "seconds": round(time.time() - t0, 2),
    }
    progress.close(f"{summary['selected']:,} selected, removed {json.dumps(summary['removed'])}")
    return run.publish(summary, datasets=(decide.SCORES, decide.SELECTED))
