"""Running an experiment: the pool scored once per distinct scoring (and warm-up model), then every
arm x seed as one Ray Tune trial of a grid (no scheduler, no early stopping): select, train on the
token budget, evaluate. Each trial's stages live under ``trials/<arm>-seed<seed>`` and resume like
any stage, and the search itself restores with ``Tuner.restore``: an interrupted experiment reruns
only what did not finish."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import ray
from ray import tune

from instructscale import storage
from instructscale.evaluate import evaluate
from instructscale.experiment.analysis import compare_arms
from instructscale.experiment.config import Arm, ExperimentConfig
from instructscale.lifecycle import require_dataset
from instructscale.models import catalog
from instructscale.plugins import EMBEDDING
from instructscale.process import Shipped, prepare
from instructscale.progress import Progress
from instructscale.runtime import configure_ray_data
from instructscale.select import decide
from instructscale.select.config import SelectConfig
from instructscale.select.stage import select
from instructscale.train.stage import train
from instructscale.tune.search import fit_quietly, resumed, storage_args

log = logging.getLogger(__name__)
WARMUP_TOKENS = 10**15  # a warm-up run is limited by its steps, not by the token budget


def trial_dir(cfg: ExperimentConfig, arm: str, seed: int) -> str:
    return storage.join(cfg.out_dir, "trials", f"{arm}-seed{seed}")


class Features:
    """Each distinct scoring of the pool computed once (a full selection under
    ``features/<key>``); later selections with the same scoring reuse its features."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg, self.done = cfg, {}

    def of(self, sel: SelectConfig) -> tuple[str, float]:
        """(features_dir, seconds it took to compute) for ``sel``'s scoring."""
        identity = json.dumps(sel.feature_identity(), sort_keys=True, default=str)
        key = hashlib.sha256(identity.encode()).hexdigest()[:12]
        if key not in self.done:
            folder = storage.join(self.cfg.out_dir, "features", key)
            manifest = select(sel.model_copy(update={"out_dir": folder, "features_dir": None}))
            self.done[key] = (storage.join(folder, "features"), manifest["features_seconds"])
        return self.done[key]


def _warmup(cfg: ExperimentConfig, arm: Arm, features: Features) -> tuple[str, float]:
    """Cherry LLM's warm-up: the student trained ``warmup.steps`` steps on a diverse sample (k-center
    on the student's embeddings, else random) of ``warmup.rows`` rows; returns (model, seconds)."""
    t0, folder = time.time(), storage.join(cfg.out_dir, "warmup", arm.name)
    sample = cfg.select_config(arm, 0, storage.join(folder, "sample"))
    selector = "kcenter" if EMBEDDING in sample.score_columns() else "random"
    budget = {"budget": arm.warmup.rows, "fraction": None, "stratify_by": None, "quotas": None}
    sample = SelectConfig.model_validate(
        {**sample.model_dump(mode="json"), "selector": selector, "budget": budget, "features_dir": None}
    )
    features_dir, _ = features.of(sample)
    select(sample.model_copy(update={"features_dir": features_dir}))
    settings = {"max_steps": arm.warmup.steps, "max_tokens": WARMUP_TOKENS}
    data = storage.join(sample.out_dir, decide.SELECTED)
    manifest = train(cfg.train_config(arm, 0, data, storage.join(folder, "train"), **settings))
    return manifest["model"], round(time.time() - t0, 2)


def prepare_arms(cfg: ExperimentConfig) -> dict[str, dict]:
    """Per arm: the features its trials decide from, the warm-up model its scorers use (if any),
    and the seconds both took."""
    features, prepared = Features(cfg), {}
    for arm in sorted(cfg.arms, key=lambda a: a.warmup is not None):  # plain scorings first: warm-ups reuse them
        model, warmup_seconds = _warmup(cfg, arm, features) if arm.warmup else (None, 0.0)
        features_dir, seconds = features.of(cfg.select_config(arm, 0, "unused", model))
        prepared[arm.name] = {
            "features_dir": features_dir,
            "features_seconds": seconds,
            "warmup_model": model,
            "warmup_seconds": warmup_seconds,
        }
    return prepared


@ray.remote(num_cpus=0)
class _Runner:
    """Runs the trials' stages. Started by the driver, so the stages' Ray Data tasks, scorer actors,
    engine and training workers are scheduled as the driver's own: outside the trial's placement
    group (which holds only the trial), and in the job's worker processes (started from a Tune
    trial, they would inherit the runtime environment Tune gives trials, which no idle worker of
    the job shares)."""

    def __init__(self, shipped: Shipped[ExperimentConfig], prepared: dict):
        self.cfg, self.prepared = shipped.load(), prepared
        prepare(self.cfg.plugins, self.cfg.storage)
        configure_ray_data()

    def run(self, arm_name: str, seed: int) -> float:
        """One arm, one seed: select from the arm's features, train on the token budget, evaluate;
        returns the deciding metric."""
        cfg, ready = self.cfg, self.prepared[arm_name]
        arm, folder = cfg.arm(arm_name), trial_dir(cfg, arm_name, seed)
        sel = cfg.select_config(arm, seed, storage.join(folder, "select"), ready["warmup_model"])
        select(sel.model_copy(update={"features_dir": ready["features_dir"]}))
        data = storage.join(sel.out_dir, decide.SELECTED)
        trained = train(cfg.train_config(arm, seed, data, storage.join(folder, "train")))
        result = evaluate(cfg.eval_config(trained["model"], storage.join(folder, "evaluate")))
        return result["suites"][cfg.suite][cfg.metric]


