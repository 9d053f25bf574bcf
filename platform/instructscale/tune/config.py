"""Typed config of a hyperparameter search over selection, curriculum, LoRA and optimiser settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from instructscale.config import StrictModel, problems
from instructscale.lifecycle import StageConfig
from instructscale.select.config import SelectOptions
from instructscale.train.config import TrainOptions


class Param(StrictModel):
    """One dimension of the search space: exactly one of the distributions."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="[low, high) integers")

    @model_validator(mode="after")
    def _one(self) -> Param:
        set_ = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"give exactly one of choice/uniform/loguniform/randint, got {set_ or 'none'}")
        return self

    def example(self) -> Any:
        if self.choice is not None:
            return self.choice[0]
        low = (self.uniform or self.loguniform or self.randint)[0]
        return low


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` applied recursively; a section whose plug-in ``kind`` changes starts
    from the new plug-in's defaults (the old plug-in's options would not fit it)."""
    out = dict(base)
    for k, v in update.items():
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            same_kind = "kind" not in v or v["kind"] == old.get("kind")
            out[k] = merge(old, v) if same_kind else dict(v)
        else:
            out[k] = v
    return out


class TuneSettings(StrictModel):
    """The `tune` section: what to search, how, and how many trials."""

    space: dict[str, Param] = Field(
        description="dotted keys under train. or select., e.g. train.optim.lr or train.curriculum.kind"
    )
    num_samples: int = Field(8, ge=1, description="trials")
    max_concurrent: int = Field(2, ge=1)
    searcher: Literal["optuna", "random"] = "optuna"
    grace_period: int = Field(10, ge=1, description="ASHA: steps before a trial can be stopped")
    reduction_factor: int = Field(2, ge=2)
    trial_cpus: float = Field(0.5, gt=0, description="CPUs of each trial's driver (its workers ask for their own)")
    max_failures: int = Field(1, ge=0, description="times a failed trial is retried (its training resumes)")
    seed: int = 0


class TuneConfig(TuneSettings, StageConfig):
    """`instructscale tune`: search over trials of (select ->) train, scored by held-out loss."""

    data: str = Field(description="pool to select from (when `select` is set) or to train on")
    eval_data: str = Field(description="held-out Parquet rows; the objective is their loss (lower is better)")
    model: str = Field(description="student model")
    out_dir: str
    train: TrainOptions = Field(default_factory=TrainOptions)
    select: SelectOptions | None = Field(None, description="each trial re-selects from `data` (features shared)")

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if self.train.eval_every is None:
            raise ValueError("train.eval_every is required: trials are compared and stopped on held-out loss")
        for key, param in self.space.items():
            section, _, rest = key.partition(".")
            if section not in ("train", "select") or not rest:
                raise ValueError(f"space.{key}: keys start with train. or select.")
            if section == "select" and self.select is None:
                raise ValueError(f"space.{key}: searching selection needs a `select` section")
            model = TrainOptions if section == "train" else SelectOptions
            base = getattr(self, section).model_dump()
            try:
                model.model_validate(merge(base, nest({rest: param.example()})))
            except ValidationError as err:
                raise ValueError(f"space.{key}: {problems(err)}") from None
        return self
