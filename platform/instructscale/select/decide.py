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

Every function that runs in a Ray task takes one :class:`Decide`: the shipped config, the rank
summaries and the reference to the duplicates table.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from instructscale import storage
from instructscale.config import ConfigError
from instructscale.lifecycle import commit_part, part_name
from instructscale.plugins import EMBEDDING, RowFilter, Scorer, Selector
from instructscale.process import Shipped
from instructscale.schema import decode_metadata
from instructscale.select import dedup, mixture, selectors
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
DEDUP_COLUMNS = ["id", "text_hash", "minhash", "shingles"]
SCORES, SELECTED, CHOSEN = "scores", "selected", "_chosen"
OUTPUT_ROWS_PER_PARTITION = 50_000


@dataclass(frozen=True)
class Decide:
    """What the decisions need wherever a row is: the config, the rank summaries of the weighted
    columns, and (once dedup ran) one ObjectRef to the duplicates table, in a list so that Ray
    passes it unresolved."""

    shipped: Shipped[SelectConfig]
    ranks: dict[str, RankSummary]
    dups: list = field(default_factory=list)

    @property
    def cfg(self) -> SelectConfig:
        return self.shipped.load()

    def after_scoring(self) -> list[RowFilter]:
        return _after_scoring(self.shipped)


@lru_cache(maxsize=4)
def _after_scoring(shipped: Shipped[SelectConfig]) -> list[RowFilter]:
    return [RowFilter.registry.build(f) for f in shipped.load().filters_after_scoring()]


def heavy_columns(cfg: SelectConfig) -> list[str]:
    """Columns the decisions never read: the dedup signatures and the scorers' heavy ones."""
    return ["minhash", "shingles", *(c for s in cfg.scorers for c in Scorer.columns_of(s, "heavy"))]


def read_parquet(files: list[str]) -> ray.data.Dataset:
    fs, _ = storage.resolve(files[0])
    return ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=fs)


# -- per-row decisions (computed wherever the row is) -------------------------------------------


def float_column(table: pa.Table, name: str) -> np.ndarray:
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
        return float_column(table, "output_chars")
    if d.source == "metadata":
        return np.asarray([decode_metadata(m).get(d.key, math.nan) for m in table["metadata"].to_pylist()], dtype=float)
    return float_column(table, d.source)


def _required(cfg: SelectConfig) -> list[str]:
    """The score columns the configured scorers promise (a row missing one is unscorable)."""
    return [c for s in cfg.scorers for c in Scorer.columns_of(s, "required")]


def filter_columns(cfg: SelectConfig) -> list[str]:
    """The columns :func:`removal_reasons` reads."""
    after = [c for f in cfg.filters_after_scoring() for c in RowFilter.registry.get(f.kind).reads(f)]
    return list(dict.fromkeys(["id", "reject_reason", "filter_reason", *_required(cfg), *after]))


def _first_after_scoring(filters: list[RowFilter], row: dict) -> str | None:
    return next((reason for f in filters if (reason := f.filter(row))), None)


def removal_reasons(ctx: Decide, t: pa.Table) -> list[str | None]:
    """The first filter each row fails (dedup comes later, among the survivors): generation's
    rejects, the filters before scoring, unscorable rows, then the filters after scoring."""
    n = t.num_rows
    rejected = t["reject_reason"].to_pylist() if "reject_reason" in t.column_names else [None] * n
    filtered = t["filter_reason"].to_pylist()
    columns = [t[c].to_pylist() for c in _required(ctx.cfg)]
    missing = [any(v is None for v in vals) for vals in zip(*columns)] or [False] * n
    after = ctx.after_scoring()
    read = [c for c in dict.fromkeys(["id", *(c for f in after for c in f.reads(f.config))]) if c in t.column_names]
    rows = t.select(read).to_pylist() if after else []
    reasons: list[str | None] = []
    for i in range(n):
        if rejected[i]:
            reasons.append(f"generate:{rejected[i]}")
        elif filtered[i]:
            reasons.append(filtered[i])
        elif missing[i]:
            reasons.append("unscorable")
        else:
            reasons.append(_first_after_scoring(after, rows[i]) if after else None)
    return reasons


