"""Typed config of the selection stage: filters, dedup, scorers, difficulty, budget and selector.

Filters, scorers and the selector are plug-ins (:mod:`instructscale.plugins`), chosen by name.
Settings left out follow the configured scorers (each declares its weights, its difficulty column
and its after-scoring filters): a config without scorers needs none of them."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from instructscale.config import StrictModel, without_operational
from instructscale.lifecycle import StageConfig
from instructscale.plugins import EMBEDDING, FilterSpec, RowFilter, Scorer, ScorerSpec, Selector, SelectorSpec

TEXT_COLUMNS = ("prompt_chars", "output_chars", "repetition")  # computed for every row
FEATURES_VERSION = 2  # n-gram hashes and batched MinHash signatures
TEXT_FILTERS = ("length", "repetition", "control_characters", "refusal", "truncated")
DEFAULT_SCORERS = ("model",)


def _scorer_classes(specs: Any) -> list[tuple[type[Scorer], Any]]:
    """(class, spec) of the scorers ``specs`` (raw config values) name; unknown ones are left to validation."""
    out = []
    for s in specs or ():
        kind = s if isinstance(s, str) else s.get("kind") if isinstance(s, dict) else s.kind
        if isinstance(kind, str) and kind in Scorer.registry.names():
            out.append((Scorer.registry.get(kind), s))
    return out


class DedupSettings(StrictModel):
    """Exact duplicates by normalised text hash; near duplicates by MinHash LSH candidates verified
    by the exact Jaccard similarity of their word n-grams. Both run as one Ray Data shuffle."""

    fields: Literal["prompt", "prompt_and_response"] = "prompt"
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity of word n-grams")
    ngram: int = Field(2, ge=1)
    num_perm: int = Field(128, ge=16)
    seed: int = 1
    candidate_recall: float = Field(
        0.95, gt=0, lt=1, description="LSH banding: chance that a pair at exactly `threshold` is compared"
    )
    rows_per_partition: int = Field(250_000, ge=1000, description="key rows per partition of the dedup shuffle")


class DifficultySettings(StrictModel):
    """Where the `difficulty` column for the curriculum comes from: a score column (``ifd``,
    ``loss``, ...), ``length`` (output characters) or ``metadata`` (the ``key`` there)."""

    source: str = Field("length", description="default: the first configured scorer's difficulty column, else length")
    key: str = Field("difficulty", description="metadata key when source is metadata")


class BudgetSettings(StrictModel):
    """How many rows (a token mixture: tokens) to select, and how they are shared among strata."""

    budget: int | None = Field(None, ge=1, description="rows to select")
    tokens: int | None = Field(None, ge=1, description="tokens to select (a mixture in tokens)")
    fraction: float | None = Field(
        0.5, gt=0, le=1, description="share of the input rows (a mixture in tokens: of its tokens), when unset"
    )
    stratify_by: str | None = Field(None, description="column or metadata key, e.g. task or source")
    quotas: dict[str, float] | None = Field(None, description="share of the budget per stratum; default proportional")
    quota_basis: Literal["input", "eligible"] = Field(
        "input",
        description="default quotas: each stratum's share of the input rows (keeps the pool's mix, "
        "so dedup cannot starve a template-heavy task) or of the rows left after filters",
    )

    @model_validator(mode="after")
    def _check(self) -> BudgetSettings:
        if self.budget is None and self.fraction is None:
            raise ValueError("set budget (rows) or fraction")
        if self.quotas and not self.stratify_by:
            raise ValueError("quotas need stratify_by")
        if self.quotas and abs(sum(self.quotas.values()) - 1) > 1e-6:
            raise ValueError(f"quotas must sum to 1, not {sum(self.quotas.values()):g}")
        return self


class MixSettings(StrictModel):
    """A mixture of sources: each source (a value of the ``by`` column or metadata key) gets its
    weight's share of the budget, counted in rows or in tokens, and the selector chooses within each
    source. The shares hold over the selection as a whole (rows: within one row each; tokens: within
    one row's tokens each); a LLaMA-Factory dataset's ``weight`` is such a weight."""

    by: str = Field("source", description="column or metadata key naming a row's source")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="relative weight per source (normalised); in a pipeline, default: the inputs' `weight`s",
    )
    unit: Literal["rows", "tokens"] = "rows"
    shortfall: Literal["redistribute", "stop"] = Field(
        "redistribute",
        description="a source with too little for its share: the others share what it lacks, or the stage stops",
    )
    tokenizer: str | None = Field(
        None, description="unit tokens: the tokenizer that counts a row's tokens (in a pipeline: the student's)"
    )
    max_length: int | None = Field(
        None, ge=8, description="count at most this many tokens a row, as training truncates"
    )

    @model_validator(mode="after")
    def _check(self) -> MixSettings:
        if any(w <= 0 for w in self.weights.values()):
            raise ValueError(f"weights must be positive (leave a source out instead): {self.weights}")
        return self

    def shares(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {k: w / total for k, w in self.weights.items()}


class SelectOptions(StrictModel):
    """Everything but paths; the `select` section of a pipeline."""

    filters: list[FilterSpec] = Field(
        default_factory=list,
        description="row filters in order; a row's reason is the first it fails (before scoring, then "
        "after). Default: the text filters plus the configured scorers' own (the model scorer's IFD cap)",
    )
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    scorers: list[ScorerSpec] = Field(
        default_factory=lambda: list(DEFAULT_SCORERS),
        description="model (perplexity, IFD, embeddings), judge, or plug-ins",
    )
    difficulty: DifficultySettings = Field(default_factory=DifficultySettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    mix: MixSettings | None = Field(None, description="a mixture of sources by weight, in rows or tokens")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="score = sum of weight x percentile rank of each column (negative: lower is better); "
        "it ranks rows for the selector and decides which duplicate stays. Default: the scorers' own",
    )
    selector: SelectorSpec = Field("random", description="random | topk | longest | diverse | kcenter | a plug-in")
    batch_size: int = Field(2048, ge=1, description="rows per batch of the cheap features and filters")

    def score_columns(self) -> dict[str, object]:
        """Every score column this config produces: text statistics plus each scorer's columns."""
        cols: dict[str, object] = dict.fromkeys(TEXT_COLUMNS)
        for s in self.scorers:
            cols.update(zip(Scorer.columns_of(s), Scorer.registry.get(s.kind).columns.values()))
        return cols

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_the_scorers(cls, data: Any) -> Any:
        """Filters, weights and the difficulty source left out come from the configured scorers
        (a named scorer's weights and difficulty under its column names; its filters read the
        unnamed columns, so they are not added)."""
        if not isinstance(data, dict):
            return data
        scorers, data = _scorer_classes(data.get("scorers", DEFAULT_SCORERS)), dict(data)
        if data.get("filters") is None:
            data["filters"] = [*TEXT_FILTERS, *(f for c, s in scorers if not c.prefix(s) for f in c.filters)]
        if data.get("weights") is None:
            data["weights"] = {c.prefix(s) + k: v for c, s in scorers for k, v in c.weights.items()}
        difficulty = data.get("difficulty") or {}
        if isinstance(difficulty, dict) and "source" not in difficulty:
            source = next((c.prefix(s) + c.difficulty for c, s in scorers if c.difficulty), "length")
            data["difficulty"] = {**difficulty, "source": source}
        return data

    def with_models(self, models: dict[str, str]) -> SelectOptions:
        """A copy whose scorers that name a model role (the model scorer: ``student``) get
        ``models[role]``, unless their own ``model`` is set; a token mixture counts with the
        student's tokenizer unless it names one."""
        scorers = []
        for spec in self.scorers:
            role = Scorer.registry.get(spec.kind).model_role
            unset = role and role in models and getattr(spec, "model", "") is None
            scorers.append(spec.model_copy(update={"model": models[role]}) if unset else spec)
        update: dict[str, Any] = {"scorers": scorers}
        if self.tokens_counted() and self.mix.tokenizer is None and "student" in models:
            update["mix"] = self.mix.model_copy(update={"tokenizer": models["student"]})
        return self.model_copy(update=update)

    def tokens_counted(self) -> bool:
        """Whether every row gets a ``tokens`` feature (a mixture in tokens)."""
        return bool(self.mix and self.mix.unit == "tokens")

    def strata_key(self) -> str | None:
        """The column or metadata key the budget is split by: the mixture's sources, or budget.stratify_by."""
        return self.mix.by if self.mix else self.budget.stratify_by

    def filters_before_scoring(self) -> list:
        return [f for f in self.filters if not RowFilter.registry.get(f.kind).after_scoring]

    def filters_after_scoring(self) -> list:
        return [f for f in self.filters if RowFilter.registry.get(f.kind).after_scoring]

    @model_validator(mode="after")
    def _columns_exist(self) -> SelectOptions:
        known = self.score_columns()
        unknown = set(self.weights) - set(known)
        if unknown:
            raise ValueError(
                f"weights: unknown score column(s) {sorted(unknown)}; the configured scorers give {sorted(known)}"
            )
        source = self.difficulty.source
        if source not in ("length", "metadata") and source not in known:
            raise ValueError(
                f"difficulty.source: {source!r} is not a score column of the configured scorers "
                f"({sorted(known)}), 'length' or 'metadata'"
            )
        for f in self.filters_after_scoring():
            missing = [c for c in RowFilter.registry.get(f.kind).reads(f) if c not in known]
            if missing:
                raise ValueError(f"filters: {f.kind} reads score column(s) {missing}, which no configured scorer gives")
        if Selector.registry.get(self.selector.kind).needs_embeddings and EMBEDDING not in known:
            raise ValueError(
                f"selector {self.selector.kind} needs embeddings (a scorer that gives `{EMBEDDING}`, such as model)"
            )
        if self.mix and (self.budget.stratify_by or self.budget.quotas):
            raise ValueError(
                "mix stratifies by its `by` column with its weights: leave budget.stratify_by and quotas out"
            )
        if self.budget.tokens is not None and not self.tokens_counted():
            raise ValueError("budget.tokens is the budget of a mixture in tokens: set mix.unit: tokens")
        named = [Scorer.prefix(s) + s.kind for s in self.scorers]
        if len(set(named)) != len(named):
            raise ValueError(f"scorers: a kind twice needs a `name` on each but one (its column prefix), got {named}")
        return self


class SelectConfig(SelectOptions, StageConfig):
    """`instructscale select`: a pool -> selected rows, a per-row score table, a summary."""

    input: str = Field(description="Parquet rows (generation or ingest output, or any dataset directory/URI)")
    out_dir: str
    features_dir: str | None = Field(
        None,
        description="reuse the features of an earlier run on the same input "
        "and scorers (tuning trials re-select from one feature table)",
    )

    IDENTITY_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"features_dir"})

    def feature_identity(self) -> dict:
        """What decides whether stored features can be reused."""
        dedup = self.dedup.model_dump(mode="json", include={"fields", "ngram", "num_perm", "seed"})
        scoring = without_operational(self, self.model_dump(mode="json", include={"input", "scorers", "batch_size"}))
        filters = [f.model_dump(mode="json") for f in self.filters_before_scoring()]
        counted = self.mix.model_dump(include={"tokenizer", "max_length"}) if self.tokens_counted() else None
        tokens = {"tokens": counted} if counted else {}
        return {**scoring, "filters": filters, "dedup": dedup, "features": FEATURES_VERSION, **tokens}
