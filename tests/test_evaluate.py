"""Evaluation scorers on known cases, and the evaluation stage on the tiny student (HF backend)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructscale.config import parse_config
from instructscale.demo.pool import DemoConfig, iter_eval_rows
from instructscale.evaluate import EvalConfig, evaluate, rouge_l, token_f1
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

    summary = {"stages": {"evaluate": {"base": {k: v for k, v in m.items() if k != "config"}}}}
    report = Path(write_report(tmp_path, summary)).read_text()
    assert "## Evaluation on the held-out split" in report and "| base | all | 20 |" in report
