"""The training stage: Ray Train's TorchTrainer running one DeepSpeed engine per worker.

Ray tasks write the curriculum's schedule out as sorted runs of rows per worker (train/plan.py);
each worker merges and tokenizes its runs as it trains, so neither the driver nor a worker holds
the training set. Checkpoints (DeepSpeed state plus Hugging Face exports)
go through Ray Train to ``out_dir`` (a local path, a shared mount or an object store), and a worker
group that loses a worker restarts from the last one (FailureConfig).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from instructscale import storage
from instructscale.config import ConfigError
from instructscale.lifecycle import MANIFEST, STARTED, StageRun, require_dataset
from instructscale.markdown import pyplot, save_figure
from instructscale.plugins import register
from instructscale.process import Shipped
from instructscale.progress import Progress
from instructscale.stage import Pipe, Stage
from instructscale.train.config import TrainConfig, TrainOptions
from instructscale.train.deepspeed_config import build_deepspeed_config
from instructscale.train.metrics import METRICS, efficiency, efficiency_text, read_history
from instructscale.train.plan import PLAN, build_plan

if TYPE_CHECKING:
    from ray.train import RunConfig

log = logging.getLogger(__name__)


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _check_resume(run: StageRun, cfg: TrainConfig) -> None:
    """Ray Train resumes from the checkpoints under out_dir: refuse when they come from other settings
    (model, data, LoRA, optimizer, lengths, curriculum, batch), unless ``restart`` starts over."""
    previous = storage.read_json_if_exists(run.uri(STARTED)) or storage.read_json_if_exists(run.uri(MANIFEST))
    checkpoints = storage.glob(run.uri("ray_train", "checkpoint_*", "state.json"))
    if not previous or previous.get("config") == run.identity or not checkpoints:
        return
    if not cfg.restart:
        changed = ", ".join(_differences(previous.get("config"), run.identity))
        raise ConfigError(
            f"{run.out} holds checkpoints of a run with other settings ({changed}); rerun with "
            "--restart (a pipeline: --set train.restart=true) to discard them and start over, or use another out_dir"
        )
    log.info("train: --restart: discarding the checkpoints in %s", run.uri("ray_train"))
    for name in ("ray_train", METRICS, "tensorboard", PLAN):
        storage.remove(run.uri(name))


def _run_config(cfg: TrainConfig) -> RunConfig:
    """Ray Train keeps the run (checkpoints included) under ``out_dir`` on its own storage."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    fs, path = storage.resolve(cfg.out_dir)
    return RunConfig(
        name="ray_train",
        storage_path=path,
        storage_filesystem=None if storage.is_local(cfg.out_dir) else fs,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
    )


def _export(checkpoint, out: str) -> None:
    """Copy the checkpoint's Hugging Face exports to ``out/model`` and ``out/adapter``."""
    for sub in ("model", "adapter"):
        src = f"{checkpoint.path.rstrip('/')}/hf/{sub}"
        if checkpoint.filesystem.get_file_info(src).type == pafs.FileType.NotFound:
            continue
        dst = storage.join(out, sub)
        storage.remove(dst)
        storage.copy_tree(src, dst, src_fs=checkpoint.filesystem)


@contextmanager
def _progress(metrics: str, steps: int) -> Iterator[Progress]:
    """The stage's progress line, fed from the metrics that rank 0 flushes while training runs."""
    progress = Progress("train", total=steps, unit="steps")
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(5.0):
            history = read_history(metrics)
            if history and history[-1]["step"] > progress.done:
                progress.update(history[-1]["step"] - progress.done, f"loss {history[-1]['loss']:.4f}")

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        yield progress
    finally:
        stop.set()
        watcher.join()


