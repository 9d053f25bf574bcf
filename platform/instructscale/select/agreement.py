"""How far two scorers rank the pool alike: Spearman's rank correlation of each named scorer's score
column with the same column of the config's other scorer of that kind (Superfiltering: a small
model's ``small_ifd`` against the student's ``ifd``; Li et al. 2024 report it to justify the
cheaper scorer).

Streamed: the rows both scorers scored get rank summaries (:mod:`instructscale.select.ranks`, exact
while a column has at most 65,536 distinct values), then each block sums its ranks and their
products; the driver holds the summaries and six sums per pair, never the pool. Ties share their
mean rank, so the figure is scipy's ``spearmanr`` on the same rows.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import ray

from instructscale.plugins import Scorer
from instructscale.select.config import SelectConfig
from instructscale.select.decide import float_column, rank_summaries
from instructscale.select.ranks import RankSummary

SUMS = ("n", "a", "b", "aa", "bb", "ab")


def pairs(cfg: SelectConfig) -> list[tuple[str, str]]:
    """(reference, other) score columns: each named scorer's numeric column against the first
    column of that name from another scorer of its kind (the unnamed one when there is one)."""
    found: dict[tuple[str, str], list[str]] = {}
    for spec in sorted(cfg.scorers, key=lambda s: Scorer.prefix(s) != ""):
        cls = Scorer.registry.get(spec.kind)
        for col, typ in cls.columns.items():
            if (pa.types.is_floating(typ) or pa.types.is_integer(typ)) and col not in cls.heavy:
                found.setdefault((spec.kind, col), []).append(Scorer.prefix(spec) + col)
    return [(cols[0], other) for cols in found.values() for other in cols[1:]]


def _both(batch: pa.Table, a: str, b: str) -> pa.Table:
    x, y = float_column(batch, a), float_column(batch, b)
    return pa.table({a: x, b: y}).filter(pa.array(~(np.isnan(x) | np.isnan(y))))


def _sums(batch: pa.Table, a: str, b: str, ranks: dict[str, RankSummary]) -> pa.Table:
    x, y = ranks[a].percentile(float_column(batch, a)), ranks[b].percentile(float_column(batch, b))
    return pa.Table.from_pylist([dict(zip(SUMS, (len(x), x.sum(), y.sum(), x @ x, y @ y, x @ y)))])


def spearman(features: ray.data.Dataset, a: str, b: str) -> dict:
    """``{"with": a, "spearman": rho, "rows": n}`` over the rows where both ``a`` and ``b`` are set."""
    both = features.select_columns([a, b]).map_batches(_both, batch_format="pyarrow", fn_kwargs={"a": a, "b": b})
    ranks = rank_summaries(both, [a, b])
    total = dict.fromkeys(SUMS, 0.0)
    for r in both.map_batches(_sums, batch_format="pyarrow", fn_kwargs={"a": a, "b": b, "ranks": ranks}).iter_rows():
        total = {k: total[k] + r[k] for k in SUMS}
    n = total["n"]
    cov = total["ab"] - total["a"] * total["b"] / n if n else 0.0
    var_a = total["aa"] - total["a"] ** 2 / n if n else 0.0
    var_b = total["bb"] - total["b"] ** 2 / n if n else 0.0
    rho = cov / math.sqrt(var_a * var_b) if var_a > 0 and var_b > 0 else None
    return {"with": a, "spearman": None if rho is None else round(rho, 4), "rows": int(n)}


def rank_correlations(cfg: SelectConfig, features: ray.data.Dataset) -> dict[str, dict]:
    """Per named scorer's column, its rank correlation with the reference column (empty: no pairs)."""
    return {b: spearman(features, a, b) for a, b in pairs(cfg)}
