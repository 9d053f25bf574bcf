"""Training stage for real: Ray Train workers running DeepSpeed ZeRO-2 on the tiny student (CPU, gloo)."""

import json
import os
import signal
import struct
from pathlib import Path

import pyarrow as pa
import pytest

from helpers import check_in_vllm
from instructscale.cli import main
from instructscale.config import ConfigError, parse_config
from instructscale.demo.pool import DemoConfig, NoiseConfig, iter_pool_rows
from instructscale.models.check import check_transformers
from instructscale.plugins import PluginConfig, TrainCallback, register
from instructscale.schema import POOL_SCHEMA
from instructscale.storage import write_parquet
from instructscale.tokens import IGNORE, tokenize
from instructscale.train.config import TrainConfig
from instructscale.train.stage import train


@register("kill_worker_once")
class KillWorkerOnce(TrainCallback):
    """A resume drill (test only): SIGKILL one worker once, at the start of a given step."""

    class Config(PluginConfig):
        kind: str = "kill_worker_once"
        step: int
        rank: int = 1

    def on_step_start(self, step: int, rank: int, out_dir: str) -> None:
        marker = Path(out_dir) / ".killed_once"
        if step == self.config.step and rank == self.config.rank and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_data(path, n: int) -> list[dict]:
    rows = list(iter_pool_rows(DemoConfig(out_dir="x", noise={k: 0 for k in NoiseConfig.model_fields}), 0, n))
    write_parquet(str(path / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return rows


def cfg_for(tmp_path, student, **kw) -> TrainConfig:
    base = {
        "data": str(tmp_path / "data"),
        "model": student,
        "out_dir": str(tmp_path / "out"),
        "micro_batch_size": 4,
        "epochs": 4,
        "max_length": 64,
        "optim": {"lr": 3e-3},
        "scaling": {"num_workers": 2},
        "deepspeed": {"zero_stage": 2},
    }
    return parse_config(TrainConfig, base | kw)


def tensorboard_steps(folder: Path) -> dict[str, list[int]]:
    """Tag -> steps of the scalars in TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    steps: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def first_last_loss(manifest: dict) -> tuple[float, float]:
    hist = sorted(manifest["history"], key=lambda r: r["step"])
    return sum(r["loss"] for r in hist[:2]) / 2, sum(r["loss"] for r in hist[-2:]) / 2


def test_loss_is_masked_to_the_response(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    ex = tokenize({"id": "a", "instruction": "Add 2 and 3.", "input": "", "output": "5"}, tok, 64)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Add 2 and 3."}], add_generation_prompt=True, tokenize=False
    )
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:] and len(ex.labels) > n_prompt
    assert tok.decode(ex.input_ids[n_prompt:]).startswith("5")


def test_lora_zero2_two_workers_loss_drops_and_exports_load(ray_local, tiny_models, tmp_path):
    make_data(tmp_path / "data", 16)
    make_data(tmp_path / "eval", 12)
    cfg = cfg_for(
        tmp_path,
        tiny_models["student"],
        lora={"r": 8, "alpha": 16, "merge": True, "target_modules": ALL_LINEAR},
        optim={"lr": 5e-3},
        epochs=8,
        eval_data=str(tmp_path / "eval"),
        eval_every=8,
        curriculum="easy_to_hard",
        checkpoint_every=100,
        tracking={"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "mlflow_experiment": "lora-test"},
    )
    m = train(cfg)
    assert m["steps"] == 16 and m["rows"] == 16  # 16 rows / (4 x 2 workers) x 8 epochs
    assert 0 < m["startup_s"] < m["seconds"]
    assert [r["step"] for r in m["history"]] == list(range(1, 17))
    eff = m["efficiency"]  # each micro-batch packs into one sequence: no padding
    assert 0 < eff["real_tokens_per_s"] == eff["padded_tokens_per_s"] and eff["padding_pct"] == 0
    assert eff["peak_tflops"] > 0 and 0 < eff["mfu_pct"] < 100
    first, last = first_last_loss(m)
    assert last < first - 0.4, (first, last)
    # easy_to_hard: the easier global batch comes first in every epoch
    per_epoch = [r["difficulty_mean"] for r in m["history"][:2]]
    assert per_epoch[0] <= per_epoch[1] and per_epoch * 8 == [r["difficulty_mean"] for r in m["history"]]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in m["history"])
    evals = [(r["step"], r["eval_loss"]) for r in m["history"] if "eval_loss" in r]
    assert [s for s, _ in evals] == [8, 16] and m["eval_loss"] == evals[-1][1] and 0 < evals[-1][1] < 20

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["student"]), m["adapter"])
    assert sum(p.numel() for n, p in adapter.named_parameters() if "lora_" in n) > 0
    assert check_transformers(m["model"])["tokens"] >= 1
    assert check_in_vllm(m["model"])["tokens"] >= 1
    assert train(cfg) == m  # a finished run with the same config is not trained again

    steps = tensorboard_steps(tmp_path / "out" / "tensorboard")
    assert steps["train/loss"] == list(range(1, 17)) and steps["train/eval_loss"] == [8, 16]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["lora-test"], output_format="list")
    client = mlflow.tracking.MlflowClient()
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 17))
    assert run.data.params["lora.r"] == "8"


@pytest.mark.slow
def test_full_finetune_resumes_after_a_lost_worker(ray_local, tiny_models, tmp_path):
    make_data(tmp_path / "data", 32)
    cfg = cfg_for(
        tmp_path,
        tiny_models["student"],
        lora=None,
        checkpoint_every=3,
        max_failures=1,
        plugins=[__file__],
        callbacks=[{"kind": "kill_worker_once", "step": 8}],
    )
    m = train(cfg)
    assert (tmp_path / "out" / ".killed_once").exists()
    steps = [r["step"] for r in m["history"]]
    resumed = [r for r in m["history"] if r["resumed_from"]]
    # restarted from a checkpoint taken before the kill (Ray Train registers a checkpoint when its
    # controller polls the report, so the newest one, step 6, may not have been registered yet)
    assert resumed and len({r["resumed_from"] for r in resumed}) == 1
    assert resumed[0]["resumed_from"] in (3, 6) and resumed[0]["step"] == resumed[0]["resumed_from"] + 1
    assert steps[-1] == 16 and sorted(set(steps)) == list(range(1, 17))
    first, last = first_last_loss(m)
    assert last < 0.8 * first, (first, last)
    assert m["adapter"] is None and check_transformers(m["model"])["tokens"] >= 1


def test_bad_training_configs_are_named(tmp_path, tiny_models, capsys):
    with pytest.raises(ConfigError, match="precision fp16 needs GPUs"):
        cfg_for(tmp_path, "m", deepspeed={"precision": "fp16"})
    with pytest.raises(ConfigError, match="offload_params needs zero_stage 3"):
        cfg_for(tmp_path, "m", deepspeed={"offload_params": True})
    with pytest.raises(ConfigError, match="data: .* does not exist"):
        train(cfg_for(tmp_path, tiny_models["student"]))
    make_data(tmp_path / "data", 4)
    with pytest.raises(ConfigError, match="model: './nope' is not a model directory"):
        train(cfg_for(tmp_path, "./nope"))
    with pytest.raises(ConfigError, match="training set has 4 rows, fewer than one global batch \\(8\\)"):
        train(cfg_for(tmp_path, tiny_models["student"]))
    ds_file = tmp_path / "ds.json"
    ds_file.write_text(json.dumps({"train_batch_size": 64}))
    args = [
        "train",
        "--set",
        f"data={tmp_path / 'data'}",
        "--set",
        f"model={tiny_models['student']}",
        "--set",
        f"out_dir={tmp_path / 'out'}",
        "--set",
        "micro_batch_size=1",
        "--set",
        f"deepspeed.config_file={ds_file}",
    ]
    assert main(args) == 2
    assert "train_batch_size=64 conflicts with the run's batch geometry (2)" in capsys.readouterr().err


def test_adamw_is_pytorchs_unless_the_optimizer_is_offloaded():
    """No DeepSpeed op to compile for a plain run; ZeRO-Offload keeps DeepSpeed's CPU Adam."""
    from instructscale.train.config import TrainOptions
    from instructscale.train.deepspeed_config import build_deepspeed_config

    plain = build_deepspeed_config(TrainOptions(), 10)["optimizer"]
    offloaded = build_deepspeed_config(TrainOptions(deepspeed={"offload_optimizer": True}), 10)["optimizer"]
    assert plain["params"]["torch_adam"] is True and "torch_adam" not in offloaded["params"]
