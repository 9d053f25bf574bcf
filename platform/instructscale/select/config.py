"""Typed config of the selection stage: scorers, filters, dedup, difficulty and the selector."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from instructscale.config import ActorPool, StrictModel
from instructscale.generate.config import Backend, VllmBackend

MODEL_COLUMNS = ("loss", "loss_uncond", "ppl", "ifd")
SCORE_COLUMNS = (*MODEL_COLUMNS, "judge", "prompt_chars", "output_chars", "repetition")
DEFAULT_JUDGE_TEMPLATE = (
    "Rate how helpful, correct and complete the response is for the instruction, from 1 (useless) "
    "to 10 (excellent).\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n"
    "Answer with one line: Score: <1-10>")
DEFAULT_REFUSALS = ["as an ai", "i cannot", "i can't", "i'm sorry", "i am sorry", "i am unable", "i'm unable"]


class HeuristicSettings(StrictModel):
    """Cheap per-row filters; a row failing one is removed with that filter's name as reason."""

    min_instruction_chars: int = Field(3, ge=0)
    max_instruction_chars: int = Field(8000, ge=1)
    min_output_chars: int = Field(1, ge=0)
    max_output_chars: int = Field(2000, ge=1)
    max_repetition: float = Field(0.5, ge=0, le=1, description="share of repeated word 3-grams in the output")
    max_non_ascii: float | None = Field(None, ge=0, le=1, description="charset filter: share of non-ASCII chars")
    refusal_phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))


class DedupSettings(StrictModel):
    """Exact duplicates by normalised text hash, near duplicates by MinHash LSH (datasketch)."""

    fields: Literal["prompt", "prompt_and_response"] = "prompt"
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity of word n-grams")
    ngram: int = Field(2, ge=1)
    num_perm: int = Field(128, ge=16)
    seed: int = 1


class ModelScoring(ActorPool):
    """Perplexity, IFD and embeddings from one small causal LM, batched in an actor pool."""

    enabled: bool = True
    model: str | None = Field(None, description="scorer model; default: the pipeline's student")
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8)
    max_replicas: int = Field(2, ge=1)
    num_cpus: float = Field(1, gt=0)
    ifd_max: float | None = Field(1.0, gt=0, description="remove rows whose response does not help (IFD above)")


class JudgeSettings(ActorPool):
    """An LLM judge's 1-10 quality score through any generation backend (column `judge`)."""

    enabled: bool = False
    model: str | None = Field(None, description="judge model: local dir, hub id or the endpoint's model name")
    backend: Backend = Field(default_factory=VllmBackend)
    template: str = Field(DEFAULT_JUDGE_TEMPLATE, description="text with {instruction} and {response}")
    max_tokens: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "JudgeSettings":
        if self.enabled and not self.model:
            raise ValueError("judge.model is required when the judge is enabled")
        missing = [k for k in ("{instruction}", "{response}") if k not in self.template]
        if missing:
            raise ValueError(f"judge.template must contain {' and '.join(missing)}")
        return self


class DifficultySettings(StrictModel):
    """Where the `difficulty` column for the curriculum comes from."""

    source: Literal["ifd", "loss", "length", "metadata"] = "ifd"
    key: str = Field("difficulty", description="metadata key when source is metadata")


class SelectorSettings(StrictModel):
    """How the budget is spent among the rows that survive filtering and dedup.

    The default draws them at random within each stratum: on the demo tasks that matched or beat
    k-center coverage and the IFD score-first selection (benchmarks/selection_effect.py)."""

    method: Literal["topk", "diverse", "kcenter", "random"] = "random"
    budget: int | None = Field(None, ge=1, description="rows to select")
    fraction: float | None = Field(0.5, gt=0, le=1, description="share of the input rows, when budget is unset")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"ifd": 1.0, "loss": -0.5},
        description="score = sum of weight x percentile rank of each column (negative: lower is better)")
    min_distance: float = Field(0.05, ge=0, le=2, description="diverse: cosine distance to every chosen row")
    stratify_by: str | None = Field(None, description="column or metadata key, e.g. task or source")
    quotas: dict[str, float] | None = Field(None, description="share of the budget per stratum; default proportional")
    quota_basis: Literal["input", "eligible"] = Field(
        "input", description="default quotas: each stratum's share of the input rows (keeps the pool's mix, "
                             "so dedup cannot starve a template-heavy task) or of the rows left after filters")
    shard_rows: int = Field(50_000, ge=100, description="diverse/kcenter run per shard of this size, then merge "
                                                         "(or, when the candidates would be every row, split the budget)")
    oversample: float = Field(2.0, ge=1, description="candidates each shard passes to the merge, x its share")
    seed: int = 0

    @model_validator(mode="after")
    def _budget(self) -> "SelectorSettings":
        unknown = set(self.weights) - set(SCORE_COLUMNS)
        if unknown:
            raise ValueError(f"weights: unknown score column(s) {sorted(unknown)}; choose from {list(SCORE_COLUMNS)}")
        if self.budget is None and self.fraction is None:
            raise ValueError("set budget (rows) or fraction")
        if self.quotas and not self.stratify_by:
            raise ValueError("quotas need stratify_by")
        if self.quotas and abs(sum(self.quotas.values()) - 1) > 1e-6:
            raise ValueError(f"quotas must sum to 1, not {sum(self.quotas.values()):g}")
        return self


class SelectOptions(StrictModel):
    """Everything but paths; the `select` section of a pipeline."""

    heuristics: HeuristicSettings = Field(default_factory=HeuristicSettings)
    verify: bool = Field(True, description="remove rows whose metadata.answer the output does not match")
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    scoring: ModelScoring = Field(default_factory=ModelScoring)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    difficulty: DifficultySettings = Field(default_factory=DifficultySettings)
    selector: SelectorSettings = Field(default_factory=SelectorSettings)
    batch_size: int = Field(2048, ge=1, description="rows per batch of the cheap scorers")

    @model_validator(mode="after")
    def _needs_model(self) -> "SelectOptions":
        used = set(self.selector.weights) | ({self.difficulty.source} & {"ifd", "loss"})
        model_cols = used & set(MODEL_COLUMNS)
        if model_cols and not self.scoring.enabled:
            raise ValueError(f"{sorted(model_cols)} need scoring.enabled: true")
        if "judge" in self.selector.weights and not self.judge.enabled:
            raise ValueError("weights.judge needs judge.enabled: true")
        if self.selector.method in ("diverse", "kcenter") and not self.scoring.enabled:
            raise ValueError(f"selector.method {self.selector.method} needs embeddings (scoring.enabled: true)")
        return self


class SelectConfig(SelectOptions):
    """`instructscale select`: a generated pool -> selected rows, a per-row score table, a summary."""

    input: str = Field(description="directory of Parquet rows (generation or ingest output)")
    out_dir: str
    features_dir: str | None = Field(None, description="reuse the features of an earlier run on the same input "
                                                       "and scorers (tuning trials re-select from one feature table)")
    overwrite: bool = False
