"""Evaluation of a model on held-out rows: batched generation through the generation stage (vLLM
by default), exact match against checkable answers, token F1 and ROUGE-L against the reference
output, and held-out loss from the model itself; overall and per task family."""
from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from pydantic import Field

from instructscale.config import StrictModel
from instructscale.demo.tasks import check_answer, normalize_answer
from instructscale.generate.config import Backend, GenerateConfig, SamplingConfig, VllmBackend
from instructscale.generate.stage import generate, read_generated
from instructscale.io import existing_path, model_ref, read_manifest, write_json_atomic, write_parquet_atomic
from instructscale.schema import decode_metadata
from instructscale.select.model_scores import ModelScorer

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


def rouge_l(prediction: str | None, reference: str | None) -> float:
    """ROUGE-L F1: longest common subsequence of normalised tokens."""
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


class EvalOptions(StrictModel):
    """The `evaluate` section of a pipeline."""

    backend: Backend = Field(default_factory=VllmBackend)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=32, temperature=0.0))
    max_rows: int | None = Field(None, ge=1, description="evaluate at most this many held-out rows")
    group_by: str = Field("task", description="metadata key (or column) for the per-family table")
    loss: bool = Field(True, description="also the model's loss on the reference outputs")


class EvalConfig(EvalOptions):
    """`instructscale evaluate`: a model on held-out rows -> out_dir/eval.json + predictions."""

    model: str
    data: str = Field(description="held-out Parquet rows with reference outputs")
    out_dir: str
    overwrite: bool = False


def _held_out(cfg: EvalConfig, out: Path) -> str:
    """The rows to evaluate (the first ``max_rows``) as one Parquet file under ``out``."""
    table = pads.dataset(cfg.data, format="parquet").to_table()
    if cfg.max_rows:
        table = table.slice(0, cfg.max_rows)
    write_parquet_atomic(out / "held_out" / "part-0.parquet", table)
    return str(out / "held_out")


def evaluate(cfg: EvalConfig) -> dict:
    """Generate, score and summarise; returns the manifest (also ``out_dir/eval.json``)."""
    out = Path(cfg.out_dir).resolve()
    identity = cfg.model_dump(mode="json", exclude={"overwrite"})
    done = read_manifest(out)
    if done and done["config"] == identity and not cfg.overwrite:
        return done
    cfg = cfg.model_copy(update={"model": model_ref(cfg.model), "data": existing_path(cfg.data, "data")})
    t0 = time.time()
    held_out = _held_out(cfg, out)
    gen = GenerateConfig(mode="distill", backend=cfg.backend, sampling=cfg.sampling, input=held_out,
                         out_dir=str(out / "generations"), model=cfg.model, overwrite=True,
                         replicas={"batch_size": 1024})
    generate(gen)
    rows = read_generated(gen.out_dir, include_rejected=True).to_pylist()
    losses: dict[str, float | None] = {}
    if cfg.loss:
        refs = pads.dataset(held_out, format="parquet").to_table().to_pylist()
        scored = ModelScorer(cfg.model, max_length=256).score_rows(refs)
        losses = {r["id"]: v for r, v in zip(refs, scored["loss"])}

    records = []
    for r in rows:
        meta = decode_metadata(r["metadata"])
        reference = meta.get("original_output")
        answer = meta.get("answer", reference)
        group = str(r.get(cfg.group_by) or meta.get(cfg.group_by) or "all")
        records.append({"id": r["parent_id"], "group": group, "prediction": r["output"] or "",
                        "reference": reference, "exact_match": float(check_answer(r["output"], str(answer))),
                        "token_f1": token_f1(r["output"], reference), "rouge_l": rouge_l(r["output"], reference),
                        "loss": losses.get(r["parent_id"])})
    write_parquet_atomic(out / "predictions.parquet", pa.Table.from_pylist(records))

    def summarise(rs: list[dict]) -> dict:
        loss = [x["loss"] for x in rs if x["loss"] is not None]
        return {"rows": len(rs), **{k: float(np.mean([x[k] for x in rs])) for k in ("exact_match", "token_f1", "rouge_l")},
                "loss": float(np.mean(loss)) if loss else None}

    by_group: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_group[rec["group"]].append(rec)
    manifest = {"config": identity, "model": cfg.model, "overall": summarise(records),
                "by_group": {g: summarise(rs) for g, rs in sorted(by_group.items())},
                "seconds": round(time.time() - t0, 2)}
    write_json_atomic(out / "_manifest.json", manifest)
    write_json_atomic(out / "eval.json", {k: v for k, v in manifest.items() if k != "config"})
    log.info("evaluate: %s exact_match %.3f loss %s", cfg.model, manifest["overall"]["exact_match"],
             manifest["overall"]["loss"])
    return manifest