def _trial(params: dict, runner) -> None:
    """A Tune trial: one arm and seed, run by the runner, reported once its evaluation is done."""
    value = ray.get(runner.run.remote(params["arm"], params["seed"]))
    tune.report({"value": value, "arm": params["arm"], "seed": params["seed"]})


class _Lines(tune.Callback):
    """One progress line for the whole experiment, a trial at a time; a restored experiment counts
    the trials it finished before, and its clock starts again."""

    def __init__(self, total: int, metric: str):
        self.total, self.metric, self.progress = total, metric, None

    def setup(self, **info):
        self.progress = None  # restored with the experiment's state: start again on its first step

    def on_step_begin(self, iteration, trials, **info):
        if self.progress is None:
            finished = sum(t.status == "TERMINATED" for t in trials)
            self.progress = Progress("experiment", total=self.total, unit="trials", done=finished)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.on_step_begin(iteration, trials)
        last = trial.last_result or {}
        self.progress.update(1, f"{last.get('arm')} seed {last.get('seed')}: {self.metric} {last.get('value')}")


def _tuner(cfg: ExperimentConfig, trainable) -> tune.Tuner:
    """The grid of arms x seeds, or the interrupted one restored (when the arms and seeds are
    those it was started with; another grid starts a new search, whose trials still reuse every
    stage that finished with the same settings)."""
    grid, path = {"arms": [a.name for a in cfg.arms], "seeds": cfg.seeds}, storage.join(cfg.out_dir, "grid.json")
    if storage.read_json_if_exists(path) != grid:
        storage.remove(storage.join(cfg.out_dir, "search"))
        storage.write_json(path, grid)
    if tuner := resumed(cfg.out_dir, trainable):
        log.info("experiment: resuming the trials in %s", cfg.out_dir)
        return tuner
    return tune.Tuner(
        trainable,
        param_space={"arm": tune.grid_search([a.name for a in cfg.arms]), "seed": tune.grid_search(cfg.seeds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent),
        run_config=tune.RunConfig(
            name="search",
            **storage_args(cfg.out_dir),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            callbacks=[_Lines(len(cfg.arms) * len(cfg.seeds), cfg.metric)],
        ),
    )


def _failed_arms(results: tune.ResultGrid) -> dict[str, list[str]]:
    """Arm -> the last line of each of its failed trials' errors (an arm that fails costs that arm only)."""
    failed: dict[str, list[str]] = {}
    for r in results:
        if r.error:
            reason = str(r.error).strip().splitlines()[-1][:300]
            failed.setdefault(r.config["arm"], []).append(f"seed {r.config['seed']}: {reason}")
    return failed


def _check(cfg: ExperimentConfig) -> ExperimentConfig:
    return cfg.model_copy(
        update={
            "data": require_dataset(cfg.data, "data"),
            "eval_data": require_dataset(cfg.eval_data, "eval_data"),
            "model": storage.model_ref(catalog.resolve(cfg.model)),
            "out_dir": storage.normalize(cfg.out_dir),
        }
    )


def run_experiment(cfg: ExperimentConfig) -> dict:
    """Run (or resume) every trial, then compare the arms; returns ``experiment.json``'s content."""
    cfg, t0 = _check(cfg), time.time()
    prepared = prepare_arms(cfg)
    runner = _Runner.options(max_concurrency=cfg.max_concurrent).remote(Shipped.of(cfg), prepared)
    trainable = tune.with_parameters(_trial, runner=runner)
    results = fit_quietly(_tuner(cfg, tune.with_resources(trainable, {"cpu": cfg.trial_cpus})))
    failed = _failed_arms(results)
    if cfg.baseline in failed:
        raise RuntimeError(f"experiment: the baseline's trials failed (rerun to resume): {failed[cfg.baseline]}")
    for arm, errors in failed.items():
        log.warning("experiment: arm %s is left out, its trials failed: %s", arm, "; ".join(errors))
    compared = cfg.model_copy(update={"arms": [a for a in cfg.arms if a.name not in failed]})
    summary = compare_arms(compared, prepared, trial_dir) | {
        "failed_arms": failed,
        "seconds": round(time.time() - t0, 2),
    }
    storage.write_json(storage.join(cfg.out_dir, "experiment.json"), summary)
    return summary
