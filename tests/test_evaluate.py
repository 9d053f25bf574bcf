"""Evaluation scorers on known cases, the pairwise judge's parser and order swap, and the evaluation
stage on the tiny student (HF backend)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructscale.answers import rouge_l, token_f1
from instructscale.cli import main
from instructscale.config import parse_config
from instructscale.demo.pool import DemoConfig, iter_eval_rows
from instructscale.evaluate import EvalConfig, evaluate
from instructscale.judge import pair_prompts, parse_verdict, second_model_score, win_rate
from instructscale.report import write_report
from instructscale.schema import POOL_SCHEMA
from instructscale.storage import write_parquet


def test_token_f1_and_rouge_l_known_values():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("cat", "dog") == 0.0
    # 2 common of 3 predicted and 4 reference tokens: P=2/3, R=1/2 -> F1 = 4/7
    assert token_f1("the cat ran", "the cat sat down") == pytest.approx(4 / 7)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # LCS("a b c d e", "a c e") = 3: P=3/5, R=1 -> F1 = 0.75
    assert rouge_l("a b c d e", "a c e") == pytest.approx(0.75)
    assert rouge_l("e d c b a", "a b c d e") == pytest.approx(0.2)  # LCS 1
    assert rouge_l("Sorted 1, 2, 3.", "sorted 1, 2, 3") == 1.0  # case and final period normalised


def test_evaluate_stage_scores_per_task(ray_local, tiny_models, tmp_path):
    rows = list(iter_eval_rows(DemoConfig(out_dir="x", eval_rows=24)))
    write_parquet(str(tmp_path / "eval" / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    cfg = parse_config(
        EvalConfig,
        {
            "model": tiny_models["student"],
            "data": str(tmp_path / "eval"),
            "out_dir": str(tmp_path / "out"),
            "backend": {"kind": "hf"},
            "max_rows": 20,
            "sampling": {"max_tokens": 8},
        },
    )
    m = evaluate(cfg)
    assert m["overall"]["rows"] == 20 and sum(g["rows"] for g in m["by_group"].values()) == 20
    assert set(m["by_group"]) <= {"arithmetic", "string", "sorting", "units"}
    preds = pq.read_table(tmp_path / "out" / "predictions").to_pylist()
    for p in preds:  # every figure recomputes from the stored predictions
        assert p["token_f1"] == pytest.approx(token_f1(p["prediction"], p["reference"]))
        assert p["loss"] is not None and p["loss"] > 0
    assert m["overall"]["loss"] == pytest.approx(sum(p["loss"] for p in preds) / 20)
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["overall"] == m["overall"]
    # the command with a gate the model misses: the finished evaluation is reused, the command fails
    sets = [f"{k}={v}" for k, v in cfg.model_dump(include={"model", "data", "out_dir", "max_rows"}).items()]
    gate = "gates=[{suite: holdout, metric: exact_match, rule: min, value: 1.01}]"
    argv = [
        "evaluate",
        *(a for s in [*sets, "backend={kind: hf}", "sampling={max_tokens: 8}", gate] for a in ("--set", s)),
    ]
    assert main(argv) == 1
    assert main([*argv, "--allow-regression"]) == 0

    holdout = m["suites"]["holdout"]
    assert holdout["exact_match_ci95"][0] <= holdout["exact_match"] <= holdout["exact_match_ci95"][1]
    summary = {"stages": {"evaluate": {"base": {k: v for k, v in m.items() if k != "config"}}}}
    report = Path(write_report(tmp_path, summary)).read_text()
    assert "## Evaluation" in report and "### holdout" in report and "| exact_match | " in report
    assert (tmp_path / "eval-holdout.png").stat().st_size > 1000


def test_the_pairwise_judge_parses_replies_and_cancels_position_bias():
    assert [parse_verdict(t) for t in ("A", "b.", "Tie", "**B** is better", "Answer A", "neither", None)] == [
        "A",
        "B",
        "tie",
        "B",
        "A",
        None,
        None,
    ]
    in_order, swapped = pair_prompts("Say hi.", "hello", "hi there", 1000)
    assert "Answer A:\nhello\n\nAnswer B:\nhi there" in in_order[0]["content"]
    assert "Answer A:\nhi there\n\nAnswer B:\nhello" in swapped[0]["content"]
    # the second model wins in order (B) and swapped (A): 1; a judge that always says "A": 0.5 (a wash)
    assert second_model_score("B", "A") == 1.0 and second_model_score("A", "A") == 0.5
    assert second_model_score("tie", None) == 0.5 and second_model_score(None, None) is None
    always_first = win_rate([second_model_score("A", "A")] * 20)
    assert always_first["win_rate"] == 0.5 and always_first["verdict"] == "no detectable difference"
    wins = win_rate([1.0] * 18 + [0.5, None])
    assert wins["verdict"] == "better" and wins["judged"] == 19 and wins["unparsable"] == 1
