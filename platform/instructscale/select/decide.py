"""The selection decisions as Ray Data operations: nothing proportional to the pool on the driver.

1. **Ranks.** Each features block summarises its weighted columns (:mod:`.ranks`); the driver merges
   the summaries (bounded size), after which any row's weighted score is computed where the row is.
2. **Dedup.** One shuffle finds the duplicate pairs among the rows that no filter removed
   (:mod:`.dedup`); a Ray task scores the rows in pairs and resolves the clusters into a table of
   duplicates whose size follows the duplicates.
3. **Counts.** Every row's decision columns (reason, stratum, score, difficulty) are computed per
   block; only counts per stratum and reason come back, and the driver allocates the budget.
4. **Selection.** The selector plug-in runs per (stratum, shard) group of a Ray Data groupby
   (shards of at most ``shard_rows`` rows, by a hash of the id, each sorted by id). When the shards'
   candidates (``oversample`` x their share) are fewer than the stratum's rows, a second groupby
   picks the stratum's budget among them; otherwise each shard picks its share of the budget.
5. **Outputs.** The chosen ids meet the features rows in a hash shuffle (:func:`.shuffle.mark_in`);
   each partition computes its rows' decisions again and commits its ``scores``/``selected`` parts.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from instructscale import storage
from instructscale.config import ConfigError
from instructscale.lifecycle import commit_part, part_name
from instructscale.plugins import Scorer, Selector
from instructscale.schema import decode_metadata
from instructscale.select import dedup, selectors
from instructscale.select.config import SelectConfig
from instructscale.select.ranks import RankSummary
from instructscale.shuffle import mark_in, partition_of

DECISION_SCHEMA = pa.schema(
    [
        ("status", pa.string()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("score", pa.float64()),
        ("difficulty", pa.float64()),
    ]
)
HEAVY = ["embedding", "minhash", "shingles"]
DEDUP_COLUMNS = ["id", "text_hash", "minhash", "shingles"]
SCORES, SELECTED, CHOSEN = "scores", "selected", "_chosen"
OUTPUT_ROWS_PER_PARTITION = 50_000


@lru_cache(maxsize=4)
def _config(cfg_json: str) -> SelectConfig:
    return SelectConfig.model_validate_json(cfg_json)


def read_parquet(files: list[str]) -> ray.data.Dataset:
    fs, _ = storage.resolve(files[0])
    return ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs)


# -- per-row decisions (computed wherever the row is) -------------------------------------------


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=float)


def _stratum(table: pa.Table, key: str | None) -> list[str]:
    if key is None:
        return ["all"] * table.num_rows
    if key in table.column_names:
        return [str(v) for v in table[key].to_pylist()]
    return [str(decode_metadata(m).get(key)) for m in table["metadata"].to_pylist()]


def _difficulty(cfg: SelectConfig, table: pa.Table) -> np.ndarray:
    d = cfg.difficulty
    if d.source == "length":
        return _column(table, "output_chars")
    if d.source == "metadata":
        return np.asarray([decode_metadata(m).get(d.key, math.nan) for m in table["metadata"].to_pylist()], dtype=float)
    return _column(table, d.source)


def _required(cfg: SelectConfig) -> list[str]:
    """The score columns the configured scorers promise (a row missing one is unscorable)."""
    return [c for s in cfg.scorers for c in Scorer.registry.get(s.kind).required]


def filter_columns(cfg: SelectConfig) -> list[str]:
    """The columns :func:`removal_reasons` reads."""
    return ["reject_reason", "filter_reason", *_required(cfg), *(["ifd"] if cfg.max_ifd is not None else [])]


def removal_reasons(cfg: SelectConfig, t: pa.Table) -> list[str | None]:
    """The first filter each row fails (dedup comes later, among the survivors)."""
    n = t.num_rows
    rejected = t["reject_reason"].to_pylist() if "reject_reason" in t.column_names else [None] * n
    filtered = t["filter_reason"].to_pylist()
    columns = [t[c].to_pylist() for c in _required(cfg)]
    missing = [any(v is None for v in vals) for vals in zip(*columns)] or [False] * n
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


def _score(cfg: SelectConfig, t: pa.Table, ranks: dict[str, RankSummary]) -> np.ndarray:
    """Sum of weight x percentile rank in the whole pool (no weights: every row scores 0)."""
    score = np.zeros(t.num_rows)
    for name, w in cfg.weights.items():
        score += w * ranks[name].percentile(_column(t, name))
    return score


def decisions(t: pa.Table, cfg_json: str, ranks: dict[str, RankSummary], dups: list) -> pa.Table:
    """id, reason (removal or duplicate), duplicate_of, stratum, score and difficulty of ``t``'s rows.
    ``dups`` holds one ObjectRef to the duplicates table (in a list, so Ray passes it unresolved)."""
    cfg = _config(cfg_json)
    reasons = pa.array(removal_reasons(cfg, t), pa.string())
    duplicates: pa.Table = ray.get(dups[0])
    at = pc.index_in(t["id"], value_set=duplicates["id"])
    reasons = pc.if_else(pc.is_valid(at), duplicates["reason"].take(at), reasons)
    return pa.table(
        {
            "id": t["id"],
            "reason": reasons,
            "duplicate_of": duplicates["duplicate_of"].take(at),
            "stratum": pa.array(_stratum(t, cfg.budget.stratify_by), pa.string()),
            "score": _score(cfg, t, ranks),
            "difficulty": pa.array(_difficulty(cfg, t), from_pandas=True),
        }
    )


# -- 1. ranks ----------------------------------------------------------------------------------------


def _summaries(batch: pa.Table, columns: list[str]) -> pa.Table:
    rows = []
    for name in columns:
        s = RankSummary.of(_column(batch, name))
        rows.append({"column": name, "values": s.values, "below": s.below, "upto": s.upto, "n": s.n})
    return pa.Table.from_pylist(rows)


def rank_summaries(features: ray.data.Dataset, columns: list[str]) -> dict[str, RankSummary]:
    """Each column's rank summary over the whole dataset, merged as the block summaries stream in."""
    merged = {c: RankSummary.of(np.array([])) for c in columns}
    if not columns:
        return merged
    parts = features.select_columns(columns).map_batches(
        _summaries, batch_format="pyarrow", fn_kwargs={"columns": columns}
    )
    for r in parts.iter_rows():
        block = RankSummary(np.asarray(r["values"]), np.asarray(r["below"]), np.asarray(r["upto"]), r["n"])
        merged[r["column"]] = merged[r["column"]].merge(block)
    return merged