def _score(ctx: Decide, t: pa.Table) -> np.ndarray:
    """Sum of weight x percentile rank in the whole pool (no weights: every row scores 0)."""
    score = np.zeros(t.num_rows)
    for name, w in ctx.cfg.weights.items():
        score += w * ctx.ranks[name].percentile(float_column(t, name))
    return score


def decisions(t: pa.Table, ctx: Decide) -> pa.Table:
    """id, reason (removal or duplicate), duplicate_of, stratum, score and difficulty of ``t``'s rows."""
    cfg = ctx.cfg
    reasons = pa.array(removal_reasons(ctx, t), pa.string())
    duplicates: pa.Table = ray.get(ctx.dups[0])
    at = pc.index_in(t["id"], value_set=duplicates["id"])
    reasons = pc.if_else(pc.is_valid(at), duplicates["reason"].take(at), reasons)
    return pa.table(
        {
            "id": t["id"],
            "reason": reasons,
            "duplicate_of": duplicates["duplicate_of"].take(at),
            "stratum": pa.array(_stratum(t, cfg.strata_key()), pa.string()),
            "score": _score(ctx, t),
            "difficulty": pa.array(_difficulty(cfg, t), from_pandas=True),
        }
    )


# -- 1. ranks ----------------------------------------------------------------------------------------


def _summaries(batch: pa.Table, columns: list[str]) -> pa.Table:
    rows = []
    for name in columns:
        s = RankSummary.of(float_column(batch, name))
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


def _dedup_rows(batch: pa.Table, ctx: Decide) -> pa.Table:
    """The rows of ``batch`` that no filter removed, with the columns dedup needs and their score."""
    keep = batch.filter(pa.array([r is None for r in removal_reasons(ctx, batch)]))
    return keep.select(DEDUP_COLUMNS).append_column("score", pa.array(_score(ctx, keep)))


@ray.remote
def _resolve(*pairs: pa.Table) -> pa.Table:
    return dedup.resolve(pa.concat_tables([dedup.PAIRS.empty_table(), *pairs]))


def duplicates(ctx: Decide, features: list[str], rows: int) -> Decide:
    """``ctx`` with a reference to the duplicates table (id, reason, duplicate_of) of the rows no
    filter removed; the pairs go from the shuffle to a Ray task, never through the driver."""
    cfg = ctx.cfg
    if not (cfg.dedup.exact or cfg.dedup.near):
        return replace(ctx, dups=[ray.put(dedup.DUPLICATES.empty_table())])
    names = storage.parquet_schema(features[0]).names
    columns = [c for c in dict.fromkeys(DEDUP_COLUMNS + filter_columns(cfg) + list(cfg.weights)) if c in names]
    survivors = (
        read_parquet(features)
        .select_columns(columns)
        .map_batches(_dedup_rows, batch_format="pyarrow", fn_kwargs={"ctx": ctx})
    )
    return replace(ctx, dups=[_resolve.remote(*dedup.duplicate_pairs(survivors, cfg.dedup, rows).to_arrow_refs())])


# -- 3. counts -----------------------------------------------------------------------------------------


def _counts(batch: pa.Table, ctx: Decide) -> pa.Table:
    """Rows per (stratum, reason) of the batch, as one JSON row; plus the scorers' own counts."""
    d = decisions(batch, ctx)
    counts = Counter(zip(d["stratum"].to_pylist(), d["reason"].to_pylist()))
    scorers: Counter = Counter()
    for spec in ctx.cfg.scorers:
        scorer, prefix = Scorer.registry.get(spec.kind), Scorer.prefix(spec)
        own = {c: batch[prefix + c] for c in scorer.columns if prefix + c in batch.column_names}  # no heavy ones
        own = pa.table({"filter_reason": batch["filter_reason"], **own})
        scorers.update({prefix + k: v for k, v in scorer.summarize(own).items()})
    return pa.table(
        {"counts": [json.dumps([[s, r, n] for (s, r), n in counts.items()])], "scorers": [json.dumps(scorers)]}
    )


def count_decisions(ctx: Decide, rows: ray.data.Dataset) -> tuple[Counter, dict[str, int]]:
    """Rows per (stratum, reason) over the whole pool (reason None: eligible), summed block by block,
    and the scorers' counts (:meth:`instructscale.plugins.Scorer.summarize`)."""
    total, scorers = Counter(), Counter()
    for r in rows.map_batches(_counts, batch_format="pyarrow", fn_kwargs={"ctx": ctx}).iter_rows():
        total.update({(s, reason): n for s, reason, n in json.loads(r["counts"])})
        scorers.update(json.loads(r["scorers"]))
    return total, dict(scorers)


