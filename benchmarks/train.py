"""Training throughput in one run, on the same rows and LoRA settings: the training stage with 1 and
2 Ray Train workers (packing on and off), a bare single-process DeepSpeed loop on the stage's own
batches, the same loop in plain PyTorch (what DeepSpeed costs), and a bare dense PyTorch loop
(sequences of max_length cut from the rows' concatenated tokens: no padding, no row boundaries,
the machine's ceiling for this model). Every Ray Train worker gets 1 CPU thread; each bare loop is
pinned to the threads stated in its row, so the stage with 2 workers compares with 2 threads.

"real tok/s" is the rows' own (non-pad) tokens per second over the steps after the first (the
first includes lazy initialisation); "padded" counts the positions computed, padding included;
MFU is the model's FLOPs on real tokens (4N per token for LoRA, 6N full; see
instructscale.train.flops) over the matmul peak of benchmarks/peak.py at the same precision and
threads; "startup_s" is the stage's time from `fit()` to the end of step 1 minus the step itself.

    python benchmarks/train.py --steps 60                                   # tiny student, fp32
    python benchmarks/train.py --model runs/smollm2/models/student --steps 30   # SmolLM2, bf16
The first writes benchmarks/results/train.json, the second train_real.json.
Targets: stage start-up <= 15 s (tiny model); the stage with packing >= 0.8x the bare dense loop
in real tokens/s at equal threads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa

from harness import Bench

COLUMNS = ["method", "threads", "real_tok_s", "padded_tok_s", "mfu_pct", "wall_s", "startup_s", "final_loss"]


def bare(cfg, rows: list[dict], steps: int, *, deepspeed: bool, dense: bool, threads: int) -> dict:
    """A bare loop in a fresh process (DeepSpeed keeps process-group state between runs)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_bare_loop, (cfg, rows, steps, deepspeed, dense, threads))


def _batches(cfg, examples, steps: int, dense: bool, pad_id: int) -> list[tuple[dict, int]]:
    """(batch, its real tokens) a step: the stage's geometry (micro_batch rows, packed when
    cfg.packing), or dense max_length sequences cut from the concatenated rows."""
    from instructscale.tokens import Example, collate, pack, packed_batch

    mb, n = cfg.micro_batch_size, cfg.max_length
    if not dense:
        steps_rows = [examples[s * mb : (s + 1) * mb] for s in range(steps)]
        return [
            (
                packed_batch(rows, pad_id, cfg.pack_length) if cfg.packing else collate(rows, pad_id),
                sum(len(e.input_ids) for e in rows),
            )
            for rows in steps_rows
        ]
    stream = pack(examples, 10**9)[0]  # one long sequence; only its ids and labels are used
    seqs = [
        Example(stream.input_ids[k : k + n], stream.labels[k : k + n]) for k in range(0, len(stream.input_ids) - n, n)
    ]
    if len(seqs) < steps * mb:
        raise SystemExit(f"not enough rows for {steps} dense steps of {mb} x {n} tokens")
    return [(collate(seqs[s * mb : (s + 1) * mb], pad_id), mb * n) for s in range(steps)]


def _bare_loop(cfg, rows: list[dict], steps: int, use_deepspeed: bool, dense: bool, threads: int) -> dict:
    """The stage's model and optimizer settings in one process, no Ray: DeepSpeed or plain PyTorch
    (AdamW over the trainable parameters, the same gradient clipping)."""
    import torch
    from transformers import AutoTokenizer

    from instructscale.tokens import tokenize
    from instructscale.train.flops import flops_per_token, matmul_peak_tflops
    from instructscale.train.worker import _build_model, _dtype

    torch.set_num_threads(threads)
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    examples = [tokenize(r, tokenizer, cfg.max_length) for r in rows]
    batches = _batches(cfg, examples, steps, dense, tokenizer.pad_token_id)
    model = _build_model(cfg, cfg.model)
    flops = flops_per_token(model, full_finetune=cfg.lora is None)
    step_fn, finish = _deepspeed_step(cfg, model, steps) if use_deepspeed else _torch_step(cfg, model)
    real = padded = 0
    for step, (batch, tokens) in enumerate(batches):
        if step == 1:
            t_steady, real, padded = time.time(), 0, 0
        loss = step_fn(batch)
        real, padded = real + tokens, padded + batch["input_ids"].numel()
    seconds = time.time() - t_steady
    finish()
    peak = matmul_peak_tflops(_dtype(cfg), "cpu", seconds=1.0)
    return {
        "real_tok_s": real / seconds,
        "padded_tok_s": padded / seconds,
        "mfu_pct": 100 * real / seconds * flops / 1e12 / peak,
        "wall_s": time.time() - t0,
        "final_loss": loss,
    }


