"""Regression gates on real comparisons: predictions on disk, compared by the evaluate stage's own
paired statistics, then judged by the gates."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from instructscale import gates
from instructscale.config import ConfigError, parse_config
from instructscale.evaluate import PREDICTIONS, EvalConfig, EvalOptions, compare
from instructscale.lifecycle import commit_part
from instructscale.pipeline import PipelineConfig


def _predictions(out, scores: dict[str, np.ndarray]) -> None:
    """The holdout suite's predictions: one row a prompt, the suite's metric columns."""
    n = len(next(iter(scores.values())))
    rows = [
        {"id": f"p{i}", "exact_match": float(scores["exact_match"][i]), "token_f1": None, "rouge_l": None, "loss": None}
        for i in range(n)
    ]
    commit_part(str(out / PREDICTIONS / "holdout"), "part-00000.parquet", pa.Table.from_pylist(rows))


def _compared(tmp_path, base: np.ndarray, tuned: np.ndarray) -> dict:
    _predictions(tmp_path / "base", {"exact_match": base})
    _predictions(tmp_path / "tuned", {"exact_match": tuned})
    cfg = EvalConfig(model="m", data=str(tmp_path), out_dir=str(tmp_path / "tuned"), judge=None)
    figures = {"suites": {"holdout": {"exact_match": float(tuned.mean())}}}
    return figures | compare(cfg, str(tmp_path / "base"), str(tmp_path / "tuned"), "teacher")


GATES = [
    gates.Gate(suite="holdout", metric="exact_match"),
    gates.Gate(suite="holdout", metric="exact_match", rule="min", value=0.3),
]


def test_a_not_worse_gate_fails_where_the_tuned_model_is_worse_and_passes_where_it_is_not(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    worse = np.where(rng.random(200) < 0.3, 0.0, base)  # a third of its correct answers lost
    outcomes = gates.check(GATES, _compared(tmp_path / "worse", base, worse))
    assert [g["passed"] for g in outcomes] == [False, True]
    assert "worse" in outcomes[0]["why"] and outcomes[0]["why"].startswith("tuned - base -0.")
    assert gates.failure(outcomes).startswith("1 regression gate(s) failed: holdout exact_match not_worse")

    noisy = np.where(rng.random(200) < 0.04, 1 - base, base)  # a few answers flipped either way
    outcomes = gates.check(GATES, _compared(tmp_path / "same", base, noisy))
    assert all(g["passed"] for g in outcomes) and gates.failure(outcomes) is None
    assert "no detectable difference" in outcomes[0]["why"]

    low = gates.check(GATES[1:], {"suites": {"holdout": {"exact_match": 0.25}}})
    assert not low[0]["passed"] and low[0]["why"] == "0.250 < 0.3"


def test_a_gate_on_a_figure_the_run_did_not_measure_fails():
    win = gates.Gate(suite="general", metric="win_rate", rule="min", value=0.5)
    (outcome,) = gates.check([win], {"suites": {"general": {"rouge_l": 0.3}}})
    assert not outcome["passed"] and outcome["why"] == "not measured in this run"
    judged = {
        "win_rate": {
            "general": {"win_rate": 0.55, "win_rate_ci95": [0.45, 0.65], "verdict": "no detectable difference"}
        }
    }
    assert gates.check([win], judged)[0]["passed"]


def test_gate_configs_name_their_mistakes():
    with pytest.raises(ConfigError, match="suite 'ifbench' is not evaluated"):
        parse_config(EvalOptions, {"gates": [{"suite": "ifbench", "metric": "prompt_loose"}]})
    with pytest.raises(ConfigError, match="general has no metric 'exact_match'"):
        parse_config(EvalOptions, {"suites": ["general"], "gates": [{"suite": "general", "metric": "exact_match"}]})
    with pytest.raises(ConfigError, match="words is descriptive"):
        parse_config(EvalOptions, {"suites": ["general"], "gates": [{"suite": "general", "metric": "words"}]})
    with pytest.raises(ConfigError, match="a min rule needs `value`"):
        parse_config(EvalOptions, {"gates": [{"suite": "holdout", "metric": "loss", "rule": "min"}]})
    with pytest.raises(ConfigError, match="not_worse compares with the base model"):
        parse_config(EvalConfig, {"model": "m", "out_dir": "o", "gates": [{"suite": "holdout", "metric": "loss"}]})
    with pytest.raises(ConfigError, match="they need a train section"):
        parse_config(
            PipelineConfig,
            {"demo": {}, "train": None, "evaluate": {"gates": [{"suite": "holdout", "metric": "exact_match"}]}},
        )
    ok = parse_config(EvalOptions, {"suites": ["general"], "gates": [{"suite": "general", "metric": "win_rate"}]})
    a = EvalConfig(**ok.model_dump(exclude={"gates"}), model="m", out_dir="o")
    b = EvalConfig(**ok.model_dump(exclude={"gates"}), model="m", out_dir="o", gates=[GATES[1]])
    assert a.identity() == b.identity(), "changing a gate re-evaluates nothing"
