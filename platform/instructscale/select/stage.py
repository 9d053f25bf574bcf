"""The selection stage.

1. **Features** (streamed through Ray Data, resumable): cheap text features and the row filters as
   a stateless UDF, then each scorer (stateless tasks or an autoscaling actor pool). Every input row,
   with its feature columns, is committed under ``features/rows`` in parts; a rerun reuses the
   committed parts and computes only the missing rows.
2. **Decisions** (driver, on narrow columns only): generation rejects, filters, unscorable rows,
   the IFD cap, exact and near-duplicate removal, a weighted score, quotas and the selector plug-in.
   Selectors that need embeddings run per shard in Ray tasks and merge the shards' candidates.
3. **Outputs**: ``scores/`` (every row: scores, status, reason, duplicate_of), ``selected/`` (the
   chosen rows with `score` and `difficulty`), and the manifest with counts per removal reason.
   Nothing vanishes without a recorded reason.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from instructscale import storage
from instructscale.backends.openai import resolve_api_key
from instructscale.config import ConfigError
from instructscale.lifecycle import StageRun, commit_part, commit_records, part_files, part_name, require_dataset
from instructscale.plugins import Scorer, Selector
from instructscale.progress import Progress
from instructscale.schema import decode_metadata
from instructscale.select import selectors
from instructscale.select.config import SelectConfig
from instructscale.select.dedup import find_duplicates
from instructscale.select.features import text_features
from instructscale.select.scoring import ScorerActor, score_in_task

log = logging.getLogger(__name__)

DECISION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("score", pa.float64()),
        ("difficulty", pa.float64()),
    ]
)
HEAVY = ["embedding", "minhash"]
ROWS, SCORES, SELECTED = "rows", "scores", "selected"


def _read(files: list[str], **kwargs) -> ray.data.Dataset:
    fs, _ = storage.resolve(files[0])
    return ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs, **kwargs)


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
    ds = _read(part_files(cfg.input))
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


def _stratum(table: pa.Table, key: str | None) -> list[str]:
    if key is None:
        return ["all"] * table.num_rows
    if key in table.column_names:
        return [str(v) for v in table[key].to_pylist()]
    return [str(decode_metadata(m).get(key)) for m in table["metadata"].to_pylist()]


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=float)


def _difficulty(cfg: SelectConfig, table: pa.Table) -> np.ndarray:
    d = cfg.difficulty
    if d.source == "length":
        return _column(table, "output_chars")
    if d.source == "metadata":
        return np.asarray([decode_metadata(m).get(d.key, math.nan) for m in table["metadata"].to_pylist()], dtype=float)
    return _column(table, d.source)


def _removal_reasons(cfg: SelectConfig, t: pa.Table) -> list[str | None]:
    """The first filter each row fails (dedup comes later, among the survivors)."""
    n = t.num_rows
    rejected = t["reject_reason"].to_pylist() if "reject_reason" in t.column_names else [None] * n
    filtered = t["filter_reason"].to_pylist()
    required = [c for s in cfg.scorers for c in Scorer.registry.get(s.kind).required]
    missing = [any(v is None for v in vals) for vals in zip(*(t[c].to_pylist() for c in required))] or [False] * n
    ifd = t["ifd"].to_pylist() if cfg.max_ifd is not None else [None] * n
    reasons: list[str | None] = []
    for i in range(n):
        if rejected[i]:
            reasons.append(f"generate:{rejected[i]}")
        elif filtered[i]:
            reasons.append(filtered[i])
        elif missing[i]:
            reasons.append("unscorable")
        elif ifd[i] is not None and ifd[i] > cfg.max_ifd:
            reasons.append("ifd_above_max")
        else:
            reasons.append(None)
    return reasons


@ray.remote
def _select_shard(cfg: dict, features: list[str], ids: list[str], score: list[float], k: int) -> list[str]:
    """One shard of an embedding selector: read its rows' embeddings, pick ``k`` of them."""
    selector = Selector.registry.build(SelectConfig.model_validate(cfg).selector)
    table = storage.read_parquet(features, columns=["id", "embedding"], filter=pc.field("id").isin(ids))
    pos = {v: i for i, v in enumerate(table["id"].to_pylist())}
    emb = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)[[pos[i] for i in ids]]
    picked = selector.select(np.asarray(score), emb, k, selector.config.seed)
    return [ids[i] for i in picked]


