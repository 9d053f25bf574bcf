"""Ray Tune search: each trial runs the selection decisions (optional) and the training stage with
its sampled settings; Optuna proposes, ASHA stops trials whose held-out loss lags at a rung.

A trial drives its own Ray Train run from a helper thread and forwards every held-out evaluation
that the workers log to ``metrics.jsonl`` as a Tune result, so ASHA sees the curve as it grows.
An interrupted search resumes with ``Tuner.restore``; the best finished trial's model is copied to
``out_dir/best_model``, and the trials are written as a table and a plot.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from instructscale import storage
from instructscale.lifecycle import require_dataset
from instructscale.process import Shipped
from instructscale.progress import verbose
from instructscale.runtime import configure_ray_data
from instructscale.select.config import SelectConfig
from instructscale.select.stage import select
from instructscale.train.config import TrainConfig
from instructscale.train.metrics import METRICS
from instructscale.train.stage import train
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


def _configs(cfg: TuneConfig, sampled: dict, trial_dir: str) -> tuple[SelectConfig | None, TrainConfig]:
    """The trial's select and train configs: the base sections with the sampled values applied."""
    picked = nest(sampled)
    data = cfg.data
    select_cfg = None
    if cfg.select is not None:
        options = merge(
            cfg.select.with_models({"student": cfg.model}).model_dump(mode="json"), picked.get("select", {})
        )
        select_cfg = SelectConfig(
            **options,
            input=cfg.data,
            out_dir=storage.join(trial_dir, "select"),
            features_dir=storage.join(cfg.out_dir, "features", "features"),
            **cfg.shared(),
        )
        data = storage.join(trial_dir, "select", "selected")
    options = merge(cfg.train.model_dump(mode="json"), picked.get("train", {}))
    train_cfg = TrainConfig(
        **options,
        data=data,
        model=cfg.model,
        eval_data=cfg.eval_data,
        out_dir=storage.join(trial_dir, "train"),
        **cfg.shared(),
    )
    return select_cfg, train_cfg


def _trial(sampled: dict, shipped: Shipped[TuneConfig]) -> None:
    """One Tune trial: (re)select, train in a helper thread, forward held-out losses to Tune."""
    cfg = shipped.load()
    configure_ray_data()  # the trial's own selection runs Ray Data in this process
    trial_dir = storage.join(cfg.out_dir, "trials", tune.get_context().get_trial_id())
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
    metrics_file, seen, reported = storage.join(train_cfg.out_dir, METRICS), 0, _reported_step()
    while True:
        alive = worker.is_alive()
        lines = storage.read_text(metrics_file).splitlines() if storage.is_file(metrics_file) else []
        for line in lines[seen:]:
            record = json.loads(line)
            if METRIC in record and record["step"] > reported:  # a restored trial re-reads its file
                _report({"step": record["step"], METRIC: record[METRIC], "loss": record["loss"]})
                reported = record["step"]
        seen = len(lines)
        if not alive:
            break
        time.sleep(0.5)
    if "error" in outcome:
        raise outcome["error"]


