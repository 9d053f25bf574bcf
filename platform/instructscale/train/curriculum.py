"""Curriculum schedules: which rows each worker trains on at each step, decided once, up front.

A schedule is a list of global batches (row indices into the training set). Worker ``r`` of
``W`` takes ``batch[r::W]`` of every global batch, so at any step all workers see rows of the
same difficulty level, and the order survives across workers, epochs and restarts.

Strategies:
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

from instructscale.config import StrictModel

Strategy = Literal["random", "easy_to_hard", "anti", "baby_steps", "competence"]


class CurriculumConfig(StrictModel):
    strategy: Strategy = "random"
    difficulty_key: str = Field("difficulty", description="column, or metadata key, holding difficulty")
    pacing: Literal["sqrt", "linear"] = "sqrt"
    c0: float = Field(0.2, gt=0, le=1, description="competence: initial fraction of the data")
    competence_fraction: float = Field(0.8, gt=0, le=1, description="competence: reach c=1 after this share of steps")
    buckets: int = Field(3, ge=1, description="baby_steps: number of difficulty buckets")


def competence(step: int, total: int, c0: float, pacing: str) -> float:
    """Fraction of the (sorted) data available at ``step`` of ``total`` pacing steps."""
    t = min(step, total) / max(total, 1)
    if pacing == "linear":
        return min(1.0, t * (1 - c0) + c0)
    return min(1.0, math.sqrt(t * (1 - c0**2) + c0**2))


def _sorted_order(difficulty: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by ascending difficulty, ties broken by a random key (stable per seed)."""
    return np.lexsort((rng.random(len(difficulty)), difficulty))


def build_schedule(difficulty: list[float] | np.ndarray, cfg: CurriculumConfig, *, global_batch: int,
                   epochs: int, seed: int, max_steps: int | None = None) -> list[list[int]]:
    """Global batches of row indices for the whole run (last partial batch of an epoch dropped)."""
    d = np.asarray(difficulty, dtype=float)
    n = len(d)
    if n < global_batch:
        raise ValueError(f"training set has {n} rows, fewer than one global batch ({global_batch})")
    steps_per_epoch = n // global_batch
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    rng = np.random.default_rng(seed)
    batches: list[list[int]] = []
    if cfg.strategy == "competence":
        order = _sorted_order(d, rng)
        pace_steps = max(1, int(total * cfg.competence_fraction))
        for step in range(total):
            avail = max(global_batch, int(round(competence(step, pace_steps, cfg.c0, cfg.pacing) * n)))
            batches.append(order[rng.choice(avail, size=global_batch, replace=False)].tolist())
        return batches
    if cfg.strategy == "baby_steps":
        order = _sorted_order(d, rng)
        bucket_of = np.empty(n, dtype=int)
        bucket_of[order] = np.arange(n) * cfg.buckets // n
        per_stage = [total // cfg.buckets + (1 if k < total % cfg.buckets else 0) for k in range(cfg.buckets)]
        for k, stage_steps in enumerate(per_stage):
            pool = np.flatnonzero(bucket_of <= k)
            for _ in range(stage_steps):
                batches.append(rng.choice(pool, size=global_batch, replace=len(pool) < global_batch).tolist())
        return batches
    for _ in range(epochs):
        if cfg.strategy == "random":
            order = rng.permutation(n)
        else:
            order = _sorted_order(d, rng)
            if cfg.strategy == "anti":
                order = order[::-1]
        for s in range(steps_per_epoch):
            batches.append(order[s * global_batch:(s + 1) * global_batch].tolist())
            if len(batches) == total:
                return batches
    return batches


def worker_slice(batch: list[int], rank: int, world_size: int) -> list[int]:
    """The part of a global batch that worker ``rank`` trains on."""
    return batch[rank::world_size]
