"""The per-worker training loop that Ray Train runs: a DeepSpeed engine over a transformers model."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from instructscale import storage
from instructscale.hardware import peak_tflops
from instructscale.losses import mean_response_loss
from instructscale.plugins import TrainCallback
from instructscale.tokens import IGNORE, Example, collate, group_by_length, packed_batch, tokenize
from instructscale.train.config import TrainConfig
from instructscale.train.data import TEXT_COLUMNS, read_training_columns
from instructscale.train.deepspeed_config import build_deepspeed_config
from instructscale.train.flops import flops_per_token
from instructscale.train.metrics import METRICS, MetricsLog
from instructscale.train.plan import use_system_allocator, worker_steps
from instructscale.train.tracking import Tracker

STATE = "state.json"
PRINT_EVERY_S = 10.0


def _dtype(cfg: TrainConfig) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision, torch.float32)


def _build_model(cfg: TrainConfig, path: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(cfg))
    if cfg.lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _eval_examples(cfg: TrainConfig, tokenizer, rank: int, world: int) -> list[Example]:
    """This worker's share of the held-out rows (the first ``eval_rows`` usable ones)."""
    if not cfg.eval_data or not cfg.eval_every:
        return []
    rows = read_training_columns(cfg.eval_data, TEXT_COLUMNS).slice(0, cfg.eval_rows).to_pylist()
    return [tokenize(r, tokenizer, cfg.max_length, reasoning=cfg.train_reasoning) for r in rows[rank::world]]


def _device() -> torch.device:
    """This worker's device (its GPU under Ray Train with use_gpu, else the CPU)."""
    return ray.train.torch.get_device()


def _on_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(_device()) for k, v in batch.items()}