@register("train")
class Train(Stage[TrainConfig]):
    """Ray Train + DeepSpeed on the streamed plan; exports the model (and adapter) to ``out_dir``."""

    Config = TrainConfig
    Options = TrainOptions
    summary = "fine-tune a student with Ray Train + DeepSpeed (full or LoRA) and a curriculum"
    after = "select"
    flags = {"restart": "discard checkpoints of a run with other settings"}
    hide = ("config", "history")

    def check(self) -> TrainConfig:
        cfg = self.cfg
        return cfg.model_copy(
            update={
                "data": require_dataset(cfg.data, "data"),
                "model": storage.model_ref(cfg.model),
                "out_dir": storage.normalize(cfg.out_dir),
                "eval_data": cfg.eval_data and require_dataset(cfg.eval_data, "eval_data"),
            }
        )

    def before_start(self, run: StageRun) -> None:
        _check_resume(run, self.cfg)

    def run(self, run: StageRun) -> dict:
        cfg = self.cfg
        try:
            plan = build_plan(cfg)
        except ValueError as err:
            raise ConfigError(f"data: {err}") from None
        steps = plan["steps"]
        build_deepspeed_config(cfg, steps)  # a bad DeepSpeed file fails here, not in the workers
        log.info(
            "train: %d rows, %d steps of %d rows (%s curriculum), %d workers",
            *(plan["rows"], steps, cfg.global_batch, cfg.curriculum.kind, cfg.scaling.num_workers),
        )
        t0 = time.time()
        result, history = _fit(cfg, run, steps)
        _export(result.checkpoint, run.out)
        storage.remove(run.uri(PLAN))  # a copy of the data per epoch: not kept once trained
        return _summary(cfg, run, plan, result, history, t0)

    @classmethod
    def wiring(cls, pipe: Pipe) -> dict:
        return {"data": pipe.pool, "model": pipe.models["student"], "eval_data": pipe.eval_data}

    @classmethod
    def hand_on(cls, manifest: dict, pipe: Pipe) -> None:
        pipe.model = manifest["model"]

    @classmethod
    def in_pipeline(cls, options: TrainOptions, pipe: Pipe) -> dict:
        entry = super().in_pipeline(options, pipe)
        return {k: v for k, v in entry.items() if k != "history"}

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        return [
            (
                f"train      {entry['steps']:,} steps on {entry['rows']:,} rows, final loss {entry['final_loss']:.4f}, "
                f"{efficiency_text(entry.get('efficiency'))}{entry['seconds']:.0f} s"
            )
        ]

    @classmethod
    def report(cls, entry: dict, run: str) -> list[str]:
        parts = [
            "## Training",
            "",
            f"{entry['steps']} steps on {entry['rows']:,} rows, final train loss "
            f"{entry['final_loss']:.4f}, held-out loss {entry.get('eval_loss') or float('nan'):.4f}, "
            f"{efficiency_text(entry.get('efficiency'))}{entry['seconds']:.0f} s. Model: `{entry['model']}`.",
            "",
        ]
        if eff := entry.get("efficiency"):
            parts += [f"MFU is against a matmul peak {eff['peak_source']}.", ""]
        plot = _training_plot(storage.join(cls.out_dir(run), METRICS), storage.join(run, "training.png"))
        return parts + ([f"![training curves]({plot})", ""] if plot else [])


def _training_plot(metrics: str, uri: str) -> str | None:
    """Train and held-out loss by step; the plot's name (None without metrics)."""
    history = read_history(metrics)
    if not history:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train loss")
    evals = [r for r in history if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], marker="o", label="held-out loss")
    ax.set_xlabel("step")
    ax.legend()
    return save_figure(fig, uri)


def _fit(cfg: TrainConfig, run: StageRun, steps: int):
    """Ray Train's run of the workers; returns its result and the metric history."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from instructscale.train.worker import train_loop  # torch: imported where training runs

    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"shipped": Shipped.of(cfg), "steps": steps},
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker=s.worker_resources(),
        ),
        run_config=_run_config(cfg),
    )
    with _progress(run.uri(METRICS), steps) as progress:
        result = trainer.fit()
        if result.error:
            raise result.error
        history = read_history(run.uri(METRICS))
        progress.done = history[-1]["step"]
        progress.close(f"loss {history[-1]['loss']:.4f}")
    return result, history


def _summary(cfg: TrainConfig, run: StageRun, plan: dict, result, history: list[dict], t0: float) -> dict:
    first, last = history[0], history[-1]
    return {
        "rows": plan["rows"],
        "steps": plan["steps"],
        "tokens": plan.get("tokens"),
        **({"source_share": plan["source_share"]} if "source_share" in plan else {}),
        "model": run.uri("model"),
        "adapter": run.uri("adapter") if storage.exists(run.uri("adapter")) else None,
        "checkpoint": result.checkpoint.path,
        "final_loss": last["loss"],
        "skipped_nonfinite_steps": last.get("skipped_nonfinite_steps", 0),
        "rows_without_response_tokens": last.get("rows_without_response_tokens", 0),
        "eval_loss": last.get("eval_loss"),
        "efficiency": efficiency(history),
        "seconds": round(time.time() - t0, 2),
        # from fit() to the end of step 1, minus the step itself: workers, data, model, engine
        "startup_s": round(first["time"] - first["seconds"] - t0, 2)
        if "time" in first and not first["resumed_from"]
        else None,
        "history": history,
    }


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) and export the model to ``out_dir/model``; returns the manifest."""
    return Train(cfg).execute()