def _reported_step() -> int:
    """The last step this trial reported before it was interrupted (0 for a fresh trial)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return json.loads(Path(folder, "reported.json").read_text())["step"]


def _report(metrics: dict) -> None:
    """Report to Tune with a tiny checkpoint holding the step, so a restored search does not report it twice."""
    with tempfile.TemporaryDirectory(dir=storage.scratch_root()) as folder:
        Path(folder, "reported.json").write_text(json.dumps({"step": metrics["step"]}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _trials_table(cfg: TuneConfig, results):
    import pandas as pd

    rows = []
    for r in results:
        last = r.metrics or {}
        trained = storage.join(cfg.out_dir, "trials", str(last.get("trial_id")), "train")
        finished = storage.is_file(storage.join(trained, "_manifest.json"))
        rows.append(
            {
                "trial_id": last.get("trial_id"),
                **{f"config/{k}": v for k, v in r.config.items()},
                METRIC: last.get(METRIC),
                "steps": last.get("step"),
                "status": "error" if r.error else ("completed" if finished else "stopped_early"),
                "time_s": last.get("time_total_s"),
                "model": storage.join(trained, "model") if finished else None,
            }
        )
    return pd.DataFrame(rows).sort_values(METRIC, na_position="last")


def _plot_trials(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_results(cfg: TuneConfig, results) -> dict:
    """trials.csv, trials.parquet, trials.png and best_model/ under out_dir; returns the summary."""
    table = _trials_table(cfg, results)
    scratch = storage.local_scratch("tune")
    table.to_csv(os.path.join(scratch, "trials.csv"), index=False)
    table.astype({c: str for c in table.columns if c.startswith("config/")}).to_parquet(
        os.path.join(scratch, "trials.parquet")
    )
    _plot_trials(results, os.path.join(scratch, "trials.png"))
    for name in ("trials.csv", "trials.parquet", "trials.png"):
        with open(os.path.join(scratch, name), "rb") as f:
            storage.write_bytes(storage.join(cfg.out_dir, name), f.read())
    done = table[table["status"] == "completed"]
    if done.empty:
        raise RuntimeError(f"tune: no trial finished; see {storage.join(cfg.out_dir, 'trials.csv')}")
    best = done.iloc[0]
    best_model = storage.join(cfg.out_dir, "best_model")
    storage.remove(best_model)
    storage.copy_tree(best["model"], best_model)
    return {
        "best_trial": best["trial_id"],
        "best_eval_loss": float(best[METRIC]),
        "best_config": {
            k[len("config/") :]: getattr(best[k], "item", lambda v=best[k]: v)()
            for k in table.columns
            if k.startswith("config/")
        },
        "best_model": best_model,
        "trials": len(table),
        "by_status": table["status"].value_counts().to_dict(),
    }


def _check(cfg: TuneConfig) -> TuneConfig:
    return cfg.model_copy(
        update={
            "data": require_dataset(cfg.data, "data"),
            "model": storage.model_ref(cfg.model),
            "eval_data": require_dataset(cfg.eval_data, "eval_data"),
            "out_dir": storage.normalize(cfg.out_dir),
        }
    )


def storage_args(out_dir: str) -> dict:
    """RunConfig's storage settings for a search under ``out_dir/search`` (any URI)."""
    fs, root = storage.resolve(out_dir)
    return {"storage_path": root, "storage_filesystem": None if storage.is_local(out_dir) else fs}


def resumed(out_dir: str, trainable) -> tune.Tuner | None:
    """The interrupted search under ``out_dir/search`` restored (unfinished and errored trials run
    again), or None when there is none."""
    fs = storage_args(out_dir)["storage_filesystem"]
    path = storage.join(out_dir, "search")
    path = storage.resolve(path)[1] if fs else path
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        return None
    return tune.Tuner.restore(
        path, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
    )


def fit_quietly(tuner: tune.Tuner) -> tune.ResultGrid:
    """``tuner.fit()``; what Tune prints whatever its verbosity (a box with the search's settings,
    where its results are) goes to the log file unless ``-v``."""
    if verbose():
        return tuner.fit()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = tuner.fit()
    log.info("ray tune: %s", printed.getvalue().strip())
    return results


def _tuner(cfg: TuneConfig, trainable) -> tune.Tuner:
    """A new search, or the interrupted one under ``out_dir/search`` restored."""
    if tuner := resumed(cfg.out_dir, trainable):
        log.info("tune: resuming the search in %s", storage.join(cfg.out_dir, "search"))
        return tuner
    search_alg = None
    if cfg.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=METRIC, mode="min", seed=cfg.seed)
    scheduler = ASHAScheduler(
        time_attr="step",
        metric=METRIC,
        mode="min",
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        # above the last step: ASHA only cuts at rungs, a full trial exports its model
        max_t=max(cfg.train.max_steps or 10**6, cfg.grace_period) + 1,
    )
    return tune.Tuner(
        trainable,
        param_space={k: _domain(p) for k, p in cfg.space.items()},
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name="search",
            **storage_args(cfg.out_dir),
            verbose=1 if verbose() else 0,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def run_search(cfg: TuneConfig) -> dict:
    """Run (or resume) the search; returns the summary written to ``out_dir/_manifest.json``."""
    cfg = _check(cfg)
    if cfg.select is not None:  # score the pool once; trials only re-decide from these features
        select(
            SelectConfig(
                **cfg.select.with_models({"student": cfg.model}).model_dump(mode="json"),
                input=cfg.data,
                out_dir=storage.join(cfg.out_dir, "features"),
                **cfg.shared(),
            )
        )
    trainable = tune.with_resources(tune.with_parameters(_trial, shipped=Shipped.of(cfg)), {"cpu": cfg.trial_cpus})
    t0 = time.time()
    results = fit_quietly(_tuner(cfg, trainable))
    summary = _write_results(cfg, results)
    summary |= {
        "seconds": round(time.time() - t0, 2),
        "trials_table": storage.join(cfg.out_dir, "trials.csv"),
        "plot": storage.join(cfg.out_dir, "trials.png"),
    }
    storage.write_json(storage.join(cfg.out_dir, "_manifest.json"), summary)
    return summary
