"""An experiment's answer: per arm the deciding metric's mean and 95% interval over seeds and
prompts, and its paired difference from the baseline (same seeds, same prompts) with a verdict,
all from :mod:`instructscale.stats`; selection compute beside training compute; a table, a plot,
and the best arm's selection as a dataset."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from instructscale import stats, storage
from instructscale.evaluate import predictions
from instructscale.experiment.config import ExperimentConfig
from instructscale.lifecycle import MANIFEST
from instructscale.markdown import markdown_table, pyplot, save_figure
from instructscale.plugins import EvalSuite
from instructscale.select import decide
from instructscale.train.metrics import METRICS, read_history


def _predictions(cfg: ExperimentConfig, trial_dir: Callable, suite: str) -> dict[tuple[str, int], dict]:
    return {
        (a.name, s): predictions(storage.join(trial_dir(cfg, a.name, s), "evaluate"), suite)
        for a in cfg.arms
        for s in cfg.seeds
    }


def _scores(
    cfg: ExperimentConfig, preds: dict, suite: EvalSuite, m: str
) -> tuple[dict[str, np.ndarray], list | None, int]:
    """(arm -> seeds x prompts scores of metric ``m``, per-prompt weights or None, prompts): the
    prompts every trial scored (none: empty scores)."""
    ids = sorted(set.intersection(*({i for i, r in p.items() if r.get(m) is not None} for p in preds.values())))
    scores = {a.name: np.array([[preds[(a.name, s)][i][m] for i in ids] for s in cfg.seeds]) for a in cfg.arms}
    first = preds[(cfg.baseline, cfg.seeds[0])]
    weights = [json.loads(first[i]["details"])[suite.weights[m]] for i in ids] if m in suite.weights else None
    return scores, weights, len(ids)


def _higher(suite: EvalSuite, m: str) -> bool | None:
    return None if m in suite.descriptive else m not in suite.lower_is_better


def suite_figures(cfg: ExperimentConfig, trial_dir: Callable) -> dict[str, dict[str, dict]]:
    """arm -> suite -> every metric's mean and ``_ci95`` over seeds and prompts, and its paired
    difference from the baseline (``<metric>_vs_<baseline>``)."""
    out: dict[str, dict[str, dict]] = {a.name: {} for a in cfg.arms}
    for suite in cfg.eval_config("unused", "unused").suite_plugins():
        preds = _predictions(cfg, trial_dir, suite.name)
        for m in suite.metrics:
            scores, weights, prompts = _scores(cfg, preds, suite, m)
            if not prompts:
                continue
            for arm in cfg.arms:
                figures = out[arm.name].setdefault(suite.name, {"prompts": prompts})
                figures |= stats.metric(m, scores[arm.name], weights)
                if arm.name != cfg.baseline:
                    pair = stats.paired(scores[cfg.baseline], scores[arm.name], _higher(suite, m), weights)
                    figures[f"{m}_vs_{cfg.baseline}"] = pair
    return out


def _compute(cfg: ExperimentConfig, arm: str, ready: dict, trial_dir: Callable) -> dict:
    """Seconds spent choosing the data (scoring, a warm-up, each seed's decisions) and training it."""
    manifests = [
        {k: storage.read_json(storage.join(trial_dir(cfg, arm, s), k, MANIFEST)) for k in ("select", "train")}
        for s in cfg.seeds
    ]
    return {
        "selection_seconds": round(
            ready["features_seconds"]
            + ready["warmup_seconds"]
            + np.mean([m["select"]["decide_seconds"] for m in manifests]),
            1,
        ),
        "training_seconds": round(float(np.mean([m["train"]["seconds"] for m in manifests])), 1),
        "training_tokens": int(
            np.mean([_trained_tokens(storage.join(trial_dir(cfg, arm, s), "train")) for s in cfg.seeds])
        ),
        "training_rows": int(np.mean([m["train"]["rows"] for m in manifests])),
    }


def _trained_tokens(train_dir: str) -> int:
    """Tokens a trial trained on, from its logged steps (with a step budget the plan counts none)."""
    return sum(r.get("tokens", 0) for r in read_history(storage.join(train_dir, METRICS)))


def compare_arms(cfg: ExperimentConfig, prepared: dict, trial_dir: Callable) -> dict:
    """experiment.json's content; also writes arms.md, arms.png and best_selection/ under out_dir."""
    suite = cfg.suite_plugin(cfg.suite)
    higher = _higher(suite, cfg.metric)
    scores, weights, prompts = _scores(cfg, _predictions(cfg, trial_dir, cfg.suite), suite, cfg.metric)
    if not prompts:
        raise RuntimeError(f"experiment: no prompt has a {cfg.metric} score in every trial")
    figures = suite_figures(cfg, trial_dir)
    arms = []
    for arm in cfg.arms:
        mean, ci = stats.mean_ci(scores[arm.name], weights)
        row = {"arm": arm.name, "about": arm.about, "seeds": cfg.seeds, "mean": mean, "ci95": ci}
        row["per_seed"] = [stats.mean_ci(seed_scores, weights)[0] for seed_scores in scores[arm.name]]
        if arm.name != cfg.baseline:
            row[f"paired_vs_{cfg.baseline}"] = stats.paired(scores[cfg.baseline], scores[arm.name], higher, weights)
        arms.append(row | _compute(cfg, arm.name, prepared[arm.name], trial_dir) | {"suites": figures[arm.name]})
    best = _best(cfg, arms, higher)
    out = {
        "metric": cfg.metric,
        "suite": cfg.suite,
        "baseline": cfg.baseline,
        "prompts": prompts,
        "seeds": cfg.seeds,
        "arms": arms,
        "best": best,
        "best_selection": _copy_selection(cfg, best, trial_dir),
        "table": storage.join(cfg.out_dir, "arms.md"),
        "plot": _plot(cfg, arms),
    }
    storage.write_text(out["table"], arms_table(out) + "\n")
    return out


def _best(cfg: ExperimentConfig, arms: list[dict], higher: bool | None) -> str:
    """The arm with the best mean among those better than the baseline; the baseline if none is."""
    better = [a for a in arms if a.get(f"paired_vs_{cfg.baseline}", {}).get("verdict") == stats.BETTER]
    if not better:
        return cfg.baseline
    return (max if higher is not False else min)(better, key=lambda a: a["mean"])["arm"]


def _copy_selection(cfg: ExperimentConfig, arm: str, trial_dir: Callable) -> str:
    """The arm's first seed's selected rows, as a dataset of their own."""
    target = storage.join(cfg.out_dir, "best_selection")
    storage.remove(target)
    storage.copy_tree(storage.join(trial_dir(cfg, arm, cfg.seeds[0]), "select", decide.SELECTED), target)
    return target


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def arms_table(result: dict) -> str:
    """The arms as a Markdown table: mean and interval, the paired difference and its verdict, compute."""
    vs = f"paired_vs_{result['baseline']}"
    rows = []
    for a in result["arms"]:
        pair = a.get(vs)
        rows.append(
            {
                "arm": a["arm"],
                result["metric"]: f"{a['mean']:.3f} {_ci(a['ci95'])}",
                f"vs {result['baseline']}": f"{pair['diff']:+.3f} {_ci(pair['diff_ci95'])}" if pair else "",
                "verdict": pair.get("verdict", "") if pair else "baseline",
                "selection s": f"{a['selection_seconds']:.0f}",
                "training s": f"{a['training_seconds']:.0f}",
                "tokens": f"{a['training_tokens']:,}",
            }
        )
    return markdown_table(rows, list(rows[0]))


def _plot(cfg: ExperimentConfig, arms: list[dict]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2, 3.2))
    means = [a["mean"] for a in arms]
    errors = [[m - a["ci95"][0] for m, a in zip(means, arms)], [a["ci95"][1] - m for m, a in zip(means, arms)]]
    colors = ["#999999" if a["arm"] == cfg.baseline else "#3b6ea5" for a in arms]
    ax.bar([a["arm"] for a in arms], means, yerr=errors, capsize=4, color=colors)
    ax.set_ylabel(f"{cfg.suite} {cfg.metric}")
    ax.set_title(f"{len(cfg.seeds)} seeds each; 95% intervals over seeds and prompts", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    uri = storage.join(cfg.out_dir, "arms.png")
    save_figure(fig, uri)
    return uri
