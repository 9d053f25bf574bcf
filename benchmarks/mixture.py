"""The mixture trade-off on the real model: `instructscale experiment` over configs/mixture.yaml (run
`instructscale pipeline configs/smollm2.yaml` first: the experiment reads its pool of task and
general rows, its held-out rows and its student), one arm per share of general rows, the same steps.
Writes benchmarks/results/mixture.json (per weight: the general share, held-out exact match with its
interval, every suite's metrics with theirs, paired differences from the tasks-only arm) and
mixture.png, the curve. Interrupted, it resumes.
    python benchmarks/mixture.py --set seeds=[0,1]
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from harness import Bench, print_table, result_path, write_result
from instructscale import storage
from instructscale.config import parse_overrides
from instructscale.experiment.config import ExperimentConfig
from instructscale.process import load
from instructscale.runtime import RayConfig, init_ray

GENERAL = "demo/general"
CURVE = [("holdout", "exact_match"), ("general", "rouge_l"), ("ifbench", "prompt_loose")]

bench = Bench(
    "mixture",
    __doc__,
    lambda p: (
        p.add_argument("--config", default="configs/mixture.yaml"),
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE"),
    ),
)
cfg = load(ExperimentConfig, bench.args.config, parse_overrides(bench.args.set))
init_ray(RayConfig())

from instructscale.experiment.run import run_experiment, trial_dir  # noqa: E402  (Ray Tune: once Ray is up)


def general_fraction(arm: str) -> float:
    """The arm's target share of general rows, from its mixture weights."""
    weights = cfg.select_config(cfg.arm(arm), 0, "unused").mix.weights
    return round(weights.get(GENERAL, 0.0) / sum(weights.values()), 4)


def selected_share(arm: str) -> float:
    """The share of general rows the arm's selections got, averaged over seeds."""
    shares = []
    for seed in cfg.seeds:
        manifest = storage.read_json(storage.join(trial_dir(cfg, arm, seed), "select", "_manifest.json"))
        shares.append(manifest["mix"].get(GENERAL, {}).get("share", 0.0))
    return round(sum(shares) / len(shares), 4)


def entry(a: dict) -> dict:
    pair = a.get(f"paired_vs_{cfg.baseline}")
    return {
        "arm": a["arm"],
        "general_fraction": general_fraction(a["arm"]),
        "general_share_selected": selected_share(a["arm"]),
        "exact_match": a["mean"],
        "exact_match_ci95": a["ci95"],
        "per_seed": a["per_seed"],
        **({f"exact_match_vs_{cfg.baseline}": pair} if pair else {}),
        "suites": a["suites"],
        "training_tokens": a["training_tokens"],
        "training_seconds": a["training_seconds"],
    }


def plot(weights: list[dict], path: Path) -> None:
    """Each curve metric against the general share, with its 95% interval."""
    fig, axes = plt.subplots(1, len(CURVE), figsize=(4 * len(CURVE), 3.2))
    x = [w["general_fraction"] for w in weights]
    for ax, (suite, metric) in zip(axes, CURVE):
        figures = [w["suites"][suite] for w in weights]
        y = [f[metric] for f in figures]
        err = [
            [v - f[f"{metric}_ci95"][0] for v, f in zip(y, figures)],
            [f[f"{metric}_ci95"][1] - v for v, f in zip(y, figures)],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3)
        ax.set(title=f"{suite} {metric}", xlabel="share of general rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


result = run_experiment(cfg)
weights = sorted((entry(a) for a in result["arms"]), key=lambda w: w["general_fraction"])
rows = [
    {
        "arm": w["arm"],
        "general": f"{w['general_fraction']:.2f} ({w['general_share_selected']:.2f})",
        **{
            f"{s} {m}": "{:.3f} [{:.3f}, {:.3f}]".format(w["suites"][s][m], *w["suites"][s][f"{m}_ci95"])
            for s, m in CURVE
        },
        "words (general)": round(w["suites"]["general"]["words"], 1),
    }
    for w in weights
]
print_table(rows, list(rows[0]))
plot(weights, result_path("mixture.png"))
write_result(
    "mixture",
    {
        "metric": result["metric"],
        "baseline": result["baseline"],
        "seeds": result["seeds"],
        "prompts": result["prompts"],
        "weights": weights,
        "failed_arms": result["failed_arms"],
        "seconds": result["seconds"],
        "plot": "benchmarks/results/mixture.png",
        "config": json.loads(cfg.model_dump_json()),
        "overrides": bench.args.set,
    },
)