# -- 2. dedup ----------------------------------------------------------------------------------------


def _dedup_rows(batch: pa.Table, cfg_json: str, ranks: dict[str, RankSummary]) -> pa.Table:
    """The rows of ``batch`` that no filter removed, with the columns dedup needs and their score."""
    cfg = _config(cfg_json)
    keep = batch.filter(pa.array([r is None for r in removal_reasons(cfg, batch)]))
    return keep.select(DEDUP_COLUMNS).append_column("score", pa.array(_score(cfg, keep, ranks)))


@ray.remote
def _resolve(*pairs: pa.Table) -> pa.Table:
    return dedup.resolve(pa.concat_tables([dedup.PAIRS.empty_table(), *pairs]))


def duplicates(cfg: SelectConfig, features: list[str], rows: int, ranks: dict) -> ray.ObjectRef:
    """A reference to the duplicates table (id, reason, duplicate_of) of the rows no filter removed;
    the pairs go from the shuffle to a Ray task, never through the driver."""
    if not (cfg.dedup.exact or cfg.dedup.near):
        return ray.put(dedup.DUPLICATES.empty_table())
    names = storage.parquet_schema(features[0]).names
    columns = [c for c in dict.fromkeys(DEDUP_COLUMNS + filter_columns(cfg) + list(cfg.weights)) if c in names]
    survivors = (
        read_parquet(features)
        .select_columns(columns)
        .map_batches(_dedup_rows, batch_format="pyarrow", fn_kwargs={"cfg_json": cfg.model_dump_json(), "ranks": ranks})
    )
    return _resolve.remote(*dedup.duplicate_pairs(survivors, cfg.dedup, rows).to_arrow_refs())


# -- 3. counts -----------------------------------------------------------------------------------------


def _counts(batch: pa.Table, cfg_json: str, ranks: dict, dups: list) -> pa.Table:
    """Rows per (stratum, reason) of the batch, as one JSON row; plus the judge's unparsable scores."""
    d = decisions(batch, cfg_json, ranks, dups)
    counts = Counter(zip(d["stratum"].to_pylist(), d["reason"].to_pylist()))
    judged = 0
    if "judge" in batch.column_names:  # judged rows (those no filter removed) without a parsable score
        judged = pc.sum(pc.and_(pc.is_null(batch["filter_reason"]), pc.is_null(batch["judge"]))).as_py() or 0
    return pa.table({"counts": [json.dumps([[s, r, n] for (s, r), n in counts.items()])], "judge_unparsable": [judged]})