def _all_reduce(values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
    """Reduce a few numbers over every worker (on the worker's device: NCCL has no CPU tensors)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def eval_loss(engine, examples: list[Example], pad_id: int, micro_batch: int) -> float:
    """Token-weighted mean response loss over every worker's held-out examples (all ranks call it)."""
    loss_sum, n_sum = 0.0, 0.0
    engine.eval()
    with torch.no_grad():
        for k in range(0, len(examples), micro_batch):
            batch = collate(examples[k : k + micro_batch], pad_id)
            n = float((batch["labels"][:, 1:] != IGNORE).sum())
            loss_sum, n_sum = loss_sum + mean_response_loss(engine, _on_device(batch)).item() * n, n_sum + n
    engine.train()
    loss_sum, n_sum = _all_reduce([loss_sum, n_sum])
    return loss_sum / max(n_sum, 1.0)


def _export_hf(engine, cfg: TrainConfig, tokenizer, out: Path) -> None:
    """Hugging Face files of the current weights (rank 0 writes; ZeRO-3 gathers first)."""
    import deepspeed

    model = engine.module
    params = list(model.parameters()) if cfg.deepspeed.zero_stage == 3 else []
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
        if dist.get_rank() != 0:
            return
        if cfg.lora is None:
            model.save_pretrained(out / "model", safe_serialization=True)
        else:
            model.save_pretrained(out / "adapter")
            if cfg.lora.merge:
                copy.deepcopy(model).merge_and_unload().save_pretrained(out / "model", safe_serialization=True)
        for sub in ("model", "adapter"):
            if (out / sub).exists():
                tokenizer.save_pretrained(out / sub)


def _save_checkpoint(engine, cfg: TrainConfig, tokenizer, step: int, metrics: dict, final: bool) -> None:
    """DeepSpeed state plus Hugging Face exports, handed to Ray Train (which stores it under out_dir)."""
    with tempfile.TemporaryDirectory(dir=storage.scratch_root()) as tmp:
        tmp_path = Path(tmp)
        engine.save_checkpoint(str(tmp_path / "ds"), tag="ds")
        if final or cfg.lora is not None:  # LoRA exports are tiny: every checkpoint is loadable
            _export_hf(engine, cfg, tokenizer, tmp_path / "hf")
        if dist.get_rank() == 0:
            (tmp_path / STATE).write_text(json.dumps({"step": step, "final": final}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(engine) -> int:
    """The step to start from: 0, or the step of the checkpoint Ray Train hands back after a restart."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0
    with checkpoint.as_directory() as d:
        engine.load_checkpoint(os.path.join(d, "ds"), tag="ds")
        return json.loads(Path(d, STATE).read_text())["step"]


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Whether every worker's loss is finite (all ranks take the same branch)."""
    return _all_reduce([1.0 if bool(torch.isfinite(loss)) else 0.0], dist.ReduceOp.MIN)[0] == 1.0


class _Step:
    """What one optimizer step did on this worker."""

    def __init__(self):
        self.losses: list[float] = []
        self.tokens = 0  # the rows' own tokens
        self.padded = 0  # the positions the model computed: tokens plus padding
        self.skipped = False


def _train_step(engine, rows: list[Example], cfg: TrainConfig, pad_id: int) -> _Step:
    """One optimizer step over this worker's rows (in ``grad_accum`` micro-batches). A NaN/inf loss
    on any worker turns the step into a no-op (zero loss, so DeepSpeed's counters stay in step)."""
    out = _Step()
    for k in range(cfg.grad_accum):
        micro = rows[k :: cfg.grad_accum]  # each micro-batch packs its own rows: none is ever empty
        batch = packed_batch(micro, pad_id, cfg.pack_length) if cfg.packing else collate(micro, pad_id)
        loss = mean_response_loss(engine, _on_device(batch), use_cache=False)  # no cache: packed rows stay apart
        if not _finite_everywhere(loss):
            loss, out.skipped = torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * 0.0, True
        engine.backward(loss)
        engine.step()
        if not out.skipped:
            out.losses.append(loss.item())
        out.tokens += sum(len(e.input_ids) for e in micro)
        out.padded += batch["input_ids"].numel()
    return out


class _Reporter:
    """Rank 0's metric records (buffered to ``out_dir/metrics.jsonl``, TensorBoard, MLflow) and
    throttled console lines (in the worker's log)."""

    def __init__(self, cfg: TrainConfig, rank: int, steps: int):
        self.log = MetricsLog(storage.join(cfg.out_dir, METRICS)) if rank == 0 else None
        self.tracker = None
        if rank == 0:
            params = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("plugins", "storage")}
            self.tracker = Tracker(cfg.tracking, cfg.out_dir, storage.name(cfg.out_dir), _flatten(params))
        self.steps, self.t_print = steps, 0.0

    def record(self, metrics: dict, final: bool) -> None:
        if self.log is None:
            return
        self.log.add(metrics)
        self.tracker.log(metrics)
        self.log.flush(force=final or "eval_loss" in metrics)
        if time.time() - self.t_print > PRINT_EVERY_S or final:
            self.t_print = time.time()
            held = f" eval_loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""
            print(
                f"train step {metrics['step']}/{self.steps} loss {metrics['loss']:.4f}{held} "
                f"{metrics['tokens_per_s']:.0f} tok/s (MFU {metrics['mfu_pct']:.1f}%) lr {metrics['lr']:.2e}",
                flush=True,
            )

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush(force=True)
            self.tracker.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.flush(force=True)
            self.tracker.close()


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _engine(cfg: TrainConfig, model_path: str, steps: int):
    """The DeepSpeed engine and the model's training FLOPs per token."""
    import deepspeed

    model = _build_model(cfg, model_path)
    flops = flops_per_token(model, full_finetune=cfg.lora is None)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=build_deepspeed_config(cfg, steps),
        dist_init_required=False,
    )
    return engine, flops


def _peak_tflops(cfg: TrainConfig) -> tuple[float, str]:
    """Every worker's matmul peak at the training precision, summed, and where it came from:
    ``peak_tflops`` per worker when set, else this machine's figure for the worker's threads or GPU
    (:func:`instructscale.hardware.peak_tflops`: cached, or measured now)."""
    mine, source = (
        (cfg.peak_tflops, "train.peak_tflops") if cfg.peak_tflops else peak_tflops(_dtype(cfg), str(_device()))
    )
    return _all_reduce([mine])[0], source


class _NonFinite:
    """Counts steps skipped for a NaN/inf loss; too many in a row stop the run with a clear error."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def update(self, skipped: bool, step: int) -> None:
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        self.total += skipped
        if self.in_a_row >= self.limit:
            raise RuntimeError(
                f"train: {self.in_a_row} steps in a row (up to step {step}) had a NaN or infinite "
                "loss; lower optim.lr, check the data, or use fp32/bf16 instead of fp16"
            )


class _Batches:
    """This worker's examples step by step from the plan, tokenized as they are read. Packing off,
    the rows of every ``length_window`` steps are regrouped by length; a resumed worker re-reads
    the window it resumes in, so its steps are the ones the first attempt would have trained on."""

    def __init__(self, cfg: TrainConfig, tokenizer, rank: int, start: int, steps: int):
        self.cfg, self.tokenizer, self.rank = cfg, tokenizer, rank
        self.window = 1 if cfg.packing else max(cfg.length_window, 1)
        first = start - start % self.window
        self.plan = worker_steps(cfg, rank, first, steps)
        self.no_response = 0  # rows read so far whose response lies beyond max_length
        self.ahead = [s for s in self._read(first) if s[0] >= start]

    def _read(self, first: int) -> list[tuple[int, dict, list[Example]]]:
        """The next window of steps (starting at step ``first``), tokenized and regrouped."""
        window = list(itertools.islice(self.plan, self.window))
        examples = [
            [tokenize(r, self.tokenizer, self.cfg.max_length, reasoning=self.cfg.train_reasoning) for r in rows]
            for _, _, rows in window
        ]
        self.no_response += sum(all(v == IGNORE for v in e.labels) for step in examples for e in step)
        if self.window > 1:
            examples = group_by_length(
                examples, lambda e: len(e.input_ids), self.window, self.cfg.seed + self.rank, first
            )
        return [(step, batch, rows) for (step, batch, _), rows in zip(window, examples)]

    def next(self, step: int) -> tuple[dict, list[Example]]:
        """Step ``step``'s global batch figures (mean difficulty, source shares) and this worker's examples."""
        if not self.ahead:
            self.ahead = self._read(step)
        planned, batch, rows = self.ahead.pop(0)
        if planned != step:
            raise RuntimeError(f"train plan: worker {self.rank} expected step {step}, read step {planned}")
        return batch, rows


def train_loop(config: dict) -> None:
    """Ray Train entry: ``config`` holds the shipped TrainConfig and the number of steps in the plan."""
    from transformers import AutoTokenizer

    cfg = config["shipped"].load()
    steps: int = config["steps"]
    use_system_allocator()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)

    model_path = storage.local_dir(cfg.model)  # a URI is fetched once per node
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    held_out = _eval_examples(cfg, tokenizer, rank, world)
    peak = _peak_tflops(cfg)
    engine, flops = _engine(cfg, model_path, steps)
    start = _restore(engine)
    batches = _Batches(cfg, tokenizer, rank, start, steps)
    callbacks = [TrainCallback.registry.build(c) for c in cfg.callbacks]
    reporter, nonfinite = _Reporter(cfg, rank, steps), _NonFinite(cfg.max_nonfinite_steps)

    window = _Window(world, flops, peak)
    for step in range(start, steps):
        for callback in callbacks:
            callback.on_step_start(step + 1, rank, cfg.out_dir)
        batch, rows = batches.next(step)
        result = _train_step(engine, rows, cfg, tokenizer.pad_token_id)
        window.add(result)
        done = step + 1
        nonfinite.update(result.skipped, done)
        final = done == steps
        evaluate = bool(held_out) and (done % cfg.eval_every == 0 or final)
        checkpoint = done % cfg.checkpoint_every == 0 or final
        if done % cfg.log_every and not checkpoint and not evaluate:
            continue
        metrics = {
            "step": done,
            **window.metrics(batches.no_response),
            "lr": engine.get_lr()[0],
            "resumed_from": start,
            **batch,
            "skipped_nonfinite_steps": nonfinite.total,
        }
        if evaluate:
            metrics["eval_loss"] = eval_loss(engine, held_out, tokenizer.pad_token_id, cfg.micro_batch_size)
        reporter.record(metrics, final)
        # Ray Train's report blocks until its controller polls (every ~2 s), so it is called only
        # with checkpoints; every logged step is in metrics.jsonl.
        if checkpoint:
            reporter.flush()
            _save_checkpoint(engine, cfg, tokenizer, done, metrics, final)
        window.reset()
    reporter.close()


class _Window:
    """What the steps since the last metrics record add up to, over every worker."""

    def __init__(self, world: int, flops_per_token: float, peak: tuple[float, str]):
        self.world, self.flops, (self.peak, self.peak_source) = world, flops_per_token, peak
        self.reset()

    def reset(self) -> None:
        self.t0, self.tokens, self.padded, self.losses = time.time(), 0, 0, []

    def add(self, step: _Step) -> None:
        self.losses += step.losses
        self.tokens, self.padded = self.tokens + step.tokens, self.padded + step.padded

    def metrics(self, no_response: int) -> dict:
        """Mean loss, tokens and their rates since the last record (reduced over the workers)."""
        mean = sum(self.losses) / len(self.losses) if self.losses else math.nan
        loss_sum, tokens, padded, no_response = _all_reduce(
            [mean, float(self.tokens), float(self.padded), float(no_response)]
        )
        elapsed = time.time() - self.t0
        return {
            "loss": loss_sum / self.world,
            "tokens": int(tokens),
            "seconds": elapsed,
            "tokens_per_s": tokens / elapsed,
            **_efficiency(tokens, padded, elapsed, self.flops, self.peak),
            "peak_source": self.peak_source,
            "time": time.time(),
            "rows_without_response_tokens": int(no_response),
        }


def _efficiency(tokens: float, padded: float, seconds: float, per_token: float, peak_tflops: float) -> dict:
    """Padded positions per second and model FLOPs utilisation: the model's FLOPs on the rows' own
    tokens (padding is waste, not work) over every worker's matmul peak."""
    tflops = tokens * per_token / seconds / 1e12
    return {
        "padded_tokens": int(padded),
        "padded_tokens_per_s": padded / seconds,
        "model_tflops_per_s": tflops,
        "peak_tflops": peak_tflops,
        "mfu_pct": 100 * tflops / peak_tflops,
    }
