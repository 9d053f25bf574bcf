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

import functools
import json
from pathlib import Path

from harness import Bench

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


def arguments(p) -> None:
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--eval-rows", type=int, default=400)
    p.add_argument(
        "--steps", type=int, default=150, help="steps on the full pool; their tokens are every arm's training budget"
    )
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeats (random subset, selector seed and training order vary); figures are means",
    )
    p.add_argument(
        "--probe-steps",
        type=int,
        default=0,
        help="score with a probe: the student briefly trained on the random subset "
        "(Cherry-LLM's 'pre-experienced' model); 0: the untrained student scores",
    )


class Workspace:
    """The student, the pool, the token budget, and the steps every arm is made of."""

    def __init__(self, bench: Bench):
        import pyarrow.dataset as pads
        from transformers import AutoTokenizer

        from instructscale.models.tiny import build_tiny_models

        self.args, self.work = bench.args, bench.work
        bench.ray()
        self.pool, self.held_out = bench.demo(self.args.rows, self.args.eval_rows)
        self.student = build_tiny_models(self.work / "models")["student"]
        self.table = pads.dataset(self.pool, format="parquet").to_table()
        self.k = int(self.args.fraction * self.table.num_rows)
        tokenizer = AutoTokenizer.from_pretrained(self.student)
        self.row_tokens = functools.cache(lambda data: mean_tokens(data, tokenizer))  # each arm's data, once
        self.token_budget = self.args.steps * MICRO_BATCH * WORKERS * self.row_tokens(self.pool)
        self.features = self.work / "select-0-0" / "features"  # the first selection computes them, the rest reuse them
        self.probe = self.student

    def random_subset(self, seed: int) -> str:
        import numpy as np

        from instructscale.storage import write_parquet

        pick = np.sort(np.random.default_rng(seed).choice(self.table.num_rows, size=self.k, replace=False))
        write_parquet(str(self.work / f"random-{seed}" / "part-0.parquet"), self.table.take(pick))
        return str(self.work / f"random-{seed}")

    def train(self, name: str, data: str, curriculum: str, seed: int, steps: int | None = None) -> dict:
        from instructscale.config import parse_config
        from instructscale.train.config import TrainConfig
        from instructscale.train.stage import train

        steps = steps or round(self.token_budget / (MICRO_BATCH * WORKERS * self.row_tokens(data)))
        cfg = {"data": data, "model": self.student, "out_dir": str(self.work / f"train-{name}"), "lora": None}
        cfg |= {"seed": seed, "max_steps": steps, "epochs": 1000, "micro_batch_size": MICRO_BATCH}
        cfg |= {"max_length": MAX_LENGTH, "optim": {"lr": 3e-3}, "checkpoint_every": steps}
        cfg |= {"scaling": {"num_workers": WORKERS}, "curriculum": curriculum}
        return train(parse_config(TrainConfig, cfg))

    def scores(self, model: str, name: str) -> dict:
        from instructscale.config import parse_config
        from instructscale.evaluate import EvalConfig, evaluate

        cfg = {"model": model, "data": self.held_out, "out_dir": str(self.work / f"eval-{name}")}
        ev = evaluate(parse_config(EvalConfig, {**cfg, "backend": {"kind": "hf"}, "sampling": {"max_tokens": 24}}))
        return {m: ev["overall"][m] for m in METRICS}

    def select(self, out: Path, seed: int, variant: dict, difficulty: str = "ifd") -> dict:
        from instructscale.config import parse_config
        from instructscale.select.config import SelectConfig
        from instructscale.select.stage import select

        filters = ["length", "repetition", "control_characters", "refusal", "reference_answer"]
        cfg = {
            "input": self.pool,
            "out_dir": str(out),
            "filters": filters,
            "scorers": [{"kind": "model", "model": self.probe}],
        }
        cfg |= {"features_dir": str(self.features) if self.features.exists() else None}
        cfg |= {"difficulty": {"source": difficulty}, "budget": {"budget": self.k, "stratify_by": "task"}}
        return select(
            parse_config(SelectConfig, {**cfg, **variant, "selector": {"kind": variant["selector"], "seed": seed}})
        )


def seed_arms(ws: Workspace, seed: int, sels: dict) -> list[tuple[str, str, str]]:
    """(name, data, curriculum) of every trained arm at ``seed``: new random subsets and selector seeds."""
    default, k = next(iter(VARIANTS)), ws.k
    arms = [("full pool", ws.pool, "random"), (f"random {k} rows", ws.random_subset(seed), "random")]
    for i, (name, selector) in enumerate(VARIANTS.items()):
        sels[name] = ws.select(ws.work / f"select-{seed}-{i}", seed, selector)
        arms.append((f"selected {k}, {name}", str(ws.work / f"select-{seed}-{i}" / "selected"), "random"))
    for source in CURRICULA:  # the default's rows again, with each difficulty column
        out = ws.work / f"select-{seed}-{source}"
        ws.select(out, seed, VARIANTS[default], source)
        arms.append((f"selected {k}, {default} + curriculum ({source})", str(out / "selected"), "competence"))
    return arms


def summarise(runs: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    import numpy as np

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
    full, random_arm = results[1], results[2]
    verdict = {
        r["arm"]: {
            "beats_random": r["loss"] < random_arm["loss"],
            "reaches_full": r["loss"] <= full["loss"],
            "loss_vs_random": r["loss"] - random_arm["loss"],
        }
        for r in results[3:]
    }
    return results, verdict


def main() -> None:
    bench = Bench("selection_effect", __doc__, arguments)
    ws, args = Workspace(bench), bench.args
    if args.probe_steps:
        ws.probe = ws.train("probe", ws.random_subset(0), "random", 0, args.probe_steps)["model"]
    runs: dict[str, list[dict]] = {"base student": [ws.scores(ws.student, "base") | {"steps": 0}]}
    sels: dict = {}
    for seed in range(args.seeds):  # each repeat: new random subsets, selector seeds and training order
        for i, (name, data, curriculum) in enumerate(seed_arms(ws, seed, sels)):
            trained = ws.train(f"{seed}-{i}", data, curriculum, seed)
            runs.setdefault(name, []).append(ws.scores(trained["model"], f"{seed}-{i}") | {"steps": trained["steps"]})
    results, verdict = summarise(runs)
    bench.results = results
    bench.table(["arm", "steps", *METRICS, "loss_sd"])
    default = next(iter(VARIANTS))
    print(f"\nheld-out figures are means over {args.seeds} run(s); loss_sd: their standard deviation")
    print(f"selection ({default}): {sels[default]['removed']} removed, {sels[default]['selected']} selected")
    print("verdict on mean held-out loss:", json.dumps(verdict, indent=1))
    bench.write(verdict=verdict, select={name: m | {"config": None} for name, m in sels.items()})


if __name__ == "__main__":
    main()
