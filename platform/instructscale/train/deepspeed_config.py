"""The DeepSpeed config a training run uses: generated from typed settings, optionally merged
with a user's JSON/YAML file (which may not change the batch geometry the schedule relies on)."""

from __future__ import annotations

import json

import yaml

from instructscale import storage
from instructscale.config import ConfigError
from instructscale.train.config import TrainOptions

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _scheduler(opts: TrainOptions, total_steps: int) -> dict | None:
    o = opts.optim
    if o.schedule == "constant" and o.warmup_steps == 0:
        return None  # the optimizer's lr from the first step
    if o.schedule == "constant":
        return {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": o.lr,
                "warmup_num_steps": max(o.warmup_steps, 1),
                "warmup_type": "linear",
            },
        }
    if o.schedule == "linear":
        return {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": o.lr,
                "warmup_num_steps": max(o.warmup_steps, 1),
                "total_num_steps": max(total_steps, o.warmup_steps + 1),
                "warmup_type": "linear",
            },
        }
    return {
        "type": "WarmupCosineLR",
        "params": {
            "total_num_steps": max(total_steps, o.warmup_steps + 1),
            "warmup_num_steps": max(o.warmup_steps, 1),
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.0,
        },
    }


def _adam_params(opts: TrainOptions) -> dict:
    """AdamW's settings. Without optimizer offload it is PyTorch's own (``torch_adam``): DeepSpeed's
    fused CPU Adam would be compiled on a machine's first run, and for LoRA's few weights it saves
    nothing; with offload DeepSpeed's CPU Adam is the point of offloading."""
    params = {"lr": opts.optim.lr, "weight_decay": opts.optim.weight_decay}
    return params if opts.deepspeed.offload_optimizer else {**params, "torch_adam": True}


def build_deepspeed_config(opts: TrainOptions, total_steps: int) -> dict:
    ds = opts.deepspeed
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_batch_size": opts.global_batch,
        "train_micro_batch_size_per_gpu": opts.micro_batch_size,
        "gradient_accumulation_steps": opts.grad_accum,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": _adam_params(opts)},
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    scheduler = _scheduler(opts, total_steps)
    if scheduler:
        config["scheduler"] = scheduler
    if ds.config_file:
        path = ds.config_file
        if not storage.is_file(path):
            raise ConfigError(f"deepspeed.config_file: {path} not found")
        text = storage.read_text(path)
        user = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
        for key in BATCH_KEYS:
            if key in user and user[key] not in ("auto", config[key]):
                raise ConfigError(
                    f"deepspeed.config_file: {key}={user[key]} conflicts with the run's "
                    f"batch geometry ({config[key]}); set micro_batch_size/grad_accum instead"
                )
            user.pop(key, None)
        config.update(user)
    return config
