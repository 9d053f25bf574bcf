"""Ray Tune search on the tiny student: Optuna proposes, ASHA stops laggards, results and restore."""

import pandas as pd
import pyarrow as pa
import pytest

from instructscale.config import ConfigError, parse_config
from instructscale.demo.pool import DemoConfig, NoiseConfig, iter_eval_rows, iter_pool_rows
from instructscale.models.check import check_transformers
from instructscale.schema import POOL_SCHEMA
from instructscale.storage import write_parquet
from instructscale.tune.config import TuneConfig
from instructscale.tune.search import run_search


def cfg_for(tmp_path, student, **kw) -> TuneConfig:
    base = {
        "data": str(tmp_path / "data"),
        "eval_data": str(tmp_path / "eval"),
        "model": student,
        "out_dir": str(tmp_path / "tune"),
        "num_samples": 4,
        "max_concurrent": 2,
        "grace_period": 4,
        "space": {
            "train.optim.lr": {"choice": [1e-6, 1e-2]},
            "train.lora.r": {"choice": [4, 8]},
            "train.curriculum.kind": {"choice": ["random", "easy_to_hard"]},
        },
        "train": {
            "max_steps": 12,
            "eval_every": 4,
            "micro_batch_size": 4,
            "max_length": 64,
            "checkpoint_every": 100,
            "scaling": {"num_workers": 1},
            "curriculum": {"kind": "random", "difficulty_key": "difficulty"},
        },
    }
    return parse_config(TuneConfig, base | kw)


def test_search_space_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="space.train.optim.lrr: optim.lrr: Extra inputs are not permitted"):
        cfg_for(tmp_path, "m", space={"train.optim.lrr": {"choice": [1]}})
    with pytest.raises(ConfigError, match="space.optim.lr: keys start with train. or select."):
        cfg_for(tmp_path, "m", space={"optim.lr": {"uniform": [0, 1]}})
    with pytest.raises(ConfigError, match="exactly one of choice/uniform/loguniform/randint"):
        cfg_for(tmp_path, "m", space={"train.optim.lr": {"uniform": [0, 1], "choice": [1]}})
    with pytest.raises(ConfigError, match="train.eval_every is required"):
        cfg_for(tmp_path, "m", train={"max_steps": 4})


@pytest.mark.slow
def test_search_runs_stops_early_exports_best_and_restores(ray_local, tiny_models, tmp_path):
    rows = list(iter_pool_rows(DemoConfig(out_dir="x", noise={k: 0 for k in NoiseConfig.model_fields}), 0, 48))
    write_parquet(str(tmp_path / "data" / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    evals = list(iter_eval_rows(DemoConfig(out_dir="x", eval_rows=16)))
    write_parquet(str(tmp_path / "eval" / "part-0.parquet"), pa.Table.from_pylist(evals, schema=POOL_SCHEMA))
    cfg = cfg_for(tmp_path, tiny_models["student"])
    summary = run_search(cfg)

    table = pd.read_csv(tmp_path / "tune" / "trials.csv")
    assert len(table) == 4 and summary["trials"] == 4
    assert {
        "config/train.optim.lr",
        "config/train.lora.r",
        "config/train.curriculum.kind",
        "eval_loss",
        "steps",
        "status",
        "time_s",
    } <= set(table.columns)
    assert (table["status"] == "stopped_early").sum() >= 1, table  # ASHA cut at least one trial
    assert table.loc[table["status"] == "stopped_early", "steps"].max() < 12
    finished = table[table["status"] == "completed"]
    assert (finished["steps"] == 12).all()
    assert summary["best_eval_loss"] == pytest.approx(finished["eval_loss"].min())
    assert check_transformers(summary["best_model"])["tokens"] >= 1
    assert (tmp_path / "tune" / "trials.png").stat().st_size > 1000
    assert pd.read_parquet(tmp_path / "tune" / "trials.parquet").shape[0] == 4

    again = run_search(cfg)  # Tuner.restore of the finished search: same trials, nothing rerun
    assert again["trials"] == 4 and again["best_trial"] == summary["best_trial"]
    assert again["seconds"] < summary["seconds"] / 2
