"""Regression gates: a run fails where the user said its model must not get worse.

A gate names a suite, a metric of it and a rule, read from an evaluation's figures (the statistics
come from :mod:`instructscale.stats`, as every report's do):

- ``not_worse``: fails when the tuned model's paired difference from the base on the same prompts
  has its 95% interval entirely on the worse side (verdict ``worse``); for ``win_rate``, when the
  judged win rate's interval lies entirely below 0.5. It needs a base, so it runs in a pipeline.
- ``min``: fails when the metric's point value is below ``value`` (e.g. ``win_rate`` >= 0.5).

A gate whose figure was not measured fails: a suite that did not run never passes silently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from instructscale import stats
from instructscale.config import StrictModel

WIN_RATE = "win_rate"


class Gate(StrictModel):
    """``{suite, metric, rule}``, and ``value`` for a ``min`` rule."""

    suite: str = Field(description="holdout, or a configured suite")
    metric: str = Field(description="a metric of the suite, or win_rate (judged suites)")
    rule: Literal["not_worse", "min"] = "not_worse"
    value: float | None = Field(None, description="the lowest passing value of a min rule")

    @model_validator(mode="after")
    def _value(self) -> Gate:
        if (self.rule == "min") != (self.value is not None):
            raise ValueError(f"gate {self.name}: a min rule needs `value`, and only a min rule takes one")
        return self

    @property
    def name(self) -> str:
        return f"{self.suite} {self.metric} {self.rule}" + (f" {self.value:g}" if self.value is not None else "")


def _fmt_ci(ci: list[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _not_worse(gate: Gate, ev: dict) -> tuple[bool, str] | None:
    if gate.metric == WIN_RATE:
        w = ev.get(WIN_RATE, {}).get(gate.suite)
        if not w or w.get(WIN_RATE) is None:
            return None
        return w["verdict"] != stats.WORSE, f"win rate {w[WIN_RATE]:.3f} {_fmt_ci(w['win_rate_ci95'])}: {w['verdict']}"
    d = ev.get("vs_base", {}).get(gate.suite, {}).get(gate.metric)
    if not d:
        return None
    return d["verdict"] != stats.WORSE, f"tuned - base {d['diff']:+.3f} {_fmt_ci(d['diff_ci95'])}: {d['verdict']}"


def _min(gate: Gate, ev: dict) -> tuple[bool, str] | None:
    source = ev.get(WIN_RATE, {}) if gate.metric == WIN_RATE else ev.get("suites", {})
    value = source.get(gate.suite, {}).get(gate.metric)
    if value is None:
        return None
    return value >= gate.value, f"{value:.3f} {'>=' if value >= gate.value else '<'} {gate.value:g}"


def check(gates: list[Gate], evaluation: dict) -> list[dict]:
    """Each gate's outcome on ``evaluation`` (an evaluation manifest; a pipeline's tuned model's
    carries ``vs_base`` and ``win_rate``): ``{gate, passed, why}``."""
    out = []
    for gate in gates:
        outcome = (_not_worse if gate.rule == "not_worse" else _min)(gate, evaluation)
        passed, why = outcome or (False, "not measured in this run")
        out.append({"gate": gate.name, **gate.model_dump(exclude_none=True), "passed": passed, "why": why})
    return out


def failed(outcomes: list[dict]) -> list[dict]:
    return [g for g in outcomes if not g["passed"]]


def failure(outcomes: list[dict]) -> str | None:
    """Why a run with these gate outcomes fails (None: every gate passed)."""
    if bad := failed(outcomes):
        names = "; ".join(g["gate"] for g in bad)
        return f"{len(bad)} regression gate(s) failed: {names} (--allow-regression exits 0 anyway)"
    return None


def lines(outcomes: list[dict]) -> list[str]:
    """One line a gate, for the command's output and the log."""
    return [f"gate  {'passed' if g['passed'] else 'FAILED'}  {g['gate']}: {g['why']}" for g in outcomes]
