"""The papers' selectors against random on the real model: `instructscale experiment` over
configs/selection_arms.yaml (run `instructscale pipeline configs/smollm2.yaml` first: the experiment
reads its pool, held-out rows and student), with ``--set`` overrides; the experiment's result goes
to benchmarks/results/selection_arms.json with the settings it ran with. Interrupted, it resumes.
    python benchmarks/selection_arms.py --set train.max_tokens=30000 --arms random,random_raw,longest,ifd_warmup
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
from scipy.stats import spearmanr

from harness import Bench, print_table, write_result
from instructscale.config import parse_overrides
from instructscale.experiment.config import ExperimentConfig
from instructscale.models.catalog import resolve
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


def ifd_by_scorer(out_dir: str) -> dict[str, dict]:
    """Each scoring's IFD per row id, keyed by its scorer model (the student, or a warm-up of it)."""
    out = {}
    for manifest in sorted(Path(out_dir, "features").glob("*/_manifest.json")):
        models = [s.get("model") for s in json.loads(manifest.read_text())["config"]["scorers"]]
        if models:
            t = pads.dataset(manifest.parent / "features" / "rows", format="parquet").to_table(columns=["id", "ifd"])
            out[models[0]] = {i: v for i, v in zip(t["id"].to_pylist(), t["ifd"].to_pylist()) if v is not None}
    return out


def warmup_agreement(out_dir: str, student: str) -> dict[str, dict]:
    """Spearman of each warm-up's IFD with the untrained student's over the rows both scored: how far
    Cherry's warm-up reorders the pool (the figure Superfiltering reports for a smaller scorer)."""
    ifd = ifd_by_scorer(out_dir)
    base = ifd.get(student, {})
    out = {}
    for model, values in ifd.items():
        if model != student and base:
            ids = sorted(set(base) & set(values))
            rho = spearmanr([base[i] for i in ids], [values[i] for i in ids]).statistic
            out[Path(model).parents[1].name] = {"spearman": round(float(rho), 4), "rows": len(ids)}
    return out


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
    {
        **result,
        "ifd_spearman_warmup_vs_student": warmup_agreement(cfg.out_dir, resolve(cfg.model)),
        "config": cfg.model_dump(mode="json"),
        "overrides": bench.args.set,
        "arms_run": bench.args.arms,
    },
)
