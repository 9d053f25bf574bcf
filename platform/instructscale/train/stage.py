"""The training stage: Ray Train's TorchTrainer running one DeepSpeed engine per worker.

The driver reads only ids and difficulties and builds the curriculum schedule; each worker then
reads and tokenizes just the rows its slice of the schedule needs (a Parquet scan filtered by id),
so no process holds the whole training set.
Checkpoints (DeepSpeed state plus Hugging Face exports) go through Ray Train, and a worker group
that loses a worker restarts from the last one (FailureConfig).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from instructscale.config import ConfigError
from instructscale.io import existing_path, model_ref, read_manifest, write_json_atomic
from instructscale.train.config import TrainConfig
from instructscale.train.curriculum import build_schedule
from instructscale.train.deepspeed_config import build_deepspeed_config
from instructscale.train.data import difficulty_of, read_training_columns
from instructscale.train.worker import METRICS, train_loop

log = logging.getLogger(__name__)


def plan(cfg: TrainConfig) -> tuple[list[str], list[float], list[list[int]]]:
    """Row ids, their difficulty (0 where the strategy needs none), and the global schedule."""
    key = cfg.curriculum.difficulty_key
    table = read_training_columns(cfg.data, ["id", "metadata", key])
    ids = table["id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise ConfigError(f"data: {cfg.data} has duplicate row ids; training needs unique ids")
    try:
        if cfg.curriculum.strategy == "random":
            difficulty = [0.0] * len(ids)
        else:
            difficulty = [difficulty_of(r, key) for r in table.to_pylist()]
        schedule = build_schedule(difficulty, cfg.curriculum, global_batch=cfg.global_batch, epochs=cfg.epochs,
                                  seed=cfg.seed, max_steps=cfg.max_steps)
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    return ids, difficulty, schedule


def _history(path: Path) -> list[dict]:
    """Logged metrics per step; a step logged again after a restart keeps its latest record."""
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) and export the model to ``out_dir/model``; returns the manifest."""
    out = Path(cfg.out_dir).resolve()
    identity = cfg.model_dump(mode="json", exclude={"overwrite"})
    done = read_manifest(out)
    if done and done["config"] == identity and not cfg.overwrite:
        log.info("train: %s already complete, skipping", out)
        return done
    cfg = cfg.model_copy(update={"data": existing_path(cfg.data, "data"), "model": model_ref(cfg.model),
                                 "out_dir": str(out),
                                 "eval_data": cfg.eval_data and existing_path(cfg.eval_data, "eval_data")})
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    ids, difficulty, schedule = plan(cfg)
    build_deepspeed_config(cfg, len(schedule))  # a bad DeepSpeed file fails here, not in the workers
    log.info("train: %d rows, %d steps of %d rows (%s curriculum), %d workers", len(ids), len(schedule),
             cfg.global_batch, cfg.curriculum.strategy, cfg.scaling.num_workers)

    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "ids": ids, "schedule": schedule,
                           "difficulty": difficulty},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                     resources_per_worker={"CPU": s.cpus_per_worker,
                                                           **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}),
        run_config=RunConfig(
            name="ray_train", storage_path=str(out),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    t0 = time.time()
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as ckpt:
        hf = Path(ckpt) / "hf"
        for sub in ("model", "adapter"):
            if (hf / sub).exists():
                tmp = out / f".{sub}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(hf / sub, tmp)
                shutil.rmtree(out / sub, ignore_errors=True)
                os.replace(tmp, out / sub)
    history = _history(out / METRICS)
    manifest = {
        "config": identity,
        "rows": len(ids),
        "steps": len(schedule),
        "model": str(out / "model"),
        "adapter": str(out / "adapter") if (out / "adapter").exists() else None,
        "checkpoint": result.checkpoint.path,
        "final_loss": history[-1]["loss"],
        "eval_loss": history[-1].get("eval_loss"),
        "seconds": round(time.time() - t0, 2),
        "history": history,
    }
    write_json_atomic(out / "_manifest.json", manifest)
    return manifest
