"""Proof of value on a real pretrained model: SmolLM2-135M-Instruct (fetch-model) before and after
LoRA tuning on the demo's verifiable tasks, with confidence intervals, and what selection and the
curriculum add, measured over seeds. Reported as measured, whatever it shows.

1. base and tuned: exact match on the held-out split with a bootstrap 95% CI over rows, overall and
   per task family, with the same answer extraction; the base model also with a few-shot system
   prompt that shows the answer format (so the gain is not only the format);
2. a general check that tuning did not break the model: ROUGE-L against reference answers on 30
   general instructions (benchmarks/data/general_instructions.jsonl), base vs tuned;
3. arms at the same steps (and so the same rows seen): selected 10% (the platform's default: filters,
   verifier, dedup, then a random draw per task), random 10% of the raw pool, and the full filtered
   pool; then the selected arm with the competence curriculum on the IFD difficulty. Each arm runs
   with --seeds seeds (a new subset, selector seed and training order each); mean and 95% CI
   (t-interval over seeds) of exact match and held-out loss.
    python benchmarks/real_model.py --rows 4000 --steps 60 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import demo_workspace, print_table, write_result

FEW_SHOT = (
    "Answer with the result only, no explanation. Examples:\n"
    "Q: Compute 12 + 30.\nA: 42\nQ: Reverse the letters of the word.\n\nstone\nA: enots\n"
    "Q: Sort the numbers in ascending order.\n\n5, 1, 3\nA: 1, 3, 5\n"
    "Q: Convert 3 km to m.\nA: 3000 m"
)
DATA = Path(__file__).parent / "data" / "general_instructions.jsonl"


def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0) -> list[float]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    means = np.random.default_rng(seed).choice(v, size=(n, len(v)), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def t_interval(values: list[float]) -> list[float]:
    import numpy as np
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return [float(v.mean())] * 2
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return [float(v.mean() - half), float(v.mean() + half)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--eval-rows", type=int, default=400)
    parser.add_argument("--arm-eval-rows", type=int, default=200, help="held-out rows per arm evaluation")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--packing", action="store_true", help="pack rows (the quoted run predates packing)")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from instructscale import storage
    from instructscale.config import parse_config
    from instructscale.evaluate import EvalConfig, evaluate, rouge_l
    from instructscale.models.catalog import fetch_model
    from instructscale.progress import setup_logging
    from instructscale.select.config import SelectConfig
    from instructscale.select.stage import select
    from instructscale.train.config import TrainConfig
    from instructscale.train.stage import train

    work, pool, held_out = demo_workspace("bench-real-", args.rows, args.eval_rows)
    print(f"log: {setup_logging(False, str(work / 'logs'))}")
    model = fetch_model("smollm2-135m-instruct")["path"]
    general = work / "general"
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    storage.write_parquet(str(general / "part-0.parquet"), _general_table(rows))

    def scores(name: str, model_dir: str, data: str = held_out, rows_: int | None = None, system=None) -> dict:
        ev = evaluate(
            parse_config(
                EvalConfig,
                {
                    "model": model_dir,
                    "data": data,
                    "out_dir": str(work / "eval" / name),
                    "max_rows": rows_,
                    "sampling": {"max_tokens": 32},
                    "system_prompt": system,
                    "replicas": {"num_cpus": 2},
                },
            )
        )
        preds = pq.read_table(work / "eval" / name / "predictions").to_pylist()
        return {
            "overall": ev["overall"],
            "by_group": ev["by_group"],
            "em_rows": [p["exact_match"] for p in preds],
            "predictions": preds,
        }

    def selection(name: str, seed: int, **options) -> str:
        select(
            parse_config(
                SelectConfig,
                {
                    "input": pool,
                    "out_dir": str(work / name),
                    "features_dir": str(work / "features") if (work / "features" / "_manifest.json").exists() else None,
                    "filters": [
                        "length",
                        "repetition",
                        "control_characters",
                        "refusal",
                        "truncated",
                        "reference_answer",
                    ],
                    "scorers": [
                        {
                            "kind": "model",
                            "model": model,
                            "max_length": 96,
                            "batch_size": 32,
                            "min_replicas": 2,
                            "max_replicas": 2,
                            "dtype": "bfloat16",
                        }
                    ],
                    "selector": {"kind": "random", "seed": seed},
                    **options,
                },
            )
        )
        if not (work / "features" / "_manifest.json").exists():
            storage.copy_tree(str(work / name / "features"), str(work / "features"))
        return str(work / name / "selected")

    def random_subset(seed: int) -> str:
        import numpy as np

        table = storage.read_parquet(storage.list_files(pool, suffix=".parquet"))
        k = int(args.fraction * table.num_rows)
        pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=k, replace=False))
        storage.write_parquet(str(work / f"random-{seed}" / "part-0.parquet"), table.take(pick))
        return str(work / f"random-{seed}")

    def tuned(name: str, data: str, seed: int, curriculum: str = "random") -> dict:
        return train(
            parse_config(
                TrainConfig,
                {
                    "data": data,
                    "model": model,
                    "out_dir": str(work / "train" / name),
                    "seed": seed,
                    "lora": {"r": 16, "alpha": 32},
                    "deepspeed": {"precision": "bf16", "zero_stage": 2},
                    "optim": {"lr": 3e-4},
                    "micro_batch_size": 8,
                    "max_length": 96,
                    "packing": args.packing,
                    "max_steps": args.steps,
                    "epochs": 100,
                    "checkpoint_every": args.steps,
                    "scaling": {"num_workers": 2},
                    "curriculum": {"kind": curriculum, "difficulty_key": "difficulty"},
                },
            )
        )

    base = scores("base", model)
    base_few_shot = scores("base-few-shot", model, system=FEW_SHOT)
    arms: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        budget = {"budget": {"fraction": args.fraction, "stratify_by": "task"}}
        data = {
            "selected 10%": selection(f"sel-{seed}", seed, **budget),
            "random 10%": random_subset(seed),
            "full filtered pool": selection(f"full-{seed}", seed, budget={"fraction": 1.0}),
        }
        for arm, path in data.items():
            run = tuned(f"{arm.split()[0]}-{seed}", path, seed)
            arms.setdefault(arm, []).append(
                {"train": run, **scores(f"{arm.split()[0]}-{seed}", run["model"], rows_=args.arm_eval_rows)}
            )
        run = tuned(f"curriculum-{seed}", data["selected 10%"], seed, "competence")
        arms.setdefault("selected 10% + competence curriculum (IFD)", []).append(
            {"train": run, **scores(f"curriculum-{seed}", run["model"], rows_=args.arm_eval_rows)}
        )

    best = arms["selected 10%"][0]["train"]["model"]  # the first selected arm, evaluated on every held-out row
    tuned_full = scores("tuned", best)
    general_base, general_tuned = (
        scores("general-base", model, str(general)),
        scores("general-tuned", best, str(general)),
    )
    result = summarise(
        args, base, base_few_shot, tuned_full, arms, general_base, general_tuned, bootstrap_ci, t_interval, rouge_l
    )
    write_result("real_model", result)


def _general_table(rows: list[dict]):
    import pyarrow as pa

    from instructscale.schema import POOL_SCHEMA, encode_metadata

    return pa.Table.from_pylist(
        [
            {
                "id": f"general-{i}",
                "instruction": r["instruction"],
                "input": "",
                "output": r["output"],
                "messages": None,
                "source": "general",
                "metadata": encode_metadata({"task": "general", "answer": r["output"]}),
                "tools": None,
            }
            for i, r in enumerate(rows)
        ],
        schema=POOL_SCHEMA,
    )


def summarise(
    args, base, few_shot, tuned, arms, general_base, general_tuned, bootstrap_ci, t_interval, rouge_l
) -> dict:
    def em(s: dict) -> dict:
        by_group = {g: round(m["exact_match"], 4) for g, m in s["by_group"].items()}
        return {
            "exact_match": s["overall"]["exact_match"],
            "exact_match_ci95": bootstrap_ci(s["em_rows"]),
            "loss": s["overall"]["loss"],
            "by_group": by_group,
            "rows": s["overall"]["rows"],
        }

    def rouge(s: dict) -> float:
        return sum(rouge_l(p["prediction"], p["reference"]) for p in s["predictions"]) / len(s["predictions"])

    arm_rows = []
    for name, runs in arms.items():
        ems, losses = [r["overall"]["exact_match"] for r in runs], [r["overall"]["loss"] for r in runs]
        arm_rows.append(
            {
                "arm": name,
                "seeds": len(runs),
                "rows": runs[0]["train"]["rows"],
                "steps": runs[0]["train"]["steps"],
                "exact_match": sum(ems) / len(ems),
                "exact_match_ci95": [round(v, 4) for v in t_interval(ems)],
                "loss": sum(losses) / len(losses),
                "loss_ci95": [round(v, 4) for v in t_interval(losses)],
                "per_seed_exact_match": ems,
                "per_seed_loss": losses,
            }
        )
    result = {
        "args": vars(args),
        "model": "smollm2-135m-instruct (Q4_1 GGUF dequantized)",
        "base": em(base),
        "base_few_shot": em(few_shot),
        "tuned": em(tuned),
        "general_rouge_l": {"base": rouge(general_base), "tuned": rouge(general_tuned)},
        "arms": arm_rows,
    }
    result["tuned_ci_above_base"] = result["tuned"]["exact_match_ci95"][0] > result["base"]["exact_match_ci95"][1]
    result["tuned_ci_above_few_shot_base"] = (
        result["tuned"]["exact_match_ci95"][0] > result["base_few_shot"]["exact_match_ci95"][1]
    )
    models = [
        {
            "model": k,
            "rows": v["rows"],
            "exact_match": v["exact_match"],
            "ci95": v["exact_match_ci95"],
            "loss": v["loss"],
        }
        for k, v in (
            ("base", result["base"]),
            ("base, few-shot", result["base_few_shot"]),
            ("tuned (selected 10%, seed 0)", result["tuned"]),
        )
    ]
    print_table(models, ["model", "rows", "exact_match", "ci95", "loss"])
    print("\nper task:", json.dumps({k: result[k]["by_group"] for k in ("base", "base_few_shot", "tuned")}))
    print(
        f"general instructions, ROUGE-L vs references: base {result['general_rouge_l']['base']:.3f}, "
        f"tuned {result['general_rouge_l']['tuned']:.3f}\n"
    )
    print_table(arm_rows, ["arm", "seeds", "rows", "steps", "exact_match", "exact_match_ci95", "loss", "loss_ci95"])
    print(
        f"\ntuned exact-match CI entirely above the base's: {result['tuned_ci_above_base']} "
        f"(above the few-shot base's: {result['tuned_ci_above_few_shot_base']})"
    )
    return result


if __name__ == "__main__":
    main()
