"""Intervals and paired comparisons: the one place every report takes its statistics from.

A metric is reported as its mean with a 95% percentile-bootstrap interval whose resampling unit is
the prompt (``<metric>`` and ``<metric>_ci95``). Two models (or arms) scored on the same prompts are
compared by their paired difference: prompts are resampled together, so each resample keeps the
pairing, and with several seeds (2-D scores, one row per seed, paired by seed) the seeds are
resampled too. The verdict comes from that interval, never from the point estimates: ``better``
when it lies above zero, ``worse`` below, otherwise ``no detectable difference``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
BETTER, WORSE, SAME = "better", "worse", "no detectable difference"


def _as_scores(values: Sequence) -> np.ndarray:
    """(seeds, prompts) floats: a 1-D list is one seed."""
    a = np.asarray(values, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty list per prompt (or per seed and prompt), got shape {a.shape}")
    return a


def _weights(weights: Sequence | None, scores: np.ndarray) -> np.ndarray:
    """Per-prompt weights broadcast to the scores' shape (a prompt with several instructions counts
    each: the mean is then a ratio over instructions)."""
    w = np.ones(scores.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    return np.broadcast_to(w, scores.shape)


def _resampled_means(scores: np.ndarray, resamples: int, seed: int, weights: np.ndarray) -> np.ndarray:
    """Weighted means of ``resamples`` bootstrap resamples: seeds (when several) and prompts drawn
    with replacement."""
    rng = np.random.default_rng(seed)
    n_seeds, n_prompts = scores.shape
    prompts = rng.integers(0, n_prompts, size=(resamples, n_prompts))
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds)) if n_seeds > 1 else np.zeros((resamples, 1), int)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # 100 resamples at a time: memory stays small for big evals
        s, p = seeds[start : start + 100, :, None], prompts[start : start + 100, None, :]
        w = weights[s, p]
        means[start : start + 100] = (scores[s, p] * w).sum(axis=(1, 2)) / w.sum(axis=(1, 2))
    return means


def interval(samples: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))]


def mean_ci(
    values: Sequence, weights: Sequence | None = None, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, list[float]]:
    """The (weighted) mean of per-prompt scores (1-D, or seeds x prompts) and its 95% bootstrap interval."""
    scores = _as_scores(values)
    w = _weights(weights, scores)
    return float((scores * w).sum() / w.sum()), interval(_resampled_means(scores, resamples, seed, w))


def metric(name: str, values: Sequence, weights: Sequence | None = None, seed: int = 0) -> dict:
    """``{name: mean, name_ci95: [low, high]}``."""
    mean, ci = mean_ci(values, weights, seed=seed)
    return {name: mean, f"{name}_ci95": ci}


def verdict(ci: Sequence[float], higher_is_better: bool = True) -> str:
    """``better`` / ``worse`` when the difference's interval excludes zero, else no detectable difference."""
    low, high = ci
    if low > 0:
        return BETTER if higher_is_better else WORSE
    if high < 0:
        return WORSE if higher_is_better else BETTER
    return SAME


def paired(
    baseline: Sequence,
    other: Sequence,
    higher_is_better: bool | None = True,
    weights: Sequence | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """``other - baseline`` on the same prompts (and seeds): ``diff``, ``diff_ci95`` (paired
    bootstrap) and ``verdict`` (none for a metric that is neither better nor worse:
    ``higher_is_better=None``)."""
    a, b = _as_scores(baseline), _as_scores(other)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same prompts (and seeds): {a.shape} vs {b.shape}")
    w = _weights(weights, a)
    ci = interval(_resampled_means(b - a, resamples, seed, w))
    out = {"diff": float(((b - a) * w).sum() / w.sum()), "diff_ci95": ci}
    return out if higher_is_better is None else {**out, "verdict": verdict(ci, higher_is_better)}


def t_interval(values: Sequence[float]) -> list[float]:
    """A 95% t-interval of a mean over a few independent runs (seeds), e.g. per-seed means."""
    from scipy import stats as scipy_stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return [float(v.mean())] * 2
    half = scipy_stats.t.ppf(1 - (1 - LEVEL) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return [float(v.mean() - half), float(v.mean() + half)]