def _pick(cfg: SelectConfig, features: list[str], ids: list[str], score: np.ndarray, k: int) -> list[str]:
    """``k`` ids of one stratum by the configured selector (sharded when it needs embeddings)."""
    spec = cfg.selector
    if k >= len(ids):
        return list(ids)
    selector = Selector.registry.build(spec)
    if not selector.needs_embeddings:
        return [ids[i] for i in selector.select(score, None, k, spec.seed)]
    cfg_dict = cfg.model_dump(mode="json")
    n_shards = math.ceil(len(ids) / spec.shard_rows)
    if n_shards == 1:
        return ray.get(_select_shard.remote(cfg_dict, features, ids, score.tolist(), k))
    shard_of = np.random.default_rng(spec.seed).integers(0, n_shards, len(ids))
    shards = [np.flatnonzero(shard_of == sh) for sh in range(n_shards)]
    k_sh = [min(len(idx), math.ceil(k * len(idx) / len(ids) * spec.oversample)) for idx in shards]
    merge = sum(k_sh) < len(ids)
    if not merge:  # a merge would redo the whole stratum in one task: split the budget over the shards
        split = selectors.allocate(k, {str(sh): len(idx) for sh, idx in enumerate(shards)}, None)
        k_sh = [split[str(sh)] for sh in range(n_shards)]
    futures = [
        _select_shard.remote(cfg_dict, features, [ids[i] for i in idx], score[idx].tolist(), n)
        for idx, n in zip(shards, k_sh)
        if n
    ]
    candidates = [c for part in ray.get(futures) for c in part]
    if not merge:
        return candidates
    pos = {v: i for i, v in enumerate(ids)}
    cand_score = [float(score[pos[c]]) for c in candidates]
    return ray.get(_select_shard.remote(cfg_dict, features, candidates, cand_score, k))


def _mark_duplicates(
    cfg: SelectConfig, t: pa.Table, ids: list[str], score: np.ndarray, reasons: list[str | None]
) -> list[str | None]:
    """Set the dedup reason of every duplicate among the surviving rows; returns duplicate_of."""
    survivors = [i for i, r in enumerate(reasons) if r is None]
    dups = find_duplicates(
        [ids[i] for i in survivors],
        [t["text_hash"][i].as_py() for i in survivors],
        [t["minhash"][i].as_py() for i in survivors],
        score[survivors],
        cfg.dedup,
    )
    duplicate_of: list[str | None] = [None] * len(ids)
    for local, (reason, of) in dups.items():
        reasons[survivors[local]] = reason
        duplicate_of[survivors[local]] = ids[survivors[of]]
    return duplicate_of


def _allocation(cfg: SelectConfig, strata: list[str], eligible: list[int], n_rows: int) -> tuple[int, dict]:
    b = cfg.budget
    budget = b.budget if b.budget is not None else round(b.fraction * n_rows)
    available = Counter(strata[i] for i in eligible)
    if b.quotas:
        unknown = set(b.quotas) - set(available)
        if unknown:
            raise ConfigError(
                f"select.budget.quotas: no eligible rows in stratum/strata {sorted(unknown)} "
                f"of {b.stratify_by}; present: {sorted(available)}"
            )
    shares = b.quotas or (Counter(strata) if b.quota_basis == "input" else None)
    return budget, selectors.allocate(budget, dict(available), shares)


