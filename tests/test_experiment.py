"""`instructscale experiment`: arms x seeds as Ray Tune trials, paired with the baseline, resumable."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import yaml

from helpers import kill_with_its_ray
from instructscale import stats
from instructscale.config import ConfigError, parse_config
from instructscale.demo.pool import DemoConfig, iter_eval_rows, iter_pool_rows
from instructscale.evaluate import predictions
from instructscale.experiment.config import ExperimentConfig
from instructscale.schema import POOL_SCHEMA
from instructscale.storage import write_parquet

ARMS = [
    {"name": "random", "select": {"selector": "random"}},
    {"name": "random_raw", "select": {"filters": [], "dedup": {"exact": False, "near": False}, "scorers": []}},
    {"name": "longest", "select": {"selector": "longest"}},
]
TOO_FEW = {"name": "too_few", "select": {"budget": {"budget": 2, "fraction": None}}}  # under one global batch


def preset(tmp_path, student: str, **kw) -> dict:
    """The small preset: random, random_raw and an arm that cannot train x 2 seeds on 240 demo
    rows, the tiny student."""
    return {
        "data": str(tmp_path / "data"),
        "eval_data": str(tmp_path / "eval"),
        "model": student,
        "out_dir": str(tmp_path / "exp"),
        "seeds": [0, 1],
        "arms": [*ARMS[:2], TOO_FEW],
        "max_failures": 0,
        "metric": "token_f1",  # the tiny student gets no exact match: a metric that varies
        "select": {
            "scorers": [{"kind": "model", "batch_size": 64, "max_length": 64, "max_replicas": 1}],
            "budget": {"fraction": 0.3},
        },
        "train": {
            "max_tokens": 4000,
            "micro_batch_size": 8,
            "max_length": 64,
            "checkpoint_every": 100,
            "scaling": {"num_workers": 1},
        },
        "evaluate": {"backend": "hf", "loss": False, "sampling": {"max_tokens": 8, "temperature": 0.0}},
    } | kw


def test_experiment_configs_are_checked_before_anything_runs(tmp_path):
    base = preset(tmp_path, "m", arms=ARMS)
    cfg = parse_config(ExperimentConfig, base)
    raw = cfg.select_config(cfg.arm("random_raw"), 1, "x")
    assert raw.scorers == [] and raw.weights == {} and raw.filters == [] and raw.selector.seed == 1
    assert [s.model for s in cfg.select_config(cfg.arm("longest"), 0, "x").scorers] == ["m"]
    with pytest.raises(ConfigError, match="baseline: 'random' is not an arm"):
        parse_config(ExperimentConfig, base | {"arms": ARMS[1:]})
    with pytest.raises(ConfigError, match=r"train.max_tokens \(or max_steps\) is required"):
        parse_config(ExperimentConfig, base | {"train": {"epochs": 2}})
    assert parse_config(ExperimentConfig, base | {"train": {"max_steps": 10}}).train.max_steps == 10
    with pytest.raises(ConfigError, match=r"arms.longest.select: selector: Value error, unknown selector 'long'"):
        parse_config(
            ExperimentConfig, base | {"arms": [*ARMS[:2], {"name": "longest", "select": {"selector": "long"}}]}
        )
    with pytest.raises(ConfigError, match=r"metric: holdout gives \[.*\], not 'accuracy'"):
        parse_config(ExperimentConfig, base | {"metric": "accuracy"})


def write_data(tmp_path) -> None:
    rows = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, 240))
    write_parquet(str(tmp_path / "data" / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    evals = list(iter_eval_rows(DemoConfig(out_dir="x", eval_rows=40)))
    write_parquet(str(tmp_path / "eval" / "part-0.parquet"), pa.Table.from_pylist(evals, schema=POOL_SCHEMA))


@pytest.mark.slow
def test_an_interrupted_experiment_resumes_and_pairs_every_arm_with_random(tiny_models, tmp_path):
    write_data(tmp_path)
    config = preset(tmp_path, tiny_models["student"])
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "instructscale", "experiment", str(tmp_path / "exp.yaml")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = tmp_path / "exp" / "trials"
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.time() + 600
    while not list(first.glob("*/evaluate/_manifest.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    finished = list(first.glob("*/evaluate/_manifest.json"))
    assert finished and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "no trial finished"
    kill_with_its_ray(proc)
    stamps = {p: p.stat().st_mtime for p in finished}

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert all(p.stat().st_mtime == t for p, t in stamps.items()), "a finished trial ran again"
    result = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert result["metric"] == "token_f1" and [a["arm"] for a in result["arms"]] == ["random", "random_raw"]
    assert list(result["failed_arms"]) == ["too_few"] and len(result["failed_arms"]["too_few"]) == 2  # one arm lost
    assert "fewer than one global batch" in result["failed_arms"]["too_few"][0]

    # every figure recomputed from the trials' own predictions: seeds x prompts, paired by seed and prompt
    scores = {
        a["name"]: np.array(
            [
                [
                    r["token_f1"]
                    for _, r in sorted(predictions(str(first / f"{a['name']}-seed{s}" / "evaluate"), "holdout").items())
                ]
                for s in (0, 1)
            ]
        )
        for a in ARMS[:2]
    }
    for arm in result["arms"]:
        assert arm["seeds"] == [0, 1] and arm["mean"] == pytest.approx(scores[arm["arm"]].mean())
        assert arm["ci95"] == pytest.approx(list(stats.mean_ci(scores[arm["arm"]])[1]))
        if arm["arm"] != "random":
            pair, got = stats.paired(scores["random"], scores[arm["arm"]]), arm["paired_vs_random"]
            assert got["diff"] == pytest.approx(pair["diff"]) and got["diff_ci95"] == pytest.approx(pair["diff_ci95"])
            assert got["verdict"] == pair["verdict"]
        assert abs(arm["training_tokens"] - 4000) <= 8 * 64  # the same budget, within one step's tokens
        assert arm["selection_seconds"] > 0 and arm["training_seconds"] > 0
        holdout = arm["suites"]["holdout"]  # every metric of every suite, the same statistics
        assert holdout["token_f1"] == pytest.approx(arm["mean"]) and holdout["prompts"] == 40
        assert len(holdout["exact_match_ci95"]) == 2 and "loss" not in holdout  # loss: off in the preset
        if arm["arm"] != "random":
            assert holdout["token_f1_vs_random"]["diff"] == pytest.approx(got["diff"])
    better = [a for a in result["arms"] if a.get("paired_vs_random", {}).get("verdict") == "better"]
    assert result["best"] == (max(better, key=lambda a: a["mean"])["arm"] if better else "random")
    assert (tmp_path / "exp" / "best_selection" / "_manifest.json").exists()
    assert "| random |" in (tmp_path / "exp" / "arms.md").read_text() and (tmp_path / "exp" / "arms.png").exists()
    assert "best:" in again.stdout