def _token_sums(batch: pa.Table, ctx: Decide) -> pa.Table:
    """Per stratum of the batch: its tokens, and its eligible rows' count, tokens and fewest tokens."""
    d = decisions(batch, ctx)
    out: dict[str, dict] = {}
    for stratum, reason, n in zip(d["stratum"].to_pylist(), d["reason"].to_pylist(), batch["tokens"].to_pylist()):
        t = out.setdefault(stratum, {"input": 0, "rows": 0, "tokens": 0, "min": n})
        t["input"] += n
        if reason is None:
            t.update(rows=t["rows"] + 1, tokens=t["tokens"] + n, min=min(t["min"], n))
    return pa.table({"sums": [json.dumps(out)]})


def token_totals(ctx: Decide, rows: ray.data.Dataset) -> dict[str, dict]:
    """Per stratum over the whole pool (a mixture in tokens): ``input`` tokens, and the eligible
    ``rows``, their ``tokens`` and the fewest ``min`` of any; summed block by block."""
    totals: dict[str, dict] = {}
    for r in rows.map_batches(_token_sums, batch_format="pyarrow", fn_kwargs={"ctx": ctx}).iter_rows():
        for stratum, t in json.loads(r["sums"]).items():
            acc = totals.setdefault(stratum, {"input": 0, "rows": 0, "tokens": 0, "min": t["min"]})
            acc.update({k: acc[k] + t[k] for k in ("input", "rows", "tokens")}, min=min(acc["min"], t["min"]))
    return totals


def allocation(cfg: SelectConfig, counts: Counter, tokens: dict[str, dict] | None = None) -> tuple[int, dict, dict]:
    """The budget, its split over the strata (rows the selector picks), and for a mixture in tokens
    each source's token target (else empty)."""
    b = cfg.budget
    available, inputs = Counter(), Counter()
    for (stratum, reason), n in counts.items():
        inputs[stratum] += n
        available[stratum] += n if reason is None else 0
    available = Counter({k: v for k, v in available.items() if v})
    if tokens is not None:
        budget = b.tokens or round(b.fraction * sum(t["input"] for t in tokens.values()))
        targets = mixture.allocation(cfg.mix, budget, {s: t["tokens"] for s, t in tokens.items() if t["rows"]})
        return budget, mixture.candidates(targets, tokens), targets
    budget = b.budget if b.budget is not None else round(b.fraction * sum(counts.values()))
    if cfg.mix:
        return budget, mixture.allocation(cfg.mix, budget, dict(available)), {}
    if b.quotas:
        unknown = set(b.quotas) - set(available)
        if unknown:
            raise ConfigError(
                f"select.budget.quotas: no eligible rows in stratum/strata {sorted(unknown)} "
                f"of {b.stratify_by}; present: {sorted(available)}"
            )
    shares = b.quotas or (dict(inputs) if b.quota_basis == "input" else None)
    return budget, selectors.allocate(budget, dict(available), shares), {}


# -- 4. selection --------------------------------------------------------------------------------------


def _available(counts: Counter) -> Counter:
    available = Counter()
    for (stratum, reason), n in counts.items():
        available[stratum] += n if reason is None else 0
    return available


def _eligible(batch: pa.Table, ctx: Decide, shards: dict, embeddings: bool) -> pa.Table:
    """The eligible rows of the strata in ``shards`` (stratum -> number of shards), with their group
    ("stratum/shard", by a hash of the id) and score, and their embedding when the selector needs it."""
    d = decisions(batch, ctx)
    keep = pc.and_(pc.is_null(d["reason"]), pc.is_in(d["stratum"], value_set=pa.array(list(shards), pa.string())))
    d = d.filter(keep)
    shard = partition_of(d["id"], np.asarray([shards[s] for s in d["stratum"].to_pylist()], dtype=np.int64))
    groups = [f"{s}/{h}" for s, h in zip(d["stratum"].to_pylist(), shard.to_pylist())]
    column = Selector.registry.get(ctx.cfg.selector.kind).ranks_by
    score = batch.filter(keep)[column] if column else d["score"]
    out = pa.table({"id": d["id"], "stratum": d["stratum"], "group": groups, "score": pc.cast(score, pa.float64())})
    if ctx.cfg.tokens_counted():
        out = out.append_column("tokens", batch.filter(keep)["tokens"])
    return out.append_column(EMBEDDING, batch.filter(keep)[EMBEDDING]) if embeddings else out


