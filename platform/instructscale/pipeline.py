"""The whole pipeline from one typed config: the stage table's pipeline stages in order
(:func:`instructscale.stage.pipeline_stages`), each configured from its section of this config plus
what the stages before it handed on (:class:`instructscale.stage.Pipe`). A stage whose section is
null is left out; a plug-in stage runs where its section is set."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field, ValidationError, model_validator

from instructscale import gates, storage
from instructscale.config import StrictModel, problems, to_yaml
from instructscale.demo.pool import DemoOptions
from instructscale.evaluate import EvalOptions
from instructscale.generate.config import GenerateOptions
from instructscale.lifecycle import StageConfig
from instructscale.models import catalog
from instructscale.plugins import register
from instructscale.pools.ingest import NO_DATA, IngestOptions, InputSpec
from instructscale.process import prepare
from instructscale.redact import redact, redact_text
from instructscale.report import write_report
from instructscale.runtime import RayConfig, check_output_location, init_ray, run_logs
from instructscale.select.config import SelectOptions
from instructscale.stage import Command, Pipe, Stage, pipeline_stages
from instructscale.train.config import TrainOptions

ROLES = ("student", "teacher")


class ModelsConfig(StrictModel):
    """Which student and teacher to use; unset ones are built as tiny local models. ``catalog:NAME``
    names a model of `instructscale fetch-model`'s catalogue (fetched into the model cache once)."""

    seed: int = 0
    student: str | None = Field(None, description="path, URI, hub id or catalog:NAME of your student model")
    teacher: str | None = Field(None, description="path, URI, hub id or catalog:NAME of your teacher model")


