"""Does selection (and curriculum) help? On the demo's verifiable tasks, with the same training-token
budget for every arm (--steps steps of the full pool's mean row length; an arm whose rows are
shorter gets proportionally more steps), in one run:
  base student (no training) | full pool | random 10% | selected 10% by each of VARIANTS below
  (filters, verifier and dedup first, then a selector) | the default selection with a competence
  curriculum, once per difficulty source in CURRICULA.
Each trained arm fine-tunes the tiny student (full weights, ZeRO-2, 2 Ray Train workers) and is
evaluated on the held-out split: exact match, token F1 and loss, overall.
With --probe-steps N the scorer (loss, IFD, embeddings, hence the difficulty) is the student after N
steps on the random subset, as Cherry-LLM's IFD uses a briefly trained model: an untrained student's
IFD is noise. With --seeds N each trained arm runs N times (a new random subset, selector seed and
training order each time) and the table gives means and the loss's standard deviation: single runs
differ by up to ~0.25 in held-out loss.
Target: selected >= random of the same size, and >= the full pool.
    python benchmarks/selection_effect.py --rows 8000 --steps 120 --seeds 3
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from _common import demo_workspace, print_table, write_result

# selector settings compared; the first is the platform's default and also gets the curriculum arms
VARIANTS = {
    "filters + dedup, then random (default)": {"selector": "random"},
    "k-center coverage": {"selector": "kcenter"},
    "diverse, IFD score first (DEITA-style)": {"selector": "diverse"},
    "diverse, hardest first (loss +1)": {"selector": "diverse", "weights": {"loss": 1.0}},
}
CURRICULA = ("ifd", "length")  # difficulty sources of the competence-curriculum arms
MAX_LENGTH, MICRO_BATCH, WORKERS = 128, 16, 2
METRICS = ("exact_match", "token_f1", "rouge_l", "loss")


def mean_tokens(data: str, tokenizer) -> float:
    """Mean training tokens per usable row of ``data`` (prompt and response, as the trainer sees them)."""
    from instructscale.tokens import tokenize
    from instructscale.train.data import read_training_columns

    rows = read_training_columns(data, ["id", "instruction", "input", "output", "messages"]).to_pylist()
    return sum(len(tokenize(r, tokenizer, MAX_LENGTH).input_ids) for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--eval-rows", type=int, default=400)
    parser.add_argument(
        "--steps", type=int, default=150, help="steps on the full pool; their tokens are every arm's training budget"
    )
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeats (random subset, selector seed and training order vary); figures are means",
    )
    parser.add_argument(
        "--probe-steps",
        type=int,
        default=0,
        help="score with a probe: the student briefly trained on the random subset "
        "(Cherry-LLM's 'pre-experienced' model); 0: the untrained student scores",
    )
    args = parser.parse_args()

    import numpy as np
    import pyarrow.dataset as pads
    from transformers import AutoTokenizer

    from instructscale.config import parse_config
    from instructscale.evaluate import EvalConfig, evaluate
    from instructscale.models.tiny import build_tiny_models
    from instructscale.select.config import SelectConfig
    from instructscale.select.stage import select
    from instructscale.storage import write_parquet
    from instructscale.train.config import TrainConfig
    from instructscale.train.stage import train

    work, pool, held_out = demo_workspace("bench-effect-", args.rows, args.eval_rows)
    student = build_tiny_models(work / "models")["student"]

    table = pads.dataset(pool, format="parquet").to_table()
    k = int(args.fraction * table.num_rows)

    def random_subset(seed: int) -> str:
        pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=k, replace=False))
        write_parquet(str(work / f"random-{seed}" / "part-0.parquet"), table.take(pick))
        return str(work / f"random-{seed}")

    tokenizer = AutoTokenizer.from_pretrained(student)
    row_tokens = functools.cache(lambda data: mean_tokens(data, tokenizer))  # each arm's data, once
    token_budget = args.steps * MICRO_BATCH * WORKERS * row_tokens(pool)

    def run(name: str, data: str, curriculum: str, seed: int, steps: int | None = None) -> dict:
        steps = steps or round(token_budget / (MICRO_BATCH * WORKERS * row_tokens(data)))
        cfg = parse_config(
            TrainConfig,
            {
                "data": data,
                "model": student,
                "out_dir": str(work / f"train-{name}"),
                "lora": None,
                "seed": seed,
                "max_steps": steps,
                "epochs": 1000,
                "micro_batch_size": MICRO_BATCH,
                "max_length": MAX_LENGTH,
                "optim": {"lr": 3e-3},
                "checkpoint_every": steps,
                "scaling": {"num_workers": WORKERS},
                "curriculum": curriculum,
            },
        )
        return train(cfg)

    def held_out_scores(model: str, name: str) -> dict:
        ev = evaluate(
            parse_config(
                EvalConfig,
                {
                    "model": model,
                    "data": held_out,
                    "out_dir": str(work / f"eval-{name}"),
                    "backend": {"kind": "hf"},
                    "sampling": {"max_tokens": 24},
                },
            )
        )
        return {m: ev["overall"][m] for m in METRICS}

    probe = run("probe", random_subset(0), "random", 0, args.probe_steps)["model"] if args.probe_steps else student
    features = work / "select-0-0" / "features"  # the first selection computes them, the rest reuse them

    def select_rows(out: Path, seed: int, variant: dict, difficulty: str = "ifd") -> dict:
        return select(
            parse_config(
                SelectConfig,
                {
                    "input": pool,
                    "out_dir": str(out),
                    "filters": ["length", "repetition", "control_characters", "refusal", "reference_answer"],
                    "scorers": [{"kind": "model", "model": probe}],
                    "features_dir": str(features) if features.exists() else None,
                    "difficulty": {"source": difficulty},
                    "budget": {"budget": k, "stratify_by": "task"},
                    **variant,
                    "selector": {"kind": variant["selector"], "seed": seed},
                },
            )
        )

    default = next(iter(VARIANTS))
    runs: dict[str, list[dict]] = {"base student": [held_out_scores(student, "base") | {"steps": 0}]}
    sels = {}
    for seed in range(args.seeds):  # each repeat: new random subsets, selector seeds and training order
        arms = [("full pool", pool, "random"), (f"random {k} rows", random_subset(seed), "random")]
        for i, (name, selector) in enumerate(VARIANTS.items()):
            sels[name] = select_rows(work / f"select-{seed}-{i}", seed, selector)
            arms.append((f"selected {k}, {name}", str(work / f"select-{seed}-{i}" / "selected"), "random"))
        for source in CURRICULA:  # the default's rows again, with each difficulty column
            select_rows(work / f"select-{seed}-{source}", seed, VARIANTS[default], source)
            arms.append(
                (
                    f"selected {k}, {default} + curriculum ({source})",
                    str(work / f"select-{seed}-{source}" / "selected"),
                    "competence",
                )
            )
        for i, (name, data, curriculum) in enumerate(arms):
            trained = run(f"{seed}-{i}", data, curriculum, seed)
            runs.setdefault(name, []).append(
                held_out_scores(trained["model"], f"{seed}-{i}") | {"steps": trained["steps"]}
            )

    results = [
        {
            "arm": name,
            "steps": rs[0]["steps"],
            **{m: float(np.mean([r[m] for r in rs])) for m in METRICS},
            "loss_sd": float(np.std([r["loss"] for r in rs], ddof=1)) if len(rs) > 1 else 0.0,
            "runs": rs,
        }
        for name, rs in runs.items()
    ]
    print_table(results, ["arm", "steps", *METRICS, "loss_sd"])
    full, random_arm = results[1], results[2]
    verdict = {
        r["arm"]: {
            "beats_random": r["loss"] < random_arm["loss"],
            "reaches_full": r["loss"] <= full["loss"],
            "loss_vs_random": r["loss"] - random_arm["loss"],
        }
        for r in results[3:]
    }
    print(f"\nheld-out figures are means over {args.seeds} run(s); loss_sd: their standard deviation")
    print(f"selection ({default}): {sels[default]['removed']} removed, {sels[default]['selected']} selected")
    print("verdict on mean held-out loss:", json.dumps(verdict, indent=1))
    write_result(
        "selection_effect",
        {
            "args": vars(args),
            "results": results,
            "verdict": verdict,
            "select": {name: m | {"config": None} for name, m in sels.items()},
        },
    )


if __name__ == "__main__":
    main()
