"""The whole pipeline, stage by stage, from one typed config. Reads top to bottom: each stage's
config is the pipeline's section for it plus where it reads and writes under ``run_dir``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import Field, model_validator

from instructscale import storage
from instructscale.config import StrictModel, to_yaml
from instructscale.demo.pool import DemoConfig, DemoOptions, make_demo
from instructscale.evaluate import EvalConfig, EvalOptions, evaluate
from instructscale.generate.config import GenerateConfig, GenerateOptions
from instructscale.generate.stage import ROWS, generate
from instructscale.lifecycle import StageConfig
from instructscale.models.tiny import ensure_tiny_models
from instructscale.pools.ingest import IngestConfig, IngestOptions, PoolInput, ingest
from instructscale.progress import run_logs
from instructscale.redact import redact, redact_text
from instructscale.report import write_report
from instructscale.runtime import RayConfig, check_output_location, init_ray
from instructscale.select.config import SelectConfig, SelectOptions
from instructscale.select.stage import select
from instructscale.train.config import TrainConfig, TrainOptions
from instructscale.train.stage import train

log = logging.getLogger(__name__)


class ModelsConfig(StrictModel):
    """Which student and teacher to use; unset ones are built as tiny local models. ``catalog:NAME``
    names a model of `instructscale fetch-model`'s catalogue (fetched into the model cache once)."""

    seed: int = 0
    student: str | None = Field(None, description="path, URI, hub id or catalog:NAME of your student model")
    teacher: str | None = Field(None, description="path, URI, hub id or catalog:NAME of your teacher model")


def _resolve_model(ref: str | None, built: str) -> str:
    if ref is None:
        return built
    if ref.startswith("catalog:"):
        from instructscale.models.catalog import fetch_model

        return fetch_model(ref.removeprefix("catalog:"))["path"]
    return ref


class PipelineConfig(StageConfig):
    """`instructscale pipeline CONFIG`: every stage's section plus where the run lives."""

    run_dir: str = Field("runs/demo", description="a local path, a shared mount, or an object-store URI")
    ray: RayConfig = Field(default_factory=RayConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    demo: DemoOptions | None = Field(default_factory=DemoOptions, description="null: use `inputs` only")
    inputs: list[PoolInput] = Field(default_factory=list)
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

    @model_validator(mode="after")
    def _has_data(self) -> PipelineConfig:
        if self.demo is None and not self.inputs:
            raise ValueError("no data: set `inputs` or keep the `demo` section")
        return self


@contextmanager
def _clock(summary: dict, stage: str) -> Iterator[None]:
    """Record the stage's wall seconds in this run (a reused stage takes ~0) under summary["seconds"]."""
    t0 = time.time()
    yield
    summary["seconds"][stage] = round(time.time() - t0, 2)


def _without(manifest: dict, *keys: str) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("config", "schema_version", "stage", *keys)}


def _scorers_with_student(options: SelectOptions, student: str) -> SelectOptions:
    """The model scorer scores with the student unless the config names another model."""
    scorers = [
        s.model_copy(update={"model": student}) if s.kind == "model" and not s.model else s for s in options.scorers
    ]
    return options.model_copy(update={"scorers": scorers})


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every stage in order; each stage skips work it already finished for the same config.
    The run's log (and the embedded Ray cluster's worker logs) go to ``run_dir/logs``."""
    init_ray(cfg.ray)
    check_output_location(storage.normalize(cfg.run_dir))  # before anything is written there
    with run_logs(cfg.run_dir):
        return _run_stages(cfg)


def _run_stages(cfg: PipelineConfig) -> dict:
    run = storage.normalize(cfg.run_dir)
    storage.write_text(storage.join(run, "config.yaml"), redact_text(to_yaml(cfg)))
    common = {**cfg.shared(), "overwrite": cfg.overwrite}
    summary: dict = {"run_dir": run, "stages": {}, "seconds": {}}

    with _clock(summary, "models"):
        built = ensure_tiny_models(storage.join(run, "models"), cfg.models.seed)
        models = {role: _resolve_model(getattr(cfg.models, role), built[role]) for role in ("student", "teacher")}
    summary["models"] = summary["stages"]["models"] = models

    inputs = list(cfg.inputs)
    eval_split = cfg.eval_data
    if cfg.demo is not None:
        data = storage.join(run, "data")
        with _clock(summary, "demo"):
            demo = make_demo(DemoConfig(**cfg.demo.model_dump(), out_dir=data, **common))
        summary["stages"]["demo"] = _without(demo)
        inputs.append(PoolInput(path=storage.join(data, "pool"), format="parquet"))
        if cfg.demo.malformed_jsonl_rows:
            inputs.append(PoolInput(path=storage.join(data, "side.jsonl"), format="alpaca", source="demo/side"))
        eval_split = eval_split or storage.join(data, "eval")
    if eval_split:
        summary["eval_split"] = eval_split

    with _clock(summary, "ingest"):
        manifest = ingest(
            IngestConfig(**cfg.ingest.model_dump(), inputs=inputs, out_dir=storage.join(run, "ingest"), **common)
        )
    summary["stages"]["ingest"] = _without(manifest)
    pool = storage.join(run, "ingest", "pool")

    if cfg.generate is not None:
        gen_cfg = GenerateConfig(
            **cfg.generate.model_dump(),
            input=pool,
            out_dir=storage.join(run, "generate"),
            model=models["teacher"],
            **common,
        )
        with _clock(summary, "generate"):
            summary["stages"]["generate"] = _without(generate(gen_cfg))
        pool = storage.join(run, "generate", ROWS)

    if cfg.select is not None:
        options = _scorers_with_student(cfg.select, models["student"])
        sel_cfg = SelectConfig(**options.model_dump(), input=pool, out_dir=storage.join(run, "select"), **common)
        with _clock(summary, "select"):
            summary["stages"]["select"] = _without(select(sel_cfg))
        pool = storage.join(run, "select", "selected")
    summary["pool"] = pool

    if cfg.train is not None:
        train_cfg = TrainConfig(
            **cfg.train.model_dump(),
            data=pool,
            model=models["student"],
            out_dir=storage.join(run, "train"),
            eval_data=eval_split,
            **common,
        )
        with _clock(summary, "train"):
            manifest = train(train_cfg)
        summary["stages"]["train"] = _without(manifest, "history")
        summary["model"] = manifest["model"]

    if cfg.evaluate is not None and eval_split:
        summary["stages"]["evaluate"] = {}
        with _clock(summary, "evaluate"):
            for name, model in (("base", models["student"]), ("tuned", summary.get("model"))):
                if model is not None:
                    ev = evaluate(
                        EvalConfig(
                            **cfg.evaluate.model_dump(),
                            model=model,
                            data=eval_split,
                            out_dir=storage.join(run, "evaluate", name),
                            **common,
                        )
                    )
                    summary["stages"]["evaluate"][name] = _without(ev)
    summary["report"] = write_report(run, summary)
    storage.write_json(storage.join(run, "summary.json"), redact(summary))
    return summary
