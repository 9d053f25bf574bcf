"""Does selection (and curriculum) help? On the demo's verifiable tasks, with the same training
budget (steps x global batch) for every arm, in one run:
  base student (no training) | full pool | random 10% | selected 10% (quality + IFD + diversity)
  | selected 10% with a competence curriculum on the IFD difficulty.
Each trained arm fine-tunes the tiny student (full weights, ZeRO-2, 2 Ray Train workers) and is
evaluated on the held-out split: exact match, token F1 and loss, overall.
Target: selected >= random of the same size, and >= the full pool.
    python benchmarks/selection_effect.py --rows 8000 --steps 150
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import print_table, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--eval-rows", type=int, default=400)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args()

    import numpy as np
    import pyarrow.dataset as pads
    import ray

    from instructscale.config import parse_config
    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.evaluate import EvalConfig, evaluate
    from instructscale.io import write_parquet_atomic
    from instructscale.models.tiny import build_tiny_models
    from instructscale.runtime import RayConfig, init_ray
    from instructscale.select.config import SelectConfig
    from instructscale.select.stage import select
    from instructscale.train.config import TrainConfig
    from instructscale.train.stage import train

    work = Path(tempfile.mkdtemp(prefix="bench-effect-"))
    student = build_tiny_models(work / "models")["student"]
    init_ray(RayConfig(num_cpus=8))
    ray.data.DataContext.get_current().enable_progress_bars = False
    make_demo(DemoConfig(out_dir=str(work / "data"), rows=args.rows, eval_rows=args.eval_rows, shards=2,
                         malformed_jsonl_rows=0))
    pool, held_out = str(work / "data" / "pool"), str(work / "data" / "eval")

    table = pads.dataset(pool, format="parquet").to_table()
    k = int(args.fraction * table.num_rows)
    pick = np.sort(np.random.default_rng(0).choice(table.num_rows, size=k, replace=False))
    write_parquet_atomic(work / "random" / "part-0.parquet", table.take(pick))
    sel = select(parse_config(SelectConfig, {
        "input": pool, "out_dir": str(work / "select"), "scoring": {"model": student, "ifd_max": None},
        "selector": {"method": "diverse", "budget": k, "stratify_by": "task"}}))
    selected = str(work / "select" / "selected")

    def run(name: str, data: str, curriculum: str) -> dict:
        cfg = parse_config(TrainConfig, {
            "data": data, "model": student, "out_dir": str(work / f"train-{name}"), "lora": None,
            "max_steps": args.steps, "epochs": 1000, "micro_batch_size": 16, "max_length": 128,
            "optim": {"lr": 3e-3}, "checkpoint_every": args.steps, "scaling": {"num_workers": 2},
            "curriculum": {"strategy": curriculum}})
        return train(cfg)

    arms = [("base student", None, None), ("full pool", pool, "random"), (f"random {k} rows", str(work / "random"), "random"),
            (f"selected {k} rows", selected, "random"), (f"selected {k} rows + curriculum", selected, "competence")]
    results = []
    for i, (name, data, curriculum) in enumerate(arms):
        model = student if data is None else run(str(i), data, curriculum)["model"]
        ev = evaluate(parse_config(EvalConfig, {"model": model, "data": held_out, "out_dir": str(work / f"eval-{i}"),
                                                "backend": {"kind": "hf"}, "sampling": {"max_tokens": 24}}))
        o = ev["overall"]
        results.append({"arm": name, "exact_match": o["exact_match"], "token_f1": o["token_f1"],
                        "rouge_l": o["rouge_l"], "loss": o["loss"],
                        "by_task_em": {g: m["exact_match"] for g, m in ev["by_group"].items()}})
    print_table(results, ["arm", "exact_match", "token_f1", "rouge_l", "loss"])
    random_arm, sel_arm, full = results[2], results[3], results[1]
    verdict = {"selected_beats_random": sel_arm["loss"] < random_arm["loss"],
               "selected_reaches_full": sel_arm["loss"] <= full["loss"]}
    print(f"\nselection summary: {sel['removed']} removed, {sel['selected']} selected; verdict on loss: {verdict}")
    write_result("selection_effect", {"args": vars(args), "results": results, "select": sel | {"config": None},
                                      "verdict": verdict})


if __name__ == "__main__":
    main()
