"""Mixtures of sources (``select.mix``): the budget shared among sources by weight, in rows or in
tokens, and each source's candidates cut at its share of tokens.

Rows: the budget is split by largest remainder (:func:`.selectors.allocate`), so each source gets
its share within one row. Tokens: each source's token share is split the same way; the selector then
picks enough candidates to cover it even if they were the source's shortest rows, and the
candidates, best first (random ones in a seeded random order), are kept while the source's tokens so
far are below its share: a source ends within one row's tokens of its share. A source too small for
its share is either filled completely with the rest shared among the others (``redistribute``) or
stops the stage before anything is selected (``stop``).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import xxhash

from instructscale.config import ConfigError
from instructscale.select.config import MixSettings
from instructscale.select.selectors import allocate


def _check_shortfall(mix: MixSettings, budget: int, available: dict[str, int]) -> None:
    """With ``shortfall: stop``, refuse a source that has less than its share of ``budget``."""
    if mix.shortfall != "stop":
        return
    short = {
        s: (math.ceil(budget * share), available.get(s, 0))
        for s, share in mix.shares().items()
        if available.get(s, 0) < budget * share
    }
    if short:
        detail = ", ".join(f"{s} needs {need:,} {mix.unit} and has {have:,}" for s, (need, have) in short.items())
        raise ConfigError(f"select.mix: sources too small for their share ({detail}); shortfall: stop")


def allocation(mix: MixSettings, budget: int, available: dict[str, int]) -> dict[str, int]:
    """Each source's share of ``budget`` (rows or tokens), capped by what it has (``available``);
    sources without a weight get nothing."""
    _check_shortfall(mix, budget, available)
    mixed = {s: n for s, n in available.items() if s in mix.weights}
    return {s: 0 for s in available} | allocate(budget, mixed, mix.shares())


def candidates(targets: dict[str, int], tokens: dict[str, dict]) -> dict[str, int]:
    """Rows the selector picks per source so that even its shortest rows cover the token target."""
    out = {}
    for s, target in targets.items():
        t = tokens.get(s, {"rows": 0, "min": 1})
        out[s] = min(t["rows"], math.ceil(target / max(t["min"], 1))) if target else 0
    return out


def trim(group: pa.Table, targets: dict[str, int], ordered: bool, seed: int) -> pa.Table:
    """One source's candidates kept, in order, while the tokens before each are below its target."""
    target = targets[group["stratum"][0].as_py()]
    ids, score = group["id"].to_pylist(), group["score"].to_numpy()
    if ordered:  # best first; ties by id
        order = np.asarray(sorted(range(len(ids)), key=lambda i: (-score[i], ids[i])), dtype=np.int64)
    else:
        order = np.argsort([xxhash.xxh64_intdigest(i.encode(), seed=seed) for i in ids], kind="stable")
    tokens = group["tokens"].to_numpy()[order]
    before = np.cumsum(tokens) - tokens
    return group.take(pa.array(order[before < target]))


def report(mix: MixSettings, rows: dict[str, int], tokens: dict[str, int] | None) -> dict[str, dict]:
    """Per source: its weight's share, and the rows (and tokens) it got with their share of the total."""
    got = tokens if tokens is not None else rows
    total = max(sum(got.values()), 1)
    out = {}
    for source in sorted(set(mix.weights) | set(rows)):
        entry = {"target_share": round(mix.shares().get(source, 0.0), 4), "rows": rows.get(source, 0)}
        if tokens is not None:
            entry["tokens"] = tokens.get(source, 0)
        out[source] = entry | {"share": round(got.get(source, 0) / total, 4)}
    return out