def decide(cfg: SelectConfig, features: list[str]) -> tuple[pa.Table, dict]:
    """Status, reason, duplicate_of, score and difficulty for every row, plus the summary."""
    names = storage.read_parquet(features[:1]).schema.names
    wanted = [
        "id",
        "metadata",
        "source",
        "filter_reason",
        "text_hash",
        "minhash",
        "reject_reason",
        *cfg.score_columns(),
    ]
    t = storage.read_parquet(features, columns=[c for c in dict.fromkeys(wanted) if c in names and c != "embedding"])
    ids = t["id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise ConfigError(f"input: {cfg.input} has duplicate row ids; selection needs unique ids")
    reasons = _removal_reasons(cfg, t)
    score = selectors.weighted_score({c: _column(t, c) for c in cfg.weights}, cfg.weights, t.num_rows)
    duplicate_of = _mark_duplicates(cfg, t, ids, score, reasons)
    eligible = [i for i, r in enumerate(reasons) if r is None]
    strata = _stratum(t, cfg.budget.stratify_by)
    budget, alloc = _allocation(cfg, strata, eligible, len(ids))
    chosen: set[str] = set()
    for stratum, k in sorted(alloc.items()):
        members = [i for i in eligible if strata[i] == stratum]
        chosen.update(_pick(cfg, features, [ids[i] for i in members], score[members], k))
    status = [
        "selected" if ids[i] in chosen else ("removed" if reasons[i] else "not_selected") for i in range(len(ids))
    ]
    reasons = ["over_budget" if st == "not_selected" else r for r, st in zip(reasons, status)]
    decisions = pa.table(
        {
            "id": ids,
            "status": status,
            "reason": reasons,
            "duplicate_of": duplicate_of,
            "score": score,
            "difficulty": pa.array(_difficulty(cfg, t), from_pandas=True),
        },
        schema=DECISION_SCHEMA,
    )
    summary = {
        "input_rows": len(ids),
        "removed": dict(sorted(Counter(r for r, st in zip(reasons, status) if st == "removed").items())),
        "eligible": len(eligible),
        "budget": budget,
        "selected": len(chosen),
        "not_selected": status.count("not_selected"),
        "selected_by_stratum": dict(sorted(Counter(s for s, st in zip(strata, status) if st == "selected").items())),
        "allocation": alloc,
    }
    if "judge" in t.column_names:  # judged rows (those no filter removed) without a parsable score
        judged = pc.is_null(t["filter_reason"])
        summary["judge_unparsable"] = pc.sum(pc.and_(judged, pc.is_null(t["judge"]))).as_py() or 0
    return decisions, summary


def _write_outputs(block: pa.Table, decisions: list, out: str) -> pa.Table:
    """One features block without the heavy columns, plus its decisions, committed to ``scores``;
    its selected rows committed to ``selected``."""
    table: pa.Table = ray.get(decisions[0])
    rows = pc.index_in(block["id"], value_set=table["id"])
    block = block.select([c for c in block.column_names if c not in HEAVY])
    for name in DECISION_SCHEMA.names[1:]:
        block = block.append_column(name, table[name].take(rows))
    name = part_name(block["id"].to_pylist())
    commit_part(storage.join(out, SCORES), name, block)
    chosen = block.filter(pc.equal(block["status"], "selected"))
    if chosen.num_rows:
        commit_part(storage.join(out, SELECTED), name, chosen)
    return pa.table({"rows": [block.num_rows]})


def _check(cfg: SelectConfig) -> SelectConfig:
    source = require_dataset(cfg.input, "input")
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


def select(cfg: SelectConfig) -> dict:
    """Score, filter, dedup and select; returns the manifest written to ``out_dir``."""
    run = StageRun("select", cfg.out_dir, cfg.identity(), cfg.overwrite)
    if done := run.finished():
        log.info("select: %s already complete, skipping", run.out)
        return done
    cfg = _check(cfg)
    t0 = time.time()
    run.start(rebuilt=(SCORES, SELECTED))
    features_uri, feats = compute_features(cfg)
    features = part_files(features_uri)
    decisions, summary = decide(cfg, features)
    counts = _read(features).map_batches(
        _write_outputs,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"decisions": [ray.put(decisions)], "out": run.out},
    )
    progress = Progress("select", total=summary["input_rows"])
    for rec in counts.iter_rows():
        progress.update(rec["rows"])
    progress.close(f"{summary['selected']:,} selected, removed {json.dumps(summary['removed'])}")
    summary |= {"features_seconds": feats["seconds"], "seconds": round(time.time() - t0, 2)}
    return run.publish(summary, datasets=(SCORES, SELECTED))
