"""The selection stage.

1. **Features** (streamed through Ray Data): cheap scorers as a stateless UDF, then the model
   scorer in an autoscaling actor pool. Every input row, with its score columns, is written to
   ``out_dir/features`` (reused by a rerun with the same scorer settings).
2. **Decisions** (driver, on narrow columns only): generation rejects, heuristic filters, verifier,
   IFD cap, exact and near-duplicate removal, a weighted score, quotas, and the selector. The
   embedding-based selectors run per shard in Ray tasks and merge the shards' candidates, so the
   embeddings of a large pool never sit in one process.
3. **Outputs**: ``scores/`` (every row: scores, status, reason, duplicate_of), ``selected/``
   (the chosen rows with `score` and `difficulty` columns), and ``_manifest.json`` with counts per
   removal reason. Nothing vanishes without a recorded reason.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from instructscale.config import ConfigError
from instructscale.generate.backends import resolve_api_key
from instructscale.generate.config import OpenAIBackend
from instructscale.io import existing_path, model_ref, publish_dir, read_manifest, staging_dir, write_json_atomic
from instructscale.schema import decode_metadata
from instructscale.select.config import MODEL_COLUMNS, SelectConfig, SelectorSettings
from instructscale.select.dedup import find_duplicates
from instructscale.select.features import text_features
from instructscale.select.judge import JudgeScorer
from instructscale.select.model_scores import ModelScorer
from instructscale.select import selectors

log = logging.getLogger(__name__)

DECISION_SCHEMA = pa.schema([("id", pa.string()), ("status", pa.string()), ("reason", pa.string()),
                             ("duplicate_of", pa.string()), ("score", pa.float64()), ("difficulty", pa.float64())])
HEAVY = ["embedding", "minhash"]


def _features(cfg: SelectConfig, out: Path) -> tuple[str, dict]:
    """Compute (or reuse) the per-row feature table; returns its directory and manifest."""
    identity = cfg.model_dump(mode="json", include={"input", "heuristics", "dedup", "scoring", "judge", "batch_size"})
    final = Path(cfg.features_dir) if cfg.features_dir else out / "features"
    done = read_manifest(final)
    if done and done["config"] == identity:
        log.info("select: reusing features in %s", final)
        return str(final), done
    if cfg.features_dir:
        raise ConfigError(f"features_dir: {final} holds no features for this input and these scorer settings")
    t0 = time.time()
    # blocks of a few batches, so that every scorer task and replica gets work
    ds = ray.data.read_parquet(cfg.input).repartition(target_num_rows_per_block=cfg.batch_size * 2)
    ds = ds.map_batches(text_features, batch_format="pyarrow", batch_size=cfg.batch_size,
                        fn_kwargs={"heuristics": cfg.heuristics.model_dump(), "dedup": cfg.dedup.model_dump()})
    s = cfg.scoring
    if s.enabled:
        ds = ds.map_batches(ModelScorer, fn_constructor_kwargs={"model": s.model, "max_length": s.max_length,
                                                                 "device": "cuda" if s.num_gpus else "cpu"},
                            batch_format="pyarrow", **s.map_batches_args())
    j = cfg.judge
    if j.enabled:  # the key travels as an actor argument, never in the config or a log
        api_key = resolve_api_key(j.backend) if isinstance(j.backend, OpenAIBackend) else None
        ds = ds.map_batches(JudgeScorer, fn_constructor_kwargs={"settings_json": j.model_dump_json(), "api_key": api_key},
                            batch_format="pyarrow", **j.map_batches_args())
    staging = staging_dir(final)
    ds.write_parquet(str(staging))
    rows = pads.dataset(str(staging), format="parquet").count_rows()
    manifest = {"config": identity, "rows": rows, "seconds": round(time.time() - t0, 2)}
    publish_dir(staging, final, manifest)
    log.info("select: features for %d rows in %.1f s", rows, manifest["seconds"])
    return str(final), manifest


def _stratum(table: pa.Table, key: str | None) -> list[str]:
    if key is None:
        return ["all"] * table.num_rows
    if key in table.column_names:
        return [str(v) for v in table[key].to_pylist()]
    return [str(decode_metadata(m).get(key)) for m in table["metadata"].to_pylist()]


def _difficulty(cfg: SelectConfig, table: pa.Table) -> np.ndarray:
    d = cfg.difficulty
    if d.source in ("ifd", "loss"):
        return np.asarray(table[d.source].to_numpy(zero_copy_only=False), dtype=float)
    if d.source == "length":
        return np.asarray(table["output_chars"].to_numpy(zero_copy_only=False), dtype=float)
    return np.asarray([decode_metadata(m).get(d.key, math.nan) for m in table["metadata"].to_pylist()], dtype=float)


def _removal_reasons(cfg: SelectConfig, t: pa.Table) -> list[str | None]:
    """The first filter each row fails (dedup comes later, among the survivors)."""
    rejected = t["reject_reason"].to_pylist() if "reject_reason" in t.column_names else [None] * t.num_rows
    heuristic = t["heuristic_reason"].to_pylist()
    verified = t["verified"].to_pylist()
    ifd = t["ifd"].to_pylist() if "ifd" in t.column_names else [None] * t.num_rows
    loss = t["loss"].to_pylist() if "loss" in t.column_names else [None] * t.num_rows
    ifd_max = cfg.scoring.ifd_max if cfg.scoring.enabled else None
    reasons: list[str | None] = []
    for i in range(t.num_rows):
        if rejected[i]:
            reasons.append(f"generate:{rejected[i]}")
        elif heuristic[i]:
            reasons.append(heuristic[i])
        elif cfg.verify and verified[i] is False:
            reasons.append("verifier_wrong")
        elif cfg.scoring.enabled and loss[i] is None:
            reasons.append("unscorable")
        elif ifd_max is not None and ifd[i] is not None and ifd[i] > ifd_max:
            reasons.append("ifd_above_max")
        else:
            reasons.append(None)
    return reasons


@ray.remote
def _select_shard(features: str, ids: list[str], score: list[float], k: int, sel: dict) -> list[str]:
    """One shard of an embedding selector: read its rows' embeddings, pick ``k`` of them."""
    s = SelectorSettings.model_validate(sel)
    table = pads.dataset(features, format="parquet").to_table(
        columns=["id", "embedding"], filter=pc.field("id").isin(ids))
    pos = {v: i for i, v in enumerate(table["id"].to_pylist())}
    emb_all = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    emb = emb_all[[pos[i] for i in ids]]
    sc = np.asarray(score)
    picked = (selectors.diverse(sc, emb, k, s.min_distance) if s.method == "diverse"
              else selectors.kcenter(sc, emb, k))
    return [ids[i] for i in picked]


