"""The papers' selectors against random on the real model: `instructscale experiment` over
configs/selection_arms.yaml (run `instructscale pipeline configs/smollm2.yaml` first: the experiment
reads its pool, held-out rows and student), with ``--set`` overrides; the experiment's result goes
to benchmarks/results/selection_arms.json with the settings it ran with. Interrupted, it resumes.
    python benchmarks/selection_arms.py --set train.max_tokens=30000 --arms random,random_raw,longest,ifd_warmup
"""

from __future__ import annotations

from harness import Bench, print_table, write_result
from instructscale.config import parse_overrides
from instructscale.experiment.config import ExperimentConfig
from instructscale.process import load
from instructscale.runtime import RayConfig, init_ray

bench = Bench(
    "selection_arms",
    __doc__,
    lambda p: (
        p.add_argument("--config", default="configs/selection_arms.yaml"),
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE"),
        p.add_argument("--arms", help="comma-separated: run only these arms of the config"),
    ),
)
cfg = load(ExperimentConfig, bench.args.config, parse_overrides(bench.args.set))
if bench.args.arms:
    cfg = ExperimentConfig.model_validate(
        {
            **cfg.model_dump(mode="json"),
            "arms": [a for a in cfg.model_dump()["arms"] if a["name"] in bench.args.arms.split(",")],
        }
    )
init_ray(RayConfig())

from instructscale.experiment.run import run_experiment  # noqa: E402  (Ray Tune: once Ray is up)

result = run_experiment(cfg)
rows = [
    {
        "arm": a["arm"],
        cfg.metric: round(a["mean"], 3),
        "ci95": [round(x, 3) for x in a["ci95"]],
        "vs random": round(a.get("paired_vs_random", {}).get("diff", 0.0), 3),
        "verdict": a.get("paired_vs_random", {}).get("verdict", "baseline"),
        "selection s": a["selection_seconds"],
        "training s": a["training_seconds"],
    }
    for a in result["arms"]
]
print_table(rows, list(rows[0]))
write_result(
    "selection_arms",
    {**result, "config": cfg.model_dump(mode="json"), "overrides": bench.args.set, "arms_run": bench.args.arms},
)