def count_decisions(cfg: SelectConfig, rows: ray.data.Dataset, ranks: dict, dups: list) -> tuple[Counter, int]:
    """Rows per (stratum, reason) over the whole pool (reason None: eligible), summed block by block."""
    total, judge_unparsable = Counter(), 0
    parts = rows.map_batches(
        _counts, batch_format="pyarrow", fn_kwargs={"cfg_json": cfg.model_dump_json(), "ranks": ranks, "dups": dups}
    )
    for r in parts.iter_rows():
        total.update({(s, reason): n for s, reason, n in json.loads(r["counts"])})
        judge_unparsable += r["judge_unparsable"]
    return total, judge_unparsable


def allocation(cfg: SelectConfig, counts: Counter) -> tuple[int, dict]:
    """The budget and its split over the strata."""
    b = cfg.budget
    n_rows = sum(counts.values())
    budget = b.budget if b.budget is not None else round(b.fraction * n_rows)
    available, inputs = Counter(), Counter()
    for (stratum, reason), n in counts.items():
        inputs[stratum] += n
        available[stratum] += n if reason is None else 0
    available = Counter({k: v for k, v in available.items() if v})
    if b.quotas:
        unknown = set(b.quotas) - set(available)
        if unknown:
            raise ConfigError(
                f"select.budget.quotas: no eligible rows in stratum/strata {sorted(unknown)} "
                f"of {b.stratify_by}; present: {sorted(available)}"
            )
    shares = b.quotas or (dict(inputs) if b.quota_basis == "input" else None)
    return budget, selectors.allocate(budget, dict(available), shares)


# -- 4. selection --------------------------------------------------------------------------------------


def _available(counts: Counter) -> Counter:
    available = Counter()
    for (stratum, reason), n in counts.items():
        available[stratum] += n if reason is None else 0
    return available


def _eligible(batch: pa.Table, cfg_json: str, ranks: dict, dups: list, shards: dict, embeddings: bool) -> pa.Table:
    """The eligible rows of the strata in ``shards`` (stratum -> number of shards), with their group
    ("stratum/shard", by a hash of the id) and score, and their embedding when the selector needs it."""
    d = decisions(batch, cfg_json, ranks, dups)
    keep = pc.and_(pc.is_null(d["reason"]), pc.is_in(d["stratum"], value_set=pa.array(list(shards), pa.string())))
    d = d.filter(keep)
    shard = partition_of(d["id"], np.asarray([shards[s] for s in d["stratum"].to_pylist()], dtype=np.int64))
    groups = [f"{s}/{h}" for s, h in zip(d["stratum"].to_pylist(), shard.to_pylist())]
    out = pa.table({"id": d["id"], "stratum": d["stratum"], "group": groups, "score": d["score"]})
    return out.append_column("embedding", batch.filter(keep)["embedding"]) if embeddings else out


def _group_sizes(batch: pa.Table) -> pa.Table:
    return pa.table({"sizes": [json.dumps(Counter(batch["group"].to_pylist()))]})


def _pick(group: pa.Table, cfg_json: str, k: dict, key: str) -> pa.Table:
    """``k[group]`` rows of one group (sorted by id) by the configured selector."""
    t = group.sort_by("id")
    n = k[t[key][0].as_py()]
    if n >= t.num_rows:
        return t
    spec = _config(cfg_json).selector
    selector = Selector.registry.build(spec)
    emb = np.asarray(t["embedding"].to_pylist(), dtype=np.float32) if selector.needs_embeddings else None
    picked = selector.select(t["score"].to_numpy(), emb, n, spec.seed)
    return t.take(pa.array(np.asarray(picked, dtype=np.int64)))


def _shard_budgets(cfg: SelectConfig, alloc: dict, available: Counter, sizes: dict) -> tuple[dict, set]:
    """Rows each shard passes on, and the strata whose shards' candidates are merged."""
    spec, k, merge = cfg.selector, {}, set()
    for stratum, groups in sizes.items():
        share = {
            g: min(n, math.ceil(alloc[stratum] * n / available[stratum] * spec.oversample)) for g, n in groups.items()
        }
        if len(groups) > 1 and sum(share.values()) < available[stratum]:
            merge.add(stratum)
            k.update(share)
        else:  # a merge would redo the whole stratum: split the budget over the shards
            k.update(selectors.allocate(alloc[stratum], groups, None))
    return k, merge


def _in_strata(batch: pa.Table, strata: list[str], keep: bool) -> pa.Table:
    member = pc.is_in(batch["stratum"], value_set=pa.array(strata, pa.string()))
    return batch.filter(member if keep else pc.invert(member))


