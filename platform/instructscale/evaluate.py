"""Evaluation of a model on held-out rows: batched generation through the generation stage (vLLM
by default), exact match against checkable answers, token F1 and ROUGE-L (rouge-score) against the
reference output, and held-out loss from the model itself; overall and per task family."""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from functools import lru_cache

import numpy as np
import pyarrow as pa
from pydantic import Field

from instructscale import storage
from instructscale.answers import check_answer, normalize_answer
from instructscale.backends.base import SamplingConfig
from instructscale.config import StrictModel
from instructscale.generate.config import GenerateConfig, ReplicaConfig
from instructscale.generate.stage import generate, read_generated
from instructscale.lifecycle import StageConfig, StageRun, commit_part, part_files, require_dataset
from instructscale.plugins import BackendSpec, register
from instructscale.schema import decode_metadata
from instructscale.scorers import ModelScorer
from instructscale.stage import Pipe, Stage, without_internal

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str | None) -> list[str]:
    return _TOKEN.findall(normalize_answer(text))


def token_f1(prediction: str | None, reference: str | None) -> float:
    """SQuAD-style F1 over normalised tokens (multiset overlap)."""
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum(min(p.count(t), r.count(t)) for t in set(p))
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str | None, reference: str | None) -> float:
    """ROUGE-L F1 (rouge-score's tokenizer: lower case, alphanumeric tokens); two empty texts score 1."""
    prediction, reference = prediction or "", reference or ""
    if not prediction.strip() or not reference.strip():
        return float(prediction.strip() == reference.strip())
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


class EvalOptions(StrictModel):
    """The `evaluate` section of a pipeline."""

    backend: BackendSpec = "vllm"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=32, temperature=0.0))
    max_rows: int | None = Field(None, ge=1, description="evaluate at most this many held-out rows")
    group_by: str = Field("task", description="metadata key (or column) for the per-family table")
    loss: bool = Field(True, description="also the model's loss on the reference outputs")
    system_prompt: str | None = Field(None, description="e.g. a few-shot prompt that shows the answer format")
    replicas: ReplicaConfig = Field(
        default_factory=lambda: ReplicaConfig(batch_size=1024),
        description="the generation replicas (num_cpus: the engine's threads)",
    )


class EvalConfig(EvalOptions, StageConfig):
    """`instructscale evaluate`: a model on held-out rows -> out_dir/eval.json + out_dir/predictions."""

    model: str
    data: str = Field(description="held-out Parquet rows with reference outputs (a directory or URI)")
    out_dir: str


def _held_out(cfg: EvalConfig, out: str) -> str:
    """The rows to evaluate (the first ``max_rows``) committed as a dataset under ``out``."""
    table = storage.read_parquet(part_files(cfg.data))
    if cfg.max_rows:
        table = table.slice(0, cfg.max_rows)
    dataset = storage.join(out, "held_out")
    commit_part(dataset, "part-00000.parquet", table)
    return dataset


def _record(row: dict, group_by: str, loss: float | None) -> dict:
    meta = decode_metadata(row["metadata"])
    reference = meta.get("original_output")
    answer = meta.get("answer", reference)
    return {
        "id": row["parent_id"],
        "group": str(row.get(group_by) or meta.get(group_by) or "all"),
        "prediction": row["output"] or "",
        "reference": reference,
        "exact_match": float(check_answer(row["output"], str(answer))),
        "token_f1": token_f1(row["output"], reference),
        "rouge_l": rouge_l(row["output"], reference),
        "loss": loss,
    }


def _summarise(records: list[dict]) -> dict:
    loss = [x["loss"] for x in records if x["loss"] is not None]
    return {
        "rows": len(records),
        **{k: float(np.mean([x[k] for x in records])) for k in ("exact_match", "token_f1", "rouge_l")},
        "loss": float(np.mean(loss)) if loss else None,
    }


def _losses(cfg: EvalConfig, held_out: str) -> dict[str, float | None]:
    if not cfg.loss:
        return {}
    refs = storage.read_parquet(part_files(held_out)).to_pylist()
    scorer = ModelScorer(ModelScorer.Config(model=cfg.model, max_length=256))
    scorer.setup()
    return {r["id"]: v for r, v in zip(refs, scorer.score(refs)["loss"])}


@register("evaluate")
class Evaluate(Stage[EvalConfig]):
    """A model on held-out rows: generations through the generation stage, then scores; in a
    pipeline, the base student and the trained model, each into its own directory."""

    Config = EvalConfig
    Options = EvalOptions
    summary = "evaluate a model on held-out rows: exact match, token F1, ROUGE-L, loss, per task"
    after = "train"
    rebuilt = ("held_out", "predictions")
    published = ("held_out", "predictions")

    def check(self) -> EvalConfig:
        cfg = self.cfg
        return cfg.model_copy(update={"model": storage.model_ref(cfg.model), "data": require_dataset(cfg.data, "data")})

    def run(self, run: StageRun) -> dict:
        cfg, t0 = self.cfg, time.time()
        held_out = _held_out(cfg, run.out)
        gen = GenerateConfig(
            mode="distill",
            backend=cfg.backend,
            sampling=cfg.sampling,
            input=held_out,
            out_dir=run.uri("generations"),
            model=cfg.model,
            overwrite=True,
            replicas=cfg.replicas,
            system_prompt=cfg.system_prompt,
            **cfg.shared(),
        )
        generate(gen)
        losses = _losses(cfg, held_out)
        records = [
            _record(r, cfg.group_by, losses.get(r["parent_id"]))
            for r in read_generated(gen.out_dir, include_rejected=True).to_pylist()
        ]
        commit_part(run.uri("predictions"), "part-00000.parquet", pa.Table.from_pylist(records))
        by_group: dict[str, list[dict]] = defaultdict(list)
        for rec in records:
            by_group[rec["group"]].append(rec)
        summary = {
            "model": cfg.model,
            "overall": _summarise(records),
            "by_group": {g: _summarise(rs) for g, rs in sorted(by_group.items())},
            "seconds": round(time.time() - t0, 2),
        }
        storage.write_json(run.uri("eval.json"), summary)
        log.info(
            "evaluate: %s exact_match %.3f loss %s",
            cfg.model,
            summary["overall"]["exact_match"],
            summary["overall"]["loss"],
        )
        return summary

    @classmethod
    def in_pipeline(cls, options: EvalOptions, pipe: Pipe) -> dict | None:
        if not pipe.eval_data:
            log.warning("evaluate: skipped, the pipeline has no held-out rows (set `eval_data` or a `demo` section)")
            return None
        entry = {}
        for name, model in (("base", pipe.models["student"]), ("tuned", pipe.model)):
            if model is not None:
                out = storage.join(cls.out_dir(pipe), name)
                cfg = EvalConfig(**options.model_dump(), model=model, data=pipe.eval_data, out_dir=out, **pipe.common)
                entry[name] = without_internal(cls(cfg).execute())
        return entry

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        lines = []
        for name, ev in entry.items():
            o = ev["overall"]
            loss = f", loss {o['loss']:.4f}" if o["loss"] is not None else ""
            lines.append(
                f"evaluate   {name:5s} exact_match {o['exact_match']:.3f}, rouge_l {o['rouge_l']:.3f}{loss} "
                f"on {o['rows']} held-out rows"
            )
        return lines


def evaluate(cfg: EvalConfig) -> dict:
    """Generate, score and summarise; returns the manifest (also ``out_dir/eval.json``)."""
    return Evaluate(cfg).execute()
