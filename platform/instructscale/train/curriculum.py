"""Curriculum schedules (plug-ins): which rows each worker trains on at each step, decided once, up front.

A schedule is a (steps, global_batch) array of row positions in the training set. Worker ``r`` of
``W`` takes ``batch[r::W]`` of every global batch, so at any step all workers see rows of the
same difficulty level, and the order survives across workers, epochs and restarts.

Built-ins:
- ``random``        a fresh permutation per epoch;
- ``easy_to_hard``  ascending difficulty per epoch (ties shuffled);
- ``anti``          descending difficulty (anti-curriculum, for comparison);
- ``baby_steps``    difficulty buckets; stage k trains on buckets 0..k, shuffled (Cirik et al.);
- ``competence``    competence pacing (Platanios et al. 2019): at step t, sample uniformly from
                    the easiest c(t) fraction, with c(t) = min(1, sqrt(t(1-c0^2)/T + c0^2))
                    (``pacing: sqrt``) or min(1, t(1-c0)/T + c0) (``pacing: linear``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from instructscale.plugins import Curriculum, CurriculumConfig, register


def competence(step: int, total: int, c0: float, pacing: str) -> float:
    """Fraction of the (sorted) data available at ``step`` of ``total`` pacing steps."""
    t = min(step, total) / max(total, 1)
    if pacing == "linear":
        return min(1.0, t * (1 - c0) + c0)
    return min(1.0, math.sqrt(t * (1 - c0**2) + c0**2))


def sorted_order(difficulty: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by ascending difficulty, ties broken by a random key (stable per seed)."""
    return np.lexsort((rng.random(len(difficulty)), difficulty))


def total_steps(n: int, global_batch: int, epochs: int, max_steps: int | None) -> int:
    if n < global_batch:
        raise ValueError(f"training set has {n} rows, fewer than one global batch ({global_batch})")
    per_epoch = n // global_batch
    return per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)


class EpochOrder(Curriculum):
    """Epochs of consecutive global batches over one order per epoch (last partial batch dropped)."""

    def order(self, difficulty: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def schedule(self, difficulty, global_batch, epochs, seed, max_steps):
        n = len(difficulty)
        total = total_steps(n, global_batch, epochs, max_steps)
        rng = np.random.default_rng(seed)
        per_epoch = n // global_batch
        epochs_needed = -(-total // per_epoch)
        orders = [
            self.order(np.asarray(difficulty, dtype=float), rng)[: per_epoch * global_batch]
            for _ in range(epochs_needed)
        ]
        return np.concatenate(orders).reshape(-1, global_batch)[:total]


@register("random")
class RandomOrder(EpochOrder):
    needs_difficulty = False

    def order(self, difficulty, rng):
        return rng.permutation(len(difficulty))


@register("easy_to_hard")
class EasyToHard(EpochOrder):
    def order(self, difficulty, rng):
        return sorted_order(difficulty, rng)


@register("anti")
class HardToEasy(EpochOrder):
    def order(self, difficulty, rng):
        return sorted_order(difficulty, rng)[::-1]


@register("baby_steps")
class BabySteps(Curriculum):
    class Config(CurriculumConfig):
        kind: str = "baby_steps"
        buckets: int = Field(3, ge=1, description="number of difficulty buckets")

    def schedule(self, difficulty, global_batch, epochs, seed, max_steps):
        d = np.asarray(difficulty, dtype=float)
        n, buckets = len(d), self.config.buckets
        total = total_steps(n, global_batch, epochs, max_steps)
        rng = np.random.default_rng(seed)
        order = sorted_order(d, rng)
        bucket_of = np.empty(n, dtype=int)
        bucket_of[order] = np.arange(n) * buckets // n
        batches = []
        for k in range(buckets):
            pool = np.flatnonzero(bucket_of <= k)
            for _ in range(total // buckets + (1 if k < total % buckets else 0)):
                batches.append(rng.choice(pool, size=global_batch, replace=len(pool) < global_batch))
        return np.stack(batches)


@register("competence")
class Competence(Curriculum):
    class Config(CurriculumConfig):
        kind: str = "competence"
        pacing: Literal["sqrt", "linear"] = "sqrt"
        c0: float = Field(0.2, gt=0, le=1, description="initial fraction of the data")
        competence_fraction: float = Field(0.8, gt=0, le=1, description="reach c=1 after this share of steps")

    def schedule(self, difficulty, global_batch, epochs, seed, max_steps):
        d = np.asarray(difficulty, dtype=float)
        n, c = len(d), self.config
        total = total_steps(n, global_batch, epochs, max_steps)
        rng = np.random.default_rng(seed)
        order = sorted_order(d, rng)
        pace_steps = max(1, int(total * c.competence_fraction))
        batches = []
        for step in range(total):
            avail = max(global_batch, round(competence(step, pace_steps, c.c0, c.pacing) * n))
            batches.append(order[rng.choice(avail, size=global_batch, replace=False)])
        return np.stack(batches)


def build_schedule(
    difficulty, spec, *, global_batch: int, epochs: int, seed: int, max_steps: int | None = None
) -> np.ndarray:
    """Global batches of row positions for the whole run, by the curriculum plug-in ``spec`` names:
    an int64 array of shape (steps, global_batch)."""
    d = np.asarray(difficulty, dtype=float)
    batches = np.asarray(Curriculum.registry.build(spec).schedule(d, global_batch, epochs, seed, max_steps))
    if batches.ndim != 2 or batches.shape[1] != global_batch:
        raise ValueError(f"curriculum {spec.kind}: a schedule is (steps, {global_batch}); got shape {batches.shape}")
    if batches.size and (batches.min() < 0 or batches.max() >= len(d)):
        raise ValueError(f"curriculum {spec.kind}: row positions must lie in [0, {len(d)})")
    return batches.astype(np.int64)
