"""The whole pipeline, stage by stage, from one typed config."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field, model_validator

from instructscale.config import StrictModel, dump_config
from instructscale.demo.pool import DemoConfig, make_demo
from instructscale.generate.config import GenerateConfig, GenerateOptions
from instructscale.evaluate import EvalConfig, EvalOptions, evaluate
from instructscale.generate.stage import generate
from instructscale.io import write_json_atomic
from instructscale.models.tiny import ensure_tiny_models
from instructscale.report import write_report
from instructscale.pools.ingest import IngestConfig, IngestOptions, PoolInput, ingest
from instructscale.runtime import RayConfig, init_ray
from instructscale.select.config import SelectConfig, SelectOptions
from instructscale.select.stage import select
from instructscale.train.config import TrainConfig, TrainOptions
from instructscale.train.stage import train

log = logging.getLogger(__name__)


class ModelsConfig(StrictModel):
    """Which student and teacher to use; unset ones are built as tiny local models."""

    seed: int = 0
    student: str | None = Field(None, description="path or hub id of your student model")
    teacher: str | None = Field(None, description="path or hub id of your teacher model")


class PipelineConfig(StrictModel):
    """`instructscale pipeline CONFIG`: every stage's section plus where the run lives."""

    run_dir: str = "runs/demo"
    ray: RayConfig = Field(default_factory=RayConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    demo: DemoConfig | None = Field(default_factory=DemoConfig, description="null: use `inputs` only")
    inputs: list[PoolInput] = Field(default_factory=list)
    ingest: IngestOptions = Field(default_factory=IngestOptions)
    generate: GenerateOptions | None = Field(
        default_factory=lambda: GenerateOptions(mode="distill", only_missing=True),
        description="teacher generation over the ingested pool; null skips it")
    select: SelectOptions | None = Field(default_factory=SelectOptions,
                                         description="score, filter, dedup and select; null skips it")
    eval_data: str | None = Field(None, description="held-out Parquet rows (the demo provides its own)")
    evaluate: EvalOptions | None = Field(default_factory=EvalOptions,
                                         description="evaluate the student before and after training")
    train: TrainOptions | None = Field(default_factory=TrainOptions,
                                       description="fine-tune the student on the pool; null skips it")

    @model_validator(mode="after")
    def _has_data(self) -> "PipelineConfig":
        if self.demo is None and not self.inputs:
            raise ValueError("no data: set `inputs` or keep the `demo` section")
        return self


@contextmanager
def _clock(summary: dict, stage: str) -> Iterator[None]:
    """Record the stage's wall seconds in this run (a reused stage takes ~0) under summary["seconds"]."""
    t0 = time.time()
    yield
    summary["seconds"][stage] = round(time.time() - t0, 2)


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every stage in order; each stage skips work it already finished for the same config."""
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run / "config.yaml")
    init_ray(cfg.ray)
    summary: dict = {"run_dir": str(run), "stages": {}, "seconds": {}}

    with _clock(summary, "models"):
        models = ensure_tiny_models(run / "models", cfg.models.seed)
    models = {"student": cfg.models.student or models["student"], "teacher": cfg.models.teacher or models["teacher"]}
    summary["models"] = summary["stages"]["models"] = models

    inputs = list(cfg.inputs)
    if cfg.eval_data:
        summary["eval_split"] = cfg.eval_data
    if cfg.demo is not None:
        demo_cfg = cfg.demo if cfg.demo.out_dir else cfg.demo.model_copy(update={"out_dir": str(run / "data")})
        with _clock(summary, "demo"):
            demo = make_demo(demo_cfg)
        summary["stages"]["demo"] = {k: v for k, v in demo.items() if k != "config"}
        data = Path(demo_cfg.out_dir)
        inputs.append(PoolInput(path=str(data / "pool"), format="parquet"))
        if demo_cfg.malformed_jsonl_rows:
            inputs.append(PoolInput(path=str(data / "side.jsonl"), format="alpaca", source="demo/side"))
        summary["eval_split"] = cfg.eval_data or str(data / "eval")

    ingest_cfg = IngestConfig(**cfg.ingest.model_dump(), inputs=inputs, out_dir=str(run / "ingest"))
    with _clock(summary, "ingest"):
        manifest = ingest(ingest_cfg)
    summary["stages"]["ingest"] = {k: v for k, v in manifest.items() if k != "config"}
    summary["pool"] = str(run / "ingest" / "pool")

    if cfg.generate is not None:
        gen_cfg = GenerateConfig(**cfg.generate.model_dump(), input=summary["pool"], out_dir=str(run / "generate"),
                                 model=models["teacher"])
        with _clock(summary, "generate"):
            manifest = generate(gen_cfg)
        summary["stages"]["generate"] = {k: v for k, v in manifest.items() if k != "config"}
        summary["pool"] = str(run / "generate")

    if cfg.select is not None:
        options = cfg.select
        if options.scoring.enabled and not options.scoring.model:
            options = options.model_copy(update={"scoring": options.scoring.model_copy(update={"model": models["student"]})})
        sel_cfg = SelectConfig(**options.model_dump(), input=summary["pool"], out_dir=str(run / "select"))
        with _clock(summary, "select"):
            manifest = select(sel_cfg)
        summary["stages"]["select"] = {k: v for k, v in manifest.items() if k != "config"}
        summary["pool"] = str(run / "select" / "selected")

    if cfg.train is not None:
        train_cfg = TrainConfig(**cfg.train.model_dump(), data=summary["pool"], model=models["student"],
                                out_dir=str(run / "train"), eval_data=summary.get("eval_split"))
        with _clock(summary, "train"):
            manifest = train(train_cfg)
        summary["stages"]["train"] = {k: v for k, v in manifest.items() if k not in ("config", "history")}
        summary["model"] = manifest["model"]

    if cfg.evaluate is not None and summary.get("eval_split"):
        summary["stages"]["evaluate"] = {}
        with _clock(summary, "evaluate"):
            for name, model in (("base", models["student"]), ("tuned", summary.get("model"))):
                if model is None:
                    continue
                ev = evaluate(EvalConfig(**cfg.evaluate.model_dump(), model=model, data=summary["eval_split"],
                                         out_dir=str(run / "evaluate" / name)))
                summary["stages"]["evaluate"][name] = {k: v for k, v in ev.items() if k != "config"}
    summary["report"] = str(write_report(run, summary))
    write_json_atomic(run / "summary.json", summary)
    return summary
