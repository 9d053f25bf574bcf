"""Running any scorer plug-in inside the selection stage's Ray Data pipeline: stateless scorers as
task functions, stateful ones (models) in an actor pool on a model thread of their own."""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from instructscale.plugins import Scorer
from instructscale.process import Shipped
from instructscale.runtime import ModelThread
from instructscale.select.config import SelectConfig


def _append_scores(batch: pa.Table, scorer: Scorer, scorer_call) -> pa.Table:
    """``batch`` plus the scorer's columns (prefixed when it is named); rows a filter removed get
    nulls and are not scored."""
    keep = pc.is_null(batch["filter_reason"]).to_pylist()
    rows = [r for r, k in zip(batch.to_pylist(), keep) if k]
    values = scorer_call(rows) if rows else {c: [] for c in scorer.columns}
    for name, dtype in scorer.columns.items():
        it = iter(values[name])
        full = [next(it) if k else None for k in keep]
        batch = batch.append_column(scorer.prefix(scorer.config) + name, pa.array(full, dtype))
    return batch


class ScorerActor:
    """Ray Data actor running one configured scorer (``index`` into the select config's scorers)
    on its own model thread."""

    def __init__(self, shipped: Shipped[SelectConfig], index: int):
        self.scorer = Scorer.registry.build(shipped.load().scorers[index])
        self.thread = ModelThread()
        self.thread.run(self.scorer.setup)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _append_scores(batch, self.scorer, lambda rows: self.thread.run(self.scorer.score, rows))


@lru_cache(maxsize=8)
def _task_scorer(shipped: Shipped[SelectConfig], index: int) -> Scorer:
    scorer = Scorer.registry.build(shipped.load().scorers[index])
    scorer.setup()
    return scorer


def score_in_task(batch: pa.Table, shipped: Shipped[SelectConfig], index: int) -> pa.Table:
    """A stateless scorer as a Ray Data task function (set up once per worker process)."""
    scorer = _task_scorer(shipped, index)
    return _append_scores(batch, scorer, scorer.score)
