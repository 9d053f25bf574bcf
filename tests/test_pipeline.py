"""The main job end to end on a small demo config, through the CLI entry point."""

import json

import pytest

from instructscale.cli import main


@pytest.mark.slow
def test_pipeline_demo_run(ray_local, tmp_path, capfd):
    run = tmp_path / "run"
    args = [
        "pipeline",
        "configs/demo.yaml",
        "--set",
        f"run_dir={run}",
        "--set",
        "demo.rows=2000",
        "--set",
        "demo.eval_rows=50",
        "--set",
        "demo.malformed_jsonl_rows=40",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.micro_batch_size=4",
    ]
    assert main(args) == 0
    printed = capfd.readouterr()  # file descriptors: Ray's and the engines' output included
    assert "pipeline done" in printed.out
    assert len((printed.out + printed.err).splitlines()) < 60, "quiet: a line per stage and the summary"
    assert (run / "logs" / "instructscale.log").is_file() and (run / "logs" / "ray").is_dir()
    summary = json.loads((run / "summary.json").read_text())
    ing = summary["stages"]["ingest"]
    assert ing["rows"] == 2000 + 30 and ing["quarantined"] == 10
    assert sum(ing["quarantine_reasons"].values()) == 10
    assert (run / "models" / "student" / "model.safetensors").is_file()
    assert (run / "config.yaml").is_file()
    gen = summary["stages"]["generate"]
    assert gen["inputs"] == ing["rows"] and gen["this_run"]["tokens"] > 0  # the teacher filled empty outputs
    tr = summary["stages"]["train"]
    assert tr["steps"] == 4 and (run / "train" / "model" / "model.safetensors").is_file()
    assert summary["model"] == str(run / "train" / "model")
    sel = summary["stages"]["select"]
    assert sel["selected"] + sel["not_selected"] + sum(sel["removed"].values()) == gen["rows"] + sum(
        gen["rejected"].values()
    )
    ev = summary["stages"]["evaluate"]
    assert set(ev) == {"base", "tuned"} and ev["tuned"]["overall"]["rows"] == 50
    assert set(summary["seconds"]) == {"models", "demo", "ingest", "generate", "select", "train", "evaluate"}
    assert summary["seconds"]["train"] >= tr["seconds"] > 0
    report = (run / "report.md").read_text()
    assert f"| generate | {summary['seconds']['generate']:.1f} |" in report
    for section in ("## Ingest", "## Selection", "## Training", "## Evaluation on the held-out split"):
        assert section in report
    assert (run / "training.png").is_file() and (run / "scores.png").is_file()
    assert main(args) == 0  # second run reuses every finished stage
    assert json.loads((run / "summary.json").read_text())["stages"]["ingest"] == ing