def _groups(n: int) -> int:
    return max(2, min(n, 64))


def chosen_ids(cfg: SelectConfig, rows: ray.data.Dataset, ranks: dict, dups: list, counts: Counter, alloc: dict):
    """The selected rows (id, stratum), picked by the selector per stratum shard (a Ray dataset)."""
    available = _available(counts)
    shards = {s: math.ceil(available[s] / cfg.selector.shard_rows) for s, k in alloc.items() if k}
    kwargs = {"cfg_json": cfg.model_dump_json(), "ranks": ranks, "dups": dups, "shards": shards}
    embeddings = Selector.registry.get(cfg.selector.kind).needs_embeddings
    eligible = rows.map_batches(_eligible, batch_format="pyarrow", fn_kwargs={**kwargs, "embeddings": embeddings})
    eligible = eligible.materialize()
    sizes: dict[str, Counter] = {}
    for r in eligible.map_batches(_group_sizes, batch_format="pyarrow").iter_rows():
        for group, n in json.loads(r["sizes"]).items():
            sizes.setdefault(group.rsplit("/", 1)[0], Counter())[group] += n
    k, merge = _shard_budgets(cfg, alloc, available, sizes)
    pick = {"cfg_json": kwargs["cfg_json"], "k": k, "key": "group"}
    picked = eligible.groupby("group", num_partitions=_groups(len(k))).map_groups(
        _pick, batch_format="pyarrow", fn_kwargs=pick
    )
    if merge:  # the shards' candidates of these strata, then the stratum's budget among them
        picked = picked.materialize()
        strata = sorted(merge)
        kept = picked.map_batches(_in_strata, batch_format="pyarrow", fn_kwargs={"strata": strata, "keep": False})
        merged = picked.map_batches(_in_strata, batch_format="pyarrow", fn_kwargs={"strata": strata, "keep": True})
        merged = merged.groupby("stratum", num_partitions=_groups(len(strata))).map_groups(
            _pick, batch_format="pyarrow", fn_kwargs={**pick, "k": alloc, "key": "stratum"}
        )
        picked = kept.union(merged)
    return picked.select_columns(["id", "stratum"])


# -- 5. outputs ----------------------------------------------------------------------------------------


def _write(block: pa.Table, cfg_json: str, ranks: dict, dups: list, out: str) -> pa.Table:
    """One partition of the features rows (without the heavy columns) plus their decisions, committed
    to ``scores``; its selected rows committed to ``selected``. Returns the selected count per stratum."""
    d = decisions(block, cfg_json, ranks, dups)
    chosen = block[CHOSEN]
    status = pc.if_else(chosen, "selected", pc.if_else(pc.is_valid(d["reason"]), "removed", "not_selected"))
    reason = pc.if_else(pc.equal(status, "not_selected"), "over_budget", d["reason"])
    block = block.drop_columns([CHOSEN])
    for name, values in zip(DECISION_SCHEMA.names, (status, reason, d["duplicate_of"], d["score"], d["difficulty"])):
        block = block.append_column(DECISION_SCHEMA.field(name), pa.array(values, DECISION_SCHEMA.field(name).type))
    name = part_name(block["id"].to_pylist())
    commit_part(storage.join(out, SCORES), name, block)
    selected = block.filter(chosen)
    if selected.num_rows:
        commit_part(storage.join(out, SELECTED), name, selected)
    by_stratum = Counter(d["stratum"].filter(chosen).to_pylist())
    return pa.table({"rows": [block.num_rows], "selected": [json.dumps(by_stratum)]})


def write_outputs(cfg: SelectConfig, features: list[str], rows: int, chosen, ranks: dict, dups: list, out: str):
    """Every features row (heavy columns dropped) with its decisions, written per hash partition:
    yields (rows, selected per stratum) per committed part."""
    schema = storage.parquet_schema(features[0])
    light = pa.schema([f for f in schema if f.name not in HEAVY])
    marked = mark_in(
        read_parquet(features).select_columns(light.names),
        chosen,
        key="id",
        right_key="id",
        schema=light,
        flag=CHOSEN,
        partitions=max(2, math.ceil(rows / OUTPUT_ROWS_PER_PARTITION)),
        unique=True,
    )
    kwargs = {"cfg_json": cfg.model_dump_json(), "ranks": ranks, "dups": dups, "out": out}
    for r in marked.map_batches(_write, batch_format="pyarrow", batch_size=None, fn_kwargs=kwargs).iter_rows():
        yield r["rows"], Counter(json.loads(r["selected"]))
