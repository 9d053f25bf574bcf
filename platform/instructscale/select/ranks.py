"""Percentile ranks against the whole pool without holding it: a mergeable summary of a column.

A summary keeps, for up to ``MAX_KNOTS`` values of a column, how many rows lie strictly below and at
or below each. Summaries of blocks merge into the pool's; while the column has at most that many
distinct values, every rank is exact (ties share their mean rank, as scipy's ``rankdata``). Beyond
that, knots are kept at even steps of the count and the rows between two knots are taken as spread
evenly over the values between them, so a rank is off by at most about ``n / MAX_KNOTS`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_KNOTS = 1 << 16


@dataclass
class RankSummary:
    values: np.ndarray  # sorted distinct knots
    below: np.ndarray  # rows with a smaller value
    upto: np.ndarray  # rows with a value at most this one
    n: int  # non-NaN rows summarised

    @classmethod
    def of(cls, column: np.ndarray) -> RankSummary:
        x = np.asarray(column, dtype=float)
        values, counts = np.unique(x[~np.isnan(x)], return_counts=True)
        upto = np.cumsum(counts)
        return cls(values, upto - counts, upto, int(upto[-1]) if len(upto) else 0)

    def _below_at(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows < x, rows <= x) for each x, interpolating between knots."""
        if not len(self.values):
            return np.zeros(len(x)), np.zeros(len(x))
        i = np.searchsorted(self.values, x, side="left")
        hit = (i < len(self.values)) & (self.values[np.minimum(i, len(self.values) - 1)] == x)
        lo = np.maximum(i - 1, 0)
        hi = np.minimum(i, len(self.values) - 1)
        gap_start, gap_end = self.upto[lo], self.below[hi]  # rows hidden between knots lo and hi
        span = self.values[hi] - self.values[lo]
        frac = np.where(span > 0, (x - self.values[lo]) / np.where(span > 0, span, 1), 0)
        between = gap_start + (gap_end - gap_start) * np.clip(frac, 0, 1)
        below = np.where(i == 0, 0, np.where(i == len(self.values), self.n, between))
        below = np.where(hit, self.below[hi], below)
        return below, np.where(hit, self.upto[hi], below)

    def merge(self, other: RankSummary) -> RankSummary:
        values = np.union1d(self.values, other.values)
        a_below, a_upto = self._below_at(values)
        b_below, b_upto = other._below_at(values)
        return RankSummary(values, a_below + b_below, a_upto + b_upto, self.n + other.n).compressed()

    def compressed(self, knots: int = MAX_KNOTS) -> RankSummary:
        if len(self.values) <= knots:
            return self
        keep = np.unique(np.r_[0, np.searchsorted(self.upto, np.linspace(0, self.n, knots)), len(self.values) - 1])
        keep = keep[keep < len(self.values)]
        return RankSummary(self.values[keep], self.below[keep], self.upto[keep], self.n)

    def percentile(self, column: np.ndarray) -> np.ndarray:
        """Each value's mean rank among the summarised rows, in [0, 1]; NaN (no evidence) ranks 0.5."""
        x = np.asarray(column, dtype=float)
        out = np.full(len(x), 0.5)
        ok = ~np.isnan(x)
        if self.n > 1 and ok.any():
            below, upto = self._below_at(x[ok])
            count = np.maximum(upto - below, 1)
            out[ok] = (below + (count - 1) / 2) / (self.n - 1)
        return out