def _group_sizes(batch: pa.Table) -> pa.Table:
    return pa.table({"sizes": [json.dumps(Counter(batch["group"].to_pylist()))]})


def _pick(group: pa.Table, ctx: Decide, k: dict, key: str) -> pa.Table:
    """``k[group]`` rows of one group (sorted by id) by the configured selector."""
    t = group.sort_by("id")
    n = k[t[key][0].as_py()]
    if n >= t.num_rows:
        return t
    spec = ctx.cfg.selector
    selector = Selector.registry.build(spec)
    emb = np.asarray(t[EMBEDDING].to_pylist(), dtype=np.float32) if selector.needs_embeddings else None
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


def _sizes(eligible: ray.data.Dataset) -> dict[str, Counter]:
    """stratum -> rows per group of it."""
    sizes: dict[str, Counter] = {}
    for r in eligible.map_batches(_group_sizes, batch_format="pyarrow").iter_rows():
        for group, n in json.loads(r["sizes"]).items():
            sizes.setdefault(group.rsplit("/", 1)[0], Counter())[group] += n
    return sizes


def chosen_ids(
    ctx: Decide, rows: ray.data.Dataset, counts: Counter, alloc: dict, targets: dict[str, int]
) -> ray.data.Dataset:
    """The selected rows (id, stratum), picked by the selector per stratum shard (a Ray dataset); a
    mixture in tokens then keeps each source's candidates up to its token ``targets``."""
    cfg, available = ctx.cfg, _available(counts)
    shards = {s: math.ceil(available[s] / cfg.selector.shard_rows) for s, k in alloc.items() if k}
    embeddings = Selector.registry.get(cfg.selector.kind).needs_embeddings
    eligible = rows.map_batches(
        _eligible, batch_format="pyarrow", fn_kwargs={"ctx": ctx, "shards": shards, "embeddings": embeddings}
    ).materialize()
    k, merge = _shard_budgets(cfg, alloc, available, _sizes(eligible))
    pick = {"ctx": ctx, "k": k, "key": "group"}
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
    if targets:
        trim = {
            "targets": targets,
            "ordered": Selector.registry.get(cfg.selector.kind).ordered,
            "seed": cfg.selector.seed,
        }
        picked = picked.groupby("stratum", num_partitions=_groups(len(targets))).map_groups(
            mixture.trim, batch_format="pyarrow", fn_kwargs=trim
        )
    return picked.select_columns(["id", "stratum"])


# -- 5. outputs ----------------------------------------------------------------------------------------


def _write(block: pa.Table, ctx: Decide, out: str) -> pa.Table:
    """One partition of the features rows (without the heavy columns) plus their decisions, committed
    to ``scores``; its selected rows committed to ``selected``. Returns the selected count per stratum."""
    d = decisions(block, ctx)
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
    tokens = Counter()
    if "tokens" in block.column_names:
        for stratum, n in zip(d["stratum"].filter(chosen).to_pylist(), block["tokens"].filter(chosen).to_pylist()):
            tokens[stratum] += n
    return pa.table({"rows": [block.num_rows], "selected": [json.dumps(by_stratum)], "tokens": [json.dumps(tokens)]})


def write_outputs(ctx: Decide, features: list[str], rows: int, chosen: ray.data.Dataset, out: str):
    """Every features row (heavy columns dropped) with its decisions, written per hash partition:
    yields (rows, selected rows per stratum, their tokens per stratum) per committed part."""
    schema, heavy = storage.parquet_schema(features[0]), heavy_columns(ctx.cfg)
    light = pa.schema([f for f in schema if f.name not in heavy])
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
    kwargs = {"ctx": ctx, "out": out}
    for r in marked.map_batches(_write, batch_format="pyarrow", batch_size=None, fn_kwargs=kwargs).iter_rows():
        yield r["rows"], Counter(json.loads(r["selected"])), Counter(json.loads(r["tokens"]))
