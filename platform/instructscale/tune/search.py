"""Ray Tune search: each trial runs the selection decisions (optional) and the training stage with
its sampled settings; Optuna proposes, ASHA stops trials whose held-out loss lags at a rung.

A trial drives its own Ray Train run from a helper thread and forwards every held-out evaluation
that the workers log to ``metrics.jsonl`` as a Tune result, so ASHA sees the curve as it grows.
An interrupted search resumes with ``Tuner.restore``; the best finished trial's model is copied to
``out_dir/best_model``, and the trials are written as a table and a plot.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from instructscale.io import existing_path, model_ref, write_json_atomic
from instructscale.select.config import SelectConfig
from instructscale.select.stage import select
from instructscale.train.config import TrainConfig
from instructscale.train.stage import train
from instructscale.train.worker import METRICS
from instructscale.tune.config import Param, TuneConfig, merge, nest

log = logging.getLogger(__name__)
METRIC = "eval_loss"


def _domain(p: Param):
    if p.choice is not None:
        return tune.choice(p.choice)
    if p.uniform is not None:
        return tune.uniform(*p.uniform)
    if p.loguniform is not None:
        return tune.loguniform(*p.loguniform)
    return tune.randint(*p.randint)


def _configs(cfg: TuneConfig, sampled: dict, trial_dir: Path) -> tuple[SelectConfig | None, TrainConfig]:
    """The trial's select and train configs: the base sections with the sampled values applied."""
    picked = nest(sampled)
    data = cfg.data
    select_cfg = None
    if cfg.select is not None:
        options = merge(cfg.select.model_dump(), picked.get("select", {}))
        select_cfg = SelectConfig(**options, input=cfg.data, out_dir=str(trial_dir / "select"),
                                  features_dir=str(Path(cfg.out_dir) / "features" / "features"))
        data = str(trial_dir / "select" / "selected")
    options = merge(cfg.train.model_dump(), picked.get("train", {}))
    train_cfg = TrainConfig(**options, data=data, model=cfg.model, eval_data=cfg.eval_data,
                            out_dir=str(trial_dir / "train"))
    return select_cfg, train_cfg


def _trial(sampled: dict, cfg_json: str) -> None:
    """One Tune trial: (re)select, train in a helper thread, forward held-out losses to Tune."""
    cfg = TuneConfig.model_validate_json(cfg_json)
    trial_dir = Path(cfg.out_dir) / "trials" / tune.get_context().get_trial_id()
    select_cfg, train_cfg = _configs(cfg, sampled, trial_dir)
    if select_cfg is not None:
        select(select_cfg)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["manifest"] = train(train_cfg)
        except BaseException as err:  # handed to the trial thread
            outcome["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    metrics_file, seen = Path(train_cfg.out_dir) / METRICS, 0
    while True:
        alive = worker.is_alive()
        lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
        for line in lines[seen:]:
            record = json.loads(line)
            if METRIC in record:
                tune.report({"step": record["step"], METRIC: record[METRIC], "loss": record["loss"]})
        seen = len(lines)
        if not alive:
            break
        time.sleep(0.5)
    if "error" in outcome:
        raise outcome["error"]


def _write_results(cfg: TuneConfig, results, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = []
    for r in results:
        last = r.metrics or {}
        trained = Path(cfg.out_dir) / "trials" / str(last.get("trial_id")) / "train"
        finished = (trained / "_manifest.json").exists()
        rows.append({"trial_id": last.get("trial_id"), **{f"config/{k}": v for k, v in r.config.items()},
                     METRIC: last.get(METRIC), "steps": last.get("step"),
                     "status": "error" if r.error else ("completed" if finished else "stopped_early"),
                     "time_s": last.get("time_total_s"), "model": str(trained / "model") if finished else None})
    table = pd.DataFrame(rows).sort_values(METRIC, na_position="last")
    table.to_csv(out / "trials.csv", index=False)
    table.astype({c: str for c in table.columns if c.startswith("config/")}).to_parquet(out / "trials.parquet")

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        df = r.metrics_dataframe
        if df is not None and METRIC in df:
            ax.plot(df["step"], df[METRIC], marker="o", label=str((r.metrics or {}).get("trial_id")))
    ax.set_xlabel("step")
    ax.set_ylabel(f"{METRIC} (held out)")
    ax.set_title("trials (ASHA stops the lagging ones)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "trials.png", dpi=100)
    plt.close(fig)

    done = table[table["status"] == "completed"]
    if done.empty:
        raise RuntimeError(f"tune: no trial finished; see {out / 'trials.csv'}")
    best = done.iloc[0]
    tmp = out / ".best_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best["model"], tmp)
    shutil.rmtree(out / "best_model", ignore_errors=True)
    os.replace(tmp, out / "best_model")
    return {"best_trial": best["trial_id"], "best_eval_loss": float(best[METRIC]),
            "best_config": {k[len("config/"):]: getattr(best[k], "item", lambda v=best[k]: v)()
                            for k in table.columns if k.startswith("config/")},
            "best_model": str(out / "best_model"), "trials": len(table),
            "by_status": table["status"].value_counts().to_dict()}


def run_search(cfg: TuneConfig) -> dict:
    """Run (or resume) the search; returns the summary written to ``out_dir/_manifest.json``."""
    out = Path(cfg.out_dir).resolve()
    cfg = cfg.model_copy(update={"data": existing_path(cfg.data, "data"), "model": model_ref(cfg.model),
                                 "eval_data": existing_path(cfg.eval_data, "eval_data"), "out_dir": str(out)})
    out.mkdir(parents=True, exist_ok=True)
    if cfg.select is not None:  # score the pool once; trials only re-decide from these features
        select(SelectConfig(**cfg.select.model_dump(), input=cfg.data, out_dir=str(out / "features")))

    trainable = tune.with_resources(tune.with_parameters(_trial, cfg_json=cfg.model_dump_json()),
                                    {"cpu": cfg.trial_cpus})
    path = out / "search"
    if tune.Tuner.can_restore(str(path)):
        log.info("tune: resuming the search in %s", path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if cfg.searcher == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(metric=METRIC, mode="min", seed=cfg.seed)
        else:
            search_alg = None
        scheduler = ASHAScheduler(time_attr="step", metric=METRIC, mode="min", grace_period=cfg.grace_period,
                                  reduction_factor=cfg.reduction_factor,
                                  # above the last step: ASHA only cuts at rungs, a full trial exports its model
                                  max_t=max(cfg.train.max_steps or 10**6, cfg.grace_period) + 1)
        tuner = tune.Tuner(
            trainable, param_space={k: _domain(p) for k, p in cfg.space.items()},
            tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=cfg.num_samples,
                                        max_concurrent_trials=cfg.max_concurrent),
            run_config=tune.RunConfig(name="search", storage_path=str(out), verbose=1))
    t0 = time.time()
    results = tuner.fit()
    summary = _write_results(cfg, results, out)
    summary |= {"seconds": round(time.time() - t0, 2), "trials_table": str(out / "trials.csv"),
                "plot": str(out / "trials.png")}
    write_json_atomic(out / "_manifest.json", summary)
    return summary

