"""The main job end to end on a small demo config, through the CLI entry point."""

import json
from pathlib import Path

import pytest

from instructscale.cli import main

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


SMALL = [
    "demo.rows=1000",
    "demo.eval_rows=50",
    "demo.malformed_jsonl_rows=40",
    "train.max_steps=4",
    "train.micro_batch_size=4",
    "evaluate.suites=[{kind: ifbench, max_prompts: 6, sampling: {max_tokens: 16}}, {kind: general, max_prompts: 6}]",
    "evaluate.judge={max_tokens: 4}",
]


def pipeline_args(run_dir: str, *extra: str) -> list[str]:
    return ["pipeline", str(DEMO), *(a for s in [f"run_dir={run_dir}", *SMALL, *extra] for a in ("--set", s))]


@pytest.mark.slow
def test_pipeline_demo_run_quietly_with_every_stage_and_a_rerun_reuses_them(ray_local, tmp_path, capfd, monkeypatch):
    """The main job on local disk: quiet, every stage, and a rerun that reuses them (the same pipeline on
    S3, on several nodes: tests/test_multinode.py)."""
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run = tmp_path / "local"
    args = pipeline_args(str(run))
    assert main(args) == 0
    printed = capfd.readouterr()  # file descriptors: Ray's and the engines' output included
    assert "pipeline done" in printed.out
    assert len((printed.out + printed.err).splitlines()) < 60, "quiet: a line per stage and the summary"
    assert (run / "logs" / "instructscale.log").is_file() and (run / "logs" / "ray").is_dir()
    summary = json.loads((run / "summary.json").read_text())
    ing = summary["stages"]["ingest"]
    assert ing["rows"] == 1000 + 30 and ing["quarantined"] == 10
    assert sum(ing["quarantine_reasons"].values()) == 10
    assert (run / "models" / "student" / "model.safetensors").is_file()
    assert (run / "config.yaml").is_file()
    gen = summary["stages"]["generate"]
    assert gen["inputs"] == ing["rows"] and gen["this_run"]["tokens"] > 0  # the teacher filled empty outputs
    tr = summary["stages"]["train"]
    assert tr["steps"] == 4 and (run / "train" / "model" / "model.safetensors").is_file()
    assert not (run / "train" / "plan").exists(), "the training plan is removed once trained"
    assert summary["model"] == str(run / "train" / "model")
    sel = summary["stages"]["select"]
    assert sel["selected"] + sel["not_selected"] + sum(sel["removed"].values()) == gen["rows"] + sum(
        gen["rejected"].values()
    )
    ev = summary["stages"]["evaluate"]
    assert set(ev) == {"base", "tuned"} and ev["tuned"]["overall"]["rows"] == 50
    assert set(ev["tuned"]["suites"]) == {"holdout", "ifbench", "general"}
    ifbench = ev["tuned"]["suites"]["ifbench"]
    assert ifbench["rows"] == 6 and len(ifbench["prompt_strict_ci95"]) == 2 and ifbench["instructions"] >= 6
    paired = ev["tuned"]["vs_base"]["holdout"]["exact_match"]
    assert paired["verdict"] in ("better", "worse", "no detectable difference") and len(paired["diff_ci95"]) == 2
    assert set(ev["tuned"]["win_rate"]) == {"ifbench", "general"}  # the judged suites, judged by the teacher
    assert (run / "evaluate" / "comparison.json").is_file() and (run / "eval-ifbench.png").is_file()
    assert set(summary["seconds"]) == {"models", "demo", "ingest", "generate", "select", "train", "evaluate"}
    assert summary["seconds"]["train"] >= tr["seconds"] > 0
    report = (run / "report.md").read_text()
    assert f"| generate | {summary['seconds']['generate']:.1f} |" in report
    for section in ("## Ingest", "## Selection", "## Training", "## Evaluation", "### ifbench"):
        assert section in report
    assert (run / "training.png").is_file() and (run / "scores.png").is_file()
    assert summary["status"] == "succeeded" and summary["gates"] == []
    # a rerun reuses every finished stage; gates are checked on the results, so adding them re-runs nothing
    gate = "evaluate.gates=[{suite: holdout, metric: exact_match, rule: min, value: 1.01}, {suite: general, metric: rouge_l}]"
    assert main([*args, "--set", gate]) == 1
    again = json.loads((run / "summary.json").read_text())
    assert again["stages"]["ingest"] == ing and all(s < 5 for s in again["seconds"].values()), again["seconds"]
    assert again["status"] == "failed" and again["gates"][0]["why"].endswith("< 1.01")
    assert "regression gate(s) failed: holdout exact_match min 1.01" in capfd.readouterr().err
    assert main([*args, "--set", gate, "--allow-regression"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["local"], "nothing written to the working directory"
