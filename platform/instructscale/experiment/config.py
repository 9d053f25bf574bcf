"""Typed config of an experiment: arms (selection and training settings) x seeds, one deciding metric."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from instructscale.config import StrictModel, problems
from instructscale.evaluate import EvalConfig, EvalOptions
from instructscale.lifecycle import StageConfig
from instructscale.plugins import EvalSuite
from instructscale.select.config import SelectConfig, SelectOptions
from instructscale.train.config import TrainConfig, TrainOptions
from instructscale.tune.config import merge


class Warmup(StrictModel):
    """Cherry LLM's "pre-experienced" model: the student briefly trained (the experiment's train
    settings, ``steps`` steps) on a k-center-diverse sample of ``rows`` filtered rows (random when
    the scorers give no embeddings); the arm's model scorers then score with it instead of the
    untrained student."""

    rows: int = Field(200, ge=1, description="rows of the diverse sample (Cherry: a cluster-diverse 1k)")
    steps: int = Field(20, ge=1)


class Arm(StrictModel):
    """One way to choose (and train on) the data: overrides of the experiment's select and train sections."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    about: str = Field("", description="what the arm is, e.g. the paper it follows")
    select: dict[str, Any] = Field(default_factory=dict, description="merged over the select section")
    train: dict[str, Any] = Field(default_factory=dict, description="merged over the train section")
    warmup: Warmup | None = Field(None, description="score with a briefly trained student (Cherry LLM)")


class ExperimentConfig(StageConfig):
    """`instructscale experiment`: every arm x every seed selects, trains on the same token budget and
    is evaluated on the same prompts; arms are compared with the baseline seed by seed, prompt by prompt."""

    data: str = Field(description="the pool every arm selects from")
    eval_data: str = Field(description="held-out rows (the holdout suite): the same prompts for every arm")
    model: str = Field(description="the student: path, URI, hub id or catalog:NAME")
    out_dir: str
    arms: list[Arm] = Field(min_length=2)
    baseline: str = Field("random", description="the arm every other is compared with")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    suite: str = Field("holdout", description="the suite of the deciding metric")
    metric: str = Field("exact_match", description="the deciding metric")
    select: dict[str, Any] = Field(
        default_factory=dict,
        description="the select section every arm starts from, as written (defaults that follow the "
        "scorers are resolved after an arm's overrides)",
    )
    train: TrainOptions = Field(default_factory=lambda: TrainOptions(max_tokens=100_000))
    evaluate: EvalOptions = Field(default_factory=EvalOptions)
    max_concurrent: int = Field(1, ge=1, description="trials at once (each trains with its own workers)")
    trial_cpus: float = Field(0.5, gt=0, description="CPUs of each trial's driver")
    max_failures: int = Field(1, ge=0, description="times a failed trial is retried (its stages resume)")

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must differ, got {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not an arm ({names})")
        if not (self.train.max_tokens or self.train.max_steps):
            raise ValueError("train.max_tokens (or max_steps) is required: every arm trains on the same budget")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: each once, got {self.seeds}")
        for arm in self.arms:
            for section, model, base in (
                ("select", SelectOptions, self.select),
                ("train", TrainOptions, self.train.model_dump(mode="json")),
            ):
                try:
                    model.model_validate(merge(base, getattr(arm, section)))
                except ValidationError as err:
                    raise ValueError(f"arms.{arm.name}.{section}: {problems(err)}") from None
        suites = [self.suite_plugin(self.suite)] if self.suite in ("holdout", *self._suite_names()) else []
        if not suites:
            raise ValueError(f"suite: {self.suite!r} is not evaluated (holdout or one of {self._suite_names()})")
        if self.metric not in suites[0].metrics:
            raise ValueError(f"metric: {self.suite} gives {list(suites[0].metrics)}, not {self.metric!r}")
        return self

    def _suite_names(self) -> list[str]:
        return [s.kind for s in self.evaluate.suites]

    def suite_plugin(self, name: str) -> EvalSuite:
        return next(s for s in self.eval_config("unused", "unused").suite_plugins() if s.name == name)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def select_config(self, arm: Arm, seed: int, out_dir: str, model: str | None = None) -> SelectConfig:
        """The arm's selection for ``seed`` (its selector draws with that seed); scorers that score
        with the student use ``model`` instead when given (a warm-up model)."""
        options = SelectOptions.model_validate(merge(self.select, arm.select))
        options = options.with_models({"student": model or self.model}).model_dump(mode="json")
        options = merge(options, {"selector": {"seed": seed}})
        return SelectConfig(**options, input=self.data, out_dir=out_dir, **self.shared())

    def train_config(self, arm: Arm, seed: int, data: str, out_dir: str, **update: Any) -> TrainConfig:
        options = merge(merge(self.train.model_dump(mode="json"), arm.train), {"seed": seed, **update})
        return TrainConfig(**options, data=data, model=self.model, out_dir=out_dir, **self.shared())

    def eval_config(self, model: str, out_dir: str) -> EvalConfig:
        options = self.evaluate.model_dump(mode="json")
        return EvalConfig(**options, model=model, data=self.eval_data, out_dir=out_dir, **self.shared())