def _pick(cfg: SelectConfig, features: str, ids: list[str], score: np.ndarray, k: int) -> list[str]:
    """``k`` ids of one stratum by the configured method (sharded for the embedding ones)."""
    s = cfg.selector
    if k >= len(ids):
        return list(ids)
    if s.method == "topk":
        return [ids[i] for i in selectors.topk(score, k)]
    if s.method == "random":
        return [ids[i] for i in selectors.random_pick(len(ids), k, s.seed)]
    sel = s.model_dump()
    n_shards = math.ceil(len(ids) / s.shard_rows)
    if n_shards == 1:
        return ray.get(_select_shard.remote(features, ids, score.tolist(), k, sel))
    rng = np.random.default_rng(s.seed)
    shard_of = rng.integers(0, n_shards, len(ids))
    shards = [np.flatnonzero(shard_of == sh) for sh in range(n_shards)]
    k_sh = [min(len(idx), math.ceil(k * len(idx) / len(ids) * s.oversample)) for idx in shards]
    merge = sum(k_sh) < len(ids)
    if not merge:  # a merge would redo the whole stratum in one task: split the budget over the shards
        split = selectors.allocate(k, {str(sh): len(idx) for sh, idx in enumerate(shards)}, None)
        k_sh = [split[str(sh)] for sh in range(n_shards)]
    futures = [_select_shard.remote(features, [ids[i] for i in idx], score[idx].tolist(), n, sel)
               for idx, n in zip(shards, k_sh) if n]
    candidates = [c for part in ray.get(futures) for c in part]
    if not merge:
        return candidates
    pos = {v: i for i, v in enumerate(ids)}
    cand_score = np.asarray([score[pos[c]] for c in candidates])
    return ray.get(_select_shard.remote(features, candidates, cand_score.tolist(), k, sel))


