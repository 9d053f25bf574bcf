"""Training throughput in one run, on the same tiny student, rows and settings (LoRA, ZeRO-2, fp32):
(1) a bare single-process DeepSpeed loop, (2) the training stage with 1 Ray Train worker,
(3) the stage with 2 workers. Each worker (and the bare loop) gets one CPU thread.

"steady tok/s" is trained (non-pad) tokens per second over the logged steps after the first
(the first includes lazy initialisation); "wall" includes starting workers and loading the model;
"startup_s" is the stage's time from `fit()` to the end of step 1 minus the step itself (workers,
data, model, DeepSpeed engine: no op is compiled during a run; setup.sh builds them). Target:
startup <= 15 s for the tiny model.
The bare loop runs before and after the stage; the stage is compared with the mean of the two.
Target: stage (1 worker) steady tok/s >= 0.9x the bare loop.
    python benchmarks/train.py --steps 120
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from _common import print_table, write_result


def bare_deepspeed(cfg, rows: list[dict], steps: int) -> dict:
    """The bare loop in a fresh process (DeepSpeed keeps process-group state between runs)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_bare_loop, (cfg, rows, steps))


def _bare_loop(cfg, rows: list[dict], steps: int) -> dict:
    """The same model, optimizer config, rows and batch geometry, one process, no Ray."""
    import socket

    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from instructscale.tokens import collate, tokenize
    from instructscale.train.deepspeed_config import build_deepspeed_config
    from instructscale.train.worker import _build_model

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    torch.set_num_threads(1)
    t0 = time.time()
    dist.init_process_group("gloo")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    examples = [tokenize(r, tokenizer, cfg.max_length) for r in rows]
    model = _build_model(cfg, cfg.model)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=build_deepspeed_config(cfg, steps),
        dist_init_required=False,
    )
    mb = cfg.micro_batch_size
    tokens, t_steady = 0, None
    for step in range(steps):
        if step == 1:
            t_steady, tokens = time.time(), 0
        batch = collate(examples[step * mb : (step + 1) * mb], tokenizer.pad_token_id)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        tokens += int(batch["attention_mask"].sum())
    end = time.time()
    dist.destroy_process_group()
    return {"steady_tok_s": tokens / (end - t_steady), "wall_s": end - t0, "final_loss": loss.item()}


def stage(cfg) -> dict:
    from instructscale.train.stage import train

    t0 = time.time()
    m = train(cfg)
    wall = time.time() - t0
    steady = [r for r in m["history"] if r["step"] > m["history"][0]["step"]]
    tok_s = sum(r["tokens"] for r in steady) / sum(r["seconds"] for r in steady)
    return {"steady_tok_s": tok_s, "wall_s": wall, "startup_s": m["startup_s"], "final_loss": m["final_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=1, help="the stage's metric records, every N steps")
    args = parser.parse_args()

    from instructscale.config import parse_config
    from instructscale.demo.pool import DemoConfig, iter_pool_rows
    from instructscale.models.tiny import build_tiny_models
    from instructscale.runtime import RayConfig, init_ray
    from instructscale.schema import POOL_SCHEMA
    from instructscale.storage import write_parquet
    from instructscale.train.config import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    student = build_tiny_models(work / "models")["student"]
    n_rows = args.steps * args.micro_batch * 2  # enough for 2 workers without repeating a row
    rows = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, n_rows))
    write_parquet(str(work / "data" / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))

    def cfg_for(workers: int) -> TrainConfig:
        return parse_config(
            TrainConfig,
            {
                "data": str(work / "data"),
                "model": student,
                "out_dir": str(work / f"out-{workers}"),
                "micro_batch_size": args.micro_batch,
                "max_length": args.max_length,
                "max_steps": args.steps,
                "checkpoint_every": args.steps,
                "log_every": args.log_every,
                "scaling": {"num_workers": workers, "cpus_per_worker": 1},
                "lora": {
                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                },
                "optim": {"lr": 5e-3},
                "deepspeed": {"zero_stage": 2},
            },
        )

    results = [{"method": "bare DeepSpeed, 1 process", "workers": 1, **bare_deepspeed(cfg_for(1), rows, args.steps)}]
    init_ray(RayConfig(num_cpus=8))
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    for workers in (1, 2):
        results.append(
            {"method": f"instructscale train, {workers} worker(s)", "workers": workers, **stage(cfg_for(workers))}
        )
    # the bare loop again, after the stage runs: the spread of the two is this machine's noise
    results.append(
        {"method": "bare DeepSpeed, 1 process (again)", "workers": 1, **bare_deepspeed(cfg_for(1), rows, args.steps)}
    )
    one, two = results[1]["steady_tok_s"], results[2]["steady_tok_s"]
    bare = (results[0]["steady_tok_s"] + results[3]["steady_tok_s"]) / 2
    for r in results:
        r["vs_bare_mean"] = r["steady_tok_s"] / bare
    print_table(results, ["method", "workers", "steady_tok_s", "wall_s", "startup_s", "final_loss", "vs_bare_mean"])
    print(f"\nstage 1 worker / bare (mean of its two runs): {one / bare:.2f}x (target >= 0.9, i.e. overhead <= 10%)")
    print(f"stage 2 workers / 1 worker: {two / one:.2f}x on {os.cpu_count()} cores")
    startup = [r["startup_s"] for r in results if r.get("startup_s") is not None]
    print(f"stage start-up (fit() to step 1): {', '.join(f'{s:.1f}' for s in startup)} s (target <= 15 s)")
    write_result(
        "train",
        {
            "args": vars(args),
            "results": results,
            "stage_over_bare": one / bare,
            "two_over_one": two / one,
            "stage_startup_s": startup,
        },
    )


if __name__ == "__main__":
    main()
