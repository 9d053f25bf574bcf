"""Training data at two pool sizes: does a worker's memory grow with the pool?

For each size, the demo pool is planned as the training stage plans it (easy_to_hard on the
metadata's difficulty, 1 epoch, 2 workers; train/plan.py's Ray tasks), then each worker's rows are
tokenized with the tiny student's tokenizer in a fresh Ray worker process, two ways:
- ``streamed``: as the training loop does, step by step from the worker's sorted runs;
- ``up_front``: every row of the worker's share read and tokenized before the first step (what
  the stage did before the plan streamed).
Both ways use Arrow's system allocator, as the training loop does. Peak RSS is each process's own high-water mark (``ru_maxrss``); ``plan_task`` is the largest plan
task's. No model runs: this times and sizes the data path only.

    python benchmarks/train_data.py --sizes 20000,200000
Writes benchmarks/results/train_data.json. Goal (issue 18): streamed worker RSS at the large size
over the small one <= 1.3.
"""

from __future__ import annotations

import resource
import time

import ray

from harness import Bench, PeakProcessRSS

COLUMNS = ["rows", "steps", "plan_s", "plan_task_gib", "way", "worker_gib", "rows_per_s"]


@ray.remote(max_calls=1)  # a fresh process per call: ru_maxrss is this call's own peak
def tokenize_share(shipped, tokenizer_dir: str, rank: int, steps: int, way: str) -> dict:
    from transformers import AutoTokenizer

    from instructscale.tokens import tokenize
    from instructscale.train.plan import use_system_allocator, worker_steps

    cfg = shipped.load()
    use_system_allocator()  # as the training loop does
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    t0, plan = time.time(), worker_steps(cfg, rank, 0, steps)
    if way == "up_front":  # every row read, then every row tokenized and kept
        examples = [tokenize(r, tokenizer, cfg.max_length) for _, _, step in list(plan) for r in step]
        rows = len(examples)
    else:
        rows = 0
        for _, _, step in plan:
            _ = [tokenize(r, tokenizer, cfg.max_length) for r in step]
            rows += len(step)
    return {
        "rows": rows,
        "seconds": time.time() - t0,
        "gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_size(bench: Bench, rows: int, student: str) -> list[dict]:
    from instructscale.process import Shipped
    from instructscale.train.config import TrainConfig
    from instructscale.train.plan import build_plan

    bench.ray()
    pool, _ = bench.demo(rows, 50, folder=f"data-{rows}")
    cfg = TrainConfig(
        data=pool,
        model=student,
        out_dir=str(bench.work / f"train-{rows}"),
        micro_batch_size=32,
        epochs=1,
        max_length=128,
        curriculum="easy_to_hard",
        scaling={"num_workers": 2},
    )
    with PeakProcessRSS() as peak:
        t0 = time.time()
        info = build_plan(cfg)
        plan_s = time.time() - t0
    plan_gib = (
        max(
            (v for k, v in peak.by_title.items() if "_build" in k or "_write_runs" in k or "_difficulties" in k),
            default=0,
        )
        / 2**30
    )
    out = []
    for way in ("streamed", "up_front"):
        results = ray.get([tokenize_share.remote(Shipped.of(cfg), student, r, info["steps"], way) for r in range(2)])
        out.append(
            {
                "rows": info["rows"],
                "steps": info["steps"],
                "plan_s": plan_s,
                "plan_task_gib": plan_gib,
                "way": way,
                "worker_gib": max(r["gib"] for r in results),
                "rows_per_s": sum(r["rows"] for r in results) / max(r["seconds"] for r in results),
            }
        )
    ray.shutdown()
    return out


def main() -> None:
    from instructscale.models.tiny import build_tiny_models

    bench = Bench("train_data", __doc__, lambda p: p.add_argument("--sizes", default="20000,200000"))
    student = build_tiny_models(bench.work / "models", seed=0)["student"]
    rows = bench.results
    rows += [r for n in bench.args.sizes.split(",") for r in run_size(bench, int(n), student)]
    bench.table(COLUMNS)
    small, large = rows[:2], rows[2:]
    ratios = {
        f"{way}_worker_rss_large_over_small": big["worker_gib"] / little["worker_gib"]
        for way, little, big in zip(("streamed", "up_front"), small, large)
    }
    print("\n".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    bench.write(sizes=bench.args.sizes, rows=rows, **ratios)


if __name__ == "__main__":
    main()