def _decide(cfg: SelectConfig, features: str) -> tuple[pa.Table, dict]:
    """Status, reason, duplicate_of, score and difficulty for every row, plus the summary."""
    names = pads.dataset(features, format="parquet").schema.names
    wanted = ["id", "metadata", "source", "heuristic_reason", "verified", "text_hash", "minhash",
              "prompt_chars", "output_chars", "repetition", "reject_reason", "judge", *MODEL_COLUMNS]
    t = pads.dataset(features, format="parquet").to_table(columns=[c for c in wanted if c in names])
    ids = t["id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise ConfigError(f"input: {cfg.input} has duplicate row ids; selection needs unique ids")
    reasons = _removal_reasons(cfg, t)
    columns = {c: np.asarray(t[c].to_numpy(zero_copy_only=False), dtype=float)
               for c in cfg.selector.weights}
    score = selectors.weighted_score(columns, cfg.selector.weights)
    difficulty = _difficulty(cfg, t)

    survivors = [i for i, r in enumerate(reasons) if r is None]
    dups = find_duplicates([ids[i] for i in survivors], [t["text_hash"][i].as_py() for i in survivors],
                           [t["minhash"][i].as_py() for i in survivors], score[survivors], cfg.dedup)
    duplicate_of: list[str | None] = [None] * len(ids)
    for local, (reason, of) in dups.items():
        reasons[survivors[local]] = reason
        duplicate_of[survivors[local]] = ids[survivors[of]]

    eligible = [i for i, r in enumerate(reasons) if r is None]
    strata = _stratum(t, cfg.selector.stratify_by)
    s = cfg.selector
    budget = s.budget if s.budget is not None else int(round(s.fraction * len(ids)))
    available = Counter(strata[i] for i in eligible)
    if s.quotas:
        unknown = set(s.quotas) - set(available)
        if unknown:
            raise ConfigError(f"select.selector.quotas: no eligible rows in stratum/strata {sorted(unknown)} "
                              f"of {s.stratify_by}; present: {sorted(available)}")
    shares = s.quotas or (Counter(strata) if s.quota_basis == "input" else None)
    alloc = selectors.allocate(budget, dict(available), shares)
    chosen: set[str] = set()
    for stratum, k in sorted(alloc.items()):
        members = [i for i in eligible if strata[i] == stratum]
        chosen.update(_pick(cfg, features, [ids[i] for i in members], score[members], k))
    status = ["selected" if ids[i] in chosen else ("removed" if reasons[i] else "not_selected")
              for i in range(len(ids))]
    for i, st in enumerate(status):
        if st == "not_selected":
            reasons[i] = "over_budget"
    decisions = pa.table({"id": ids, "status": status, "reason": reasons, "duplicate_of": duplicate_of,
                          "score": score, "difficulty": pa.array(difficulty, from_pandas=True)},
                         schema=DECISION_SCHEMA)
    removed = Counter(r for r, st in zip(reasons, status) if st == "removed")
    summary = {
        "input_rows": len(ids),
        "removed": dict(sorted(removed.items())),
        "eligible": len(eligible),
        "budget": budget,
        "selected": len(chosen),
        "not_selected": status.count("not_selected"),
        "selected_by_stratum": dict(sorted(Counter(strata[i] for i in range(len(ids)) if status[i] == "selected").items())),
        "allocation": alloc,
    }
    if "judge" in t.column_names:
        summary["judge_unparsable"] = t["judge"].null_count
    return decisions, summary


def _attach(batch: pa.Table, decisions: list) -> pa.Table:
    """``batch`` without the heavy columns, plus its rows' decisions (an ObjectRef in a list)."""
    table: pa.Table = ray.get(decisions[0])
    rows = pc.index_in(batch["id"], value_set=table["id"])
    batch = batch.select([c for c in batch.column_names if c not in HEAVY])
    for name in DECISION_SCHEMA.names[1:]:
        batch = batch.append_column(name, table[name].take(rows))
    return batch


def _only_selected(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch["status"], "selected"))


def select(cfg: SelectConfig) -> dict:
    """Score, filter, dedup and select; returns the manifest written to ``out_dir``."""
    out = Path(cfg.out_dir).resolve()
    identity = cfg.model_dump(mode="json", exclude={"overwrite", "features_dir"})
    done = read_manifest(out)
    if done and done.get("config") == identity and not cfg.overwrite:
        log.info("select: %s already complete, skipping", out)
        return done
    updates = {"input": existing_path(cfg.input, "input")}
    if cfg.scoring.enabled:
        if not cfg.scoring.model:
            raise ConfigError("scoring.model: required when scoring.enabled (a small causal LM, e.g. the student)")
        updates["scoring"] = cfg.scoring.model_copy(update={"model": model_ref(cfg.scoring.model, "scoring.model")})
    if cfg.judge.enabled and not isinstance(cfg.judge.backend, OpenAIBackend):
        updates["judge"] = cfg.judge.model_copy(update={"model": model_ref(cfg.judge.model, "judge.model")})
    cfg = cfg.model_copy(update=updates)
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "_manifest.json").unlink(missing_ok=True)

    t0 = time.time()
    features, feats = _features(cfg, out)
    decisions, summary = _decide(cfg, features)
    ref = [ray.put(decisions)]
    ds = ray.data.read_parquet(features).map_batches(_attach, batch_format="pyarrow", fn_kwargs={"decisions": ref})
    for name, keep in (("scores", False), ("selected", True)):
        staging = staging_dir(out / name)
        part = ds if not keep else ds.map_batches(_only_selected, batch_format="pyarrow")
        part.write_parquet(str(staging))
        publish_dir(staging, out / name, {"rows": pads.dataset(str(staging), format="parquet").count_rows()})
    manifest = {"config": identity, **summary, "features_seconds": feats["seconds"],
                "seconds": round(time.time() - t0, 2)}
    write_json_atomic(out / "_manifest.json", manifest)
    log.info("select: %d of %d rows selected, removed %s", summary["selected"], summary["input_rows"],
             summary["removed"])
    return manifest