def _deepspeed_step(cfg, model, steps: int):
    import socket

    import deepspeed
    import torch.distributed as dist

    from instructscale.train.deepspeed_config import build_deepspeed_config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo")
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=build_deepspeed_config(cfg, steps),
        dist_init_required=False,
    )

    def step(batch: dict) -> float:
        loss = engine(**batch, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        return loss.item()

    return step, dist.destroy_process_group


def _torch_step(cfg, model):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    def step(batch: dict) -> float:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.deepspeed.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, lambda: None


def stage(cfg) -> dict:
    from instructscale.train.stage import train

    t0 = time.time()
    m = train(cfg)
    eff = m["efficiency"]
    return {
        "real_tok_s": eff["real_tokens_per_s"],
        "padded_tok_s": eff["padded_tokens_per_s"],
        "mfu_pct": eff["mfu_pct"],
        "wall_s": time.time() - t0,
        "startup_s": m["startup_s"],
        "final_loss": m["final_loss"],
    }


def _rows(n: int) -> list[dict]:
    from instructscale.demo.pool import DemoConfig, iter_pool_rows

    return list(iter_pool_rows(DemoConfig(out_dir="x"), 0, n))


def arguments(p) -> None:
    p.add_argument("--model", help="a Hugging Face model directory (default: the tiny student, fp32)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--micro-batch", type=int, help="rows per worker per step (default 16 tiny, 8 --model)")
    p.add_argument("--max-length", type=int, help="default 128 tiny, 96 --model")
    p.add_argument("--log-every", type=int, default=1, help="the stage's metric records, every N steps")


class Setup:
    """The model, the rows and the training config every arm shares."""

    def __init__(self, bench: Bench):
        from instructscale.models.tiny import build_tiny_models
        from instructscale.schema import POOL_SCHEMA
        from instructscale.storage import write_parquet

        args, self.work = bench.args, bench.work
        self.real = args.model is not None
        self.model = (
            str(Path(args.model).resolve()) if self.real else build_tiny_models(self.work / "models")["student"]
        )
        self.micro = args.micro_batch or (8 if self.real else 16)
        self.max_length = args.max_length or (96 if self.real else 128)
        self.steps, self.log_every = args.steps, args.log_every
        self.rows = _rows(args.steps * self.micro * 8)  # dense sequences of max_length take several rows each
        stage_rows = self.rows[: args.steps * self.micro * 2]  # 2 workers without repeating a row
        write_parquet(str(self.work / "data" / "part-0.parquet"), pa.Table.from_pylist(stage_rows, schema=POOL_SCHEMA))

    def cfg(self, workers: int, packing: bool = True):
        from instructscale.config import parse_config
        from instructscale.train.config import TrainConfig

        all_projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        return parse_config(
            TrainConfig,
            {
                "data": str(self.work / "data"),
                "model": self.model,
                "out_dir": str(self.work / f"out-{workers}-{packing}"),
                "micro_batch_size": self.micro,
                "max_length": self.max_length,
                "max_steps": self.steps,
                "checkpoint_every": self.steps,
                "log_every": self.log_every,
                "packing": packing,
                "scaling": {"num_workers": workers, "cpus_per_worker": 1},
                "lora": {"r": 16, "alpha": 32} if self.real else {"target_modules": all_projections},
                "optim": {"lr": 3e-4 if self.real else 5e-3},
                "deepspeed": {"zero_stage": 2, "precision": "bf16" if self.real else "fp32"},
            },
        )


def run_arms(bench: Bench, setup: Setup) -> None:
    one_worker_rows = setup.rows[: setup.steps * setup.micro]  # the rows rank 0 of one worker sees, in its order
    bare_arms = [  # method, rows, DeepSpeed, dense, threads
        ("bare DeepSpeed, stage batches", one_worker_rows, True, False, 1),
        ("bare PyTorch, stage batches", one_worker_rows, False, False, 1),
        ("bare PyTorch, dense", setup.rows, False, True, 1),
        ("bare PyTorch, dense", setup.rows, False, True, 2),
    ]
    for m, rows, ds, dense, t in bare_arms:
        bench.results.append(
            {"method": m, "threads": t, **bare(setup.cfg(1), rows, setup.steps, deepspeed=ds, dense=dense, threads=t)}
        )
    bench.ray()
    for workers, packing in ((1, True), (2, True), (2, False)):
        method = f"instructscale train, {workers} worker(s), packing {'on' if packing else 'off'}"
        bench.results.append({"method": method, "threads": workers, **stage(setup.cfg(workers, packing))})


def summarise(results: list[dict]) -> dict:
    by = {(r["method"], r["threads"]): r for r in results}
    ds, pt = by[("bare DeepSpeed, stage batches", 1)], by[("bare PyTorch, stage batches", 1)]
    dense1, dense2 = by[("bare PyTorch, dense", 1)], by[("bare PyTorch, dense", 2)]
    one = by[("instructscale train, 1 worker(s), packing on", 1)]
    two = by[("instructscale train, 2 worker(s), packing on", 2)]
    two_off = by[("instructscale train, 2 worker(s), packing off", 2)]
    return {
        "stage_real_tok_s": two["real_tok_s"],
        "bare_dense_tok_s": dense2["real_tok_s"],
        "stage_over_bare_dense": two["real_tok_s"] / dense2["real_tok_s"],
        "stage_1w_over_bare_dense_1t": one["real_tok_s"] / dense1["real_tok_s"],
        "two_over_one": two["real_tok_s"] / one["real_tok_s"],
        "packing_on_over_off": two["real_tok_s"] / two_off["real_tok_s"],
        "stage_over_bare": one["real_tok_s"] / ds["real_tok_s"],
        "deepspeed_over_torch": ds["real_tok_s"] / pt["real_tok_s"],
        "mfu_pct": two["mfu_pct"],
        "stage_startup_s": [one["startup_s"], two["startup_s"], two_off["startup_s"]],
    }


def main() -> None:
    bench = Bench("train", __doc__, arguments)
    setup = Setup(bench)
    run_arms(bench, setup)
    bench.table(COLUMNS)
    summary = summarise(bench.results)
    print()
    for key, value in summary.items():
        print(f"{key:28s} {value if isinstance(value, list) else round(value, 3)}")
    print(f"({os.cpu_count()} cores; goal: stage_over_bare_dense >= 0.8, start-up <= 15 s on the tiny model)")
    bench.write("train_real" if setup.real else "train", model=setup.model, **summary)


if __name__ == "__main__":
    main()
