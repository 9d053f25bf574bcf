"""Spending a row budget: quota allocation per stratum, and the built-in selectors (plug-ins):
random, top-k, longest responses, DEITA-style score-first diversity, k-center greedy."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from instructscale.plugins import Selector, SelectorConfig, register


def allocate(budget: int, available: dict[str, int], quotas: dict[str, float] | None) -> dict[str, int]:
    """Rows per stratum: quotas (relative weights; default: proportional to availability) by largest remainder,
    capped by what each stratum has; what a capped stratum cannot fill is re-split among the others."""
    total_available = sum(available.values())
    shares = quotas or {k: v / max(total_available, 1) for k, v in available.items()}
    alloc = {k: 0 for k in available}
    remaining = min(budget, total_available)
    open_ = {k for k in available if available[k] > 0 and shares.get(k, 0) > 0}
    while remaining > 0 and open_:
        total = sum(shares[k] for k in open_)
        exact = {k: remaining * shares[k] / total for k in open_}
        capped = {k for k in open_ if int(exact[k]) >= available[k]}
        if capped:  # fill them and split the rest again
            for k in capped:
                alloc[k] = available[k]
            remaining -= sum(available[k] for k in capped)
            open_ -= capped
            continue
        for k in open_:
            alloc[k] = int(exact[k])
        left = remaining - sum(alloc[k] for k in open_)
        for k in sorted(open_, key=lambda k: (-(exact[k] - int(exact[k])), k))[:left]:
            alloc[k] += 1
        break
    return alloc


def _unit(emb: np.ndarray) -> np.ndarray:
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def topk(score: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best scores (ties: lower position first)."""
    return np.argsort(-score, kind="stable")[:k]


def diverse(score: np.ndarray, emb: np.ndarray, k: int, min_distance: float) -> np.ndarray:
    """DEITA's score-first selection: walk rows by score, keep one if its cosine distance to every
    kept row is at least ``min_distance``; if that leaves fewer than ``k``, fill by score."""
    unit = _unit(emb)
    chosen: list[int] = []
    kept = np.empty((k, unit.shape[1]))
    for i in np.argsort(-score, kind="stable"):
        if len(chosen) == k:
            break
        if not chosen or 1 - float((kept[: len(chosen)] @ unit[i]).max()) >= min_distance:
            kept[len(chosen)] = unit[i]
            chosen.append(int(i))
    if len(chosen) < k:
        taken = set(chosen)
        chosen += [int(i) for i in np.argsort(-score, kind="stable") if i not in taken][: k - len(chosen)]
    return np.asarray(chosen, dtype=int)


def kcenter(score: np.ndarray, emb: np.ndarray, k: int) -> np.ndarray:
    """k-center greedy (Sener & Savarese 2018) on cosine distance, seeded with the best row."""
    unit = _unit(np.asarray(emb, dtype=np.float32))
    chosen = np.empty(min(k, len(score)), dtype=int)
    chosen[0] = int(np.argmax(score))
    dist = 1 - unit @ unit[chosen[0]]
    dist[chosen[0]] = -np.inf
    sim = np.empty_like(dist)
    for j in range(1, len(chosen)):
        chosen[j] = nxt = int(np.argmax(dist))
        np.matmul(unit, unit[nxt], out=sim)
        np.minimum(dist, np.subtract(1, sim, out=sim), out=dist)  # chosen rows stay at -inf
        dist[nxt] = -np.inf
    return chosen


def random_pick(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


@register("random")
class Random(Selector):
    """A random draw (per stratum) from the rows that survive filters and dedup."""

    ordered = False

    def select(self, score, embeddings, k, seed):
        return random_pick(len(score), k, seed)


@register("topk")
class TopK(Selector):
    """The ``k`` best-scored rows."""

    def select(self, score, embeddings, k, seed):
        return topk(score, k)


@register("longest")
class Longest(Selector):
    """The ``k`` rows with the longest responses (characters): the strong baseline of "Long Is More
    for Alignment" (Zhao et al. 2024), which took the 1,000 longest Alpaca responses. The paper
    measures length in tokens; characters rank the same rows nearly always, at no tokenizer cost."""

    ranks_by = "output_chars"

    def select(self, score, embeddings, k, seed):
        return topk(score, k)


@register("diverse")
class Diverse(Selector):
    """DEITA's score-first selection with a minimum cosine distance between chosen rows."""

    needs_embeddings = True

    class Config(SelectorConfig):
        kind: str = "diverse"
        min_distance: float = Field(0.05, ge=0, le=2, description="cosine distance to every chosen row")

    def select(self, score, embeddings, k, seed):
        return diverse(score, embeddings, k, self.config.min_distance)


@register("kcenter")
class KCenter(Selector):
    """k-center greedy coverage of the embeddings, seeded with the best-scored row."""

    needs_embeddings = True

    def select(self, score, embeddings, k, seed):
        return kcenter(score, embeddings, k)