class PipelineConfig(StageConfig):
    """`instructscale pipeline CONFIG`: every stage's section plus where the run lives. A plug-in
    stage's section is a top-level key named after the stage (kept under ``stages``)."""

    run_dir: str = Field("runs/demo", description="a local path, a shared mount, or an object-store URI")
    ray: RayConfig = Field(default_factory=RayConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    demo: DemoOptions | None = Field(
        None, description="the built-in demo pool and eval split (`demo: {}` for its defaults); absent: no demo rows"
    )
    inputs: list[InputSpec] = Field(
        default_factory=list, description="files ({path, format}) or LLaMA-Factory registries ({dataset_info, names})"
    )
    ingest: IngestOptions = Field(default_factory=IngestOptions)
    generate: GenerateOptions | None = Field(
        default_factory=lambda: GenerateOptions(mode={"kind": "distill", "only_missing": True}),
        description="teacher generation over the ingested pool; null skips it",
    )
    select: SelectOptions | None = Field(
        default_factory=SelectOptions, description="score, filter, dedup and select; null skips it"
    )
    eval_data: str | None = Field(None, description="held-out Parquet rows (the demo provides its own)")
    evaluate: EvalOptions | None = Field(
        default_factory=EvalOptions, description="evaluate the student before and after training"
    )
    train: TrainOptions | None = Field(
        default_factory=TrainOptions, description="fine-tune the student on the pool; null skips it"
    )
    stages: dict[str, Any] = Field(default_factory=dict, description="the sections of plug-in stages, by name")
    allow_regression: bool = Field(False, description="a failed regression gate marks the run, but exits 0")

    @model_validator(mode="before")
    @classmethod
    def _plugin_sections(cls, data: Any) -> Any:
        """Top-level keys that name a registered plug-in stage are its section."""
        if not isinstance(data, dict):
            return data
        stages = {s.name: s for s in pipeline_stages() if s.name not in cls.model_fields}
        sections = dict(data.get("stages") or {})
        sections.update({k: v for k, v in data.items() if k in stages})
        unknown = sorted(set(sections) - set(stages))
        if unknown:
            raise ValueError(f"stages: {unknown} are not registered pipeline stages (is the plug-in listed?)")
        rest = {k: v for k, v in data.items() if k not in stages}
        return {**rest, "stages": {k: _section(stages[k], v) for k, v in sections.items()}}

    @model_validator(mode="after")
    def _has_data(self) -> PipelineConfig:
        if self.demo is None and not self.inputs:
            raise ValueError(NO_DATA)
        if self.evaluate and self.evaluate.gates and self.train is None:
            raise ValueError("evaluate.gates judge the trained model against the base: they need a train section")
        return self

    def section(self, stage: str) -> StrictModel | None:
        """The options of ``stage`` (None: the stage is left out)."""
        return getattr(self, stage) if stage in type(self).model_fields else self.stages.get(stage)


def _section(stage: type[Stage], value: Any) -> StrictModel | None:
    if value is None or isinstance(value, stage.Options):
        return value
    try:
        return stage.Options.model_validate(value)
    except ValidationError as err:
        raise ValueError(f"{stage.name}: {problems(err)}") from None


@contextmanager
def _clock(summary: dict, stage: str) -> Iterator[None]:
    """Record the stage's wall seconds in this run (a reused stage takes ~0) under summary["seconds"]."""
    t0 = time.time()
    yield
    summary["seconds"][stage] = round(time.time() - t0, 2)


def resolve_models(cfg: ModelsConfig, run: str) -> dict[str, str]:
    """The student and teacher: the configured ones, tiny local models built only when a role has none."""
    models = {role: catalog.resolve(getattr(cfg, role)) for role in ROLES if getattr(cfg, role)}
    if len(models) < len(ROLES):
        from instructscale.models.tiny import ensure_tiny_models  # torch and transformers: only here

        built = ensure_tiny_models(storage.join(run, "models"), cfg.seed)
        models = {role: models.get(role, built[role]) for role in ROLES}
    return models


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every stage in order; each stage skips work it already finished for the same config.
    The run's log (and the embedded Ray cluster's worker logs) go to ``run_dir/logs``."""
    prepare(cfg.plugins, cfg.storage)
    init_ray(cfg.ray)
    check_output_location(storage.normalize(cfg.run_dir))  # before anything is written there
    with run_logs(cfg.run_dir):
        return _run_stages(cfg)


def _run_stages(cfg: PipelineConfig) -> dict:
    run = storage.normalize(cfg.run_dir)
    storage.write_text(storage.join(run, "config.yaml"), redact_text(to_yaml(cfg)))
    summary: dict = {"run_dir": run, "stages": {}, "seconds": {}}
    with _clock(summary, "models"):
        models = resolve_models(cfg.models, run)
    summary["models"] = summary["stages"]["models"] = models
    pipe = Pipe(run, {**cfg.shared(), "overwrite": cfg.overwrite}, models, list(cfg.inputs), cfg.eval_data)
    for stage in pipeline_stages():
        options = cfg.section(stage.name)
        if options is None:
            continue
        with _clock(summary, stage.name):
            entry = stage.in_pipeline(options, pipe)
        if entry is not None:
            summary["stages"][stage.name] = entry
    handed_on = {"eval_split": pipe.eval_data, "pool": pipe.pool, "model": pipe.model}
    summary.update({k: v for k, v in handed_on.items() if v is not None})
    summary["gates"] = summary["stages"].get("evaluate", {}).get("tuned", {}).get("gates", [])
    summary["status"] = "failed" if gates.failed(summary["gates"]) else "succeeded"
    summary["report"] = write_report(run, summary)
    storage.write_json(storage.join(run, "summary.json"), redact(summary))
    return summary


@register("pipeline")
class Pipeline(Command[PipelineConfig]):
    """Every pipeline stage, in order, from one config."""

    Config = PipelineConfig
    summary = "run the whole pipeline from one config"
    flags = {"allow_regression": "exit 0 even when a regression gate fails (the run is still marked failed)"}

    def execute(self) -> dict:
        return run_pipeline(self.cfg)

    def output(self) -> str:
        return self.cfg.run_dir

    def failure(self, summary: dict) -> str | None:
        return None if self.cfg.allow_regression else gates.failure(summary["gates"])

    def print_result(self, summary: dict) -> None:
        print(f"\npipeline done: {summary['run_dir']}")
        stages = {s.name: s for s in pipeline_stages()}
        for name, entry in summary["stages"].items():
            for line in stages[name].describe(entry) if name in stages else []:
                print(f"  {line}")
        wall = summary.get("seconds", {})
        print(f"  seconds    {sum(wall.values()):.0f} in all: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))
        print(f"  summary    {summary['run_dir']}/summary.json")
        print(f"  report     {summary['report']}")
