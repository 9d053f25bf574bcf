"""The built-in row filters (plug-ins): length bounds, repetition, control characters, charset and
refusal phrases, truncated outputs and decontamination against eval sets; after scoring, the IFD
cap. Each returns the reason a row is dropped, or None."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import xxhash
from pydantic import Field, model_validator

from instructscale import storage
from instructscale.chat import prompt_text
from instructscale.lifecycle import part_files, require_dataset
from instructscale.plugins import EvalSuite, PluginConfig, RowFilter, register
from instructscale.select.features import normalize_text

DEFAULT_REFUSALS = ["as an ai", "i cannot", "i can't", "i'm sorry", "i am sorry", "i am unable", "i'm unable"]


@register("length")
class Length(RowFilter):
    """Bounds on the prompt's and the output's characters."""

    class Config(PluginConfig):
        kind: str = "length"
        min_instruction_chars: int = Field(3, ge=0)
        max_instruction_chars: int = Field(8000, ge=1)
        min_output_chars: int = Field(1, ge=0)
        max_output_chars: int = Field(2000, ge=1)

    def filter(self, row: dict) -> str | None:
        c, output = self.config, row.get("output") or ""
        if row["prompt_chars"] < c.min_instruction_chars:
            return "instruction_too_short"
        if row["prompt_chars"] > c.max_instruction_chars:
            return "instruction_too_long"
        if len(output.strip()) < c.min_output_chars:
            return "output_too_short"
        if len(output) > c.max_output_chars:
            return "output_too_long"
        return None


@register("repetition")
class Repetition(RowFilter):
    """Outputs that loop: too large a share of repeated word 3-grams."""

    class Config(PluginConfig):
        kind: str = "repetition"
        max_repetition: float = Field(0.5, ge=0, le=1, description="share of repeated word 3-grams in the output")

    def filter(self, row: dict) -> str | None:
        return "repetitive_output" if row["repetition"] > self.config.max_repetition else None


@register("control_characters")
class ControlCharacters(RowFilter):
    """Control characters other than newline, tab and carriage return."""

    class Config(PluginConfig):
        kind: str = "control_characters"

    def filter(self, row: dict) -> str | None:
        text = row["prompt"] + (row.get("output") or "")
        return "control_characters" if any(ch < " " and ch not in "\n\t\r" for ch in text) else None


@register("non_ascii")
class NonAscii(RowFilter):
    """Charset filter: too large a share of non-ASCII characters."""

    class Config(PluginConfig):
        kind: str = "non_ascii"
        max_non_ascii: float = Field(0.3, ge=0, le=1)

    def filter(self, row: dict) -> str | None:
        text = row["prompt"] + (row.get("output") or "")
        share = sum(ord(ch) > 127 for ch in text) / len(text) if text else 0.0
        return "non_ascii" if share > self.config.max_non_ascii else None


@register("refusal")
class Refusal(RowFilter):
    """Outputs that refuse ("As an AI...", "I'm sorry...")."""

    class Config(PluginConfig):
        kind: str = "refusal"
        phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))

    def filter(self, row: dict) -> str | None:
        low = (row.get("output") or "").lower()
        return "refusal" if any(p in low for p in self.config.phrases) else None


@register("truncated")
class Truncated(RowFilter):
    """Outputs the teacher stopped at ``max_tokens`` (``finish_reason`` "length"): cut mid-answer."""

    class Config(PluginConfig):
        kind: str = "truncated"

    def filter(self, row: dict) -> str | None:
        return "truncated_output" if row.get("finish_reason") == "length" else None


@register("decontaminate")
class Decontaminate(RowFilter):
    """Rows that contain a word n-gram (13 words by default, as the usual decontamination scripts) of
    an evaluation or benchmark prompt (reason ``contaminated``): the rows of ``eval_sets`` and the
    prompts of the evaluation ``suites`` (e.g. ``general``, ``ifbench``). Texts are normalised as for
    dedup; an eval prompt shorter than ``ngram`` words must appear whole. Each worker process builds
    the n-gram index once: it grows with the eval sets, never with the pool."""

    class Config(PluginConfig):
        kind: str = "decontaminate"
        eval_sets: list[str] = Field(
            default_factory=list, description="datasets to keep out of training (Parquet rows, any URI)"
        )
        suites: list[str] = Field(
            default_factory=list, description="evaluation suites (their default prompts) to keep out of training"
        )
        ngram: int = Field(13, ge=1)
        fields: Literal["prompt", "prompt_and_response"] = Field(
            "prompt_and_response", description="what of a training row is searched for eval prompts"
        )

        @model_validator(mode="after")
        def _needs_prompts(self) -> Decontaminate.Config:
            if not self.eval_sets and not self.suites:
                raise ValueError("decontaminate needs `eval_sets` or `suites`")
            return self

    def checked(self) -> PluginConfig:
        for uri in self.config.eval_sets:
            require_dataset(uri, "decontaminate.eval_sets")
        self._suite_prompts()
        return self.config

    def _suite_prompts(self) -> list[str]:
        prompts = []
        for kind in self.config.suites:
            suite = EvalSuite.registry.build(EvalSuite.registry.parse(kind))
            turns = [turn for row in suite.prompts(None) for turn in row["conversation"]]
            prompts += [turn["content"] for turn in turns if turn["role"] == "user"]
        return prompts

    @staticmethod
    def _grams(words: list[str], n: int) -> set[int]:
        return {xxhash.xxh64_intdigest(" ".join(words[i : i + n]).encode()) for i in range(len(words) - n + 1)}

    @cached_property
    def _index(self) -> dict[int, set[int]]:
        """n-gram length -> hashes of the eval prompts' n-grams of that length."""
        texts = self._suite_prompts()
        for uri in self.config.eval_sets:
            rows = storage.read_parquet(part_files(require_dataset(uri, "decontaminate.eval_sets"))).to_pylist()
            texts += [prompt_text(row) for row in rows]
        index: dict[int, set[int]] = {}
        for text in texts:
            words = normalize_text(text).split()
            n = min(self.config.ngram, len(words))
            if n:
                index.setdefault(n, set()).update(self._grams(words, n))
        return index

    def filter(self, row: dict) -> str | None:
        text = row["prompt"] if self.config.fields == "prompt" else f"{row['prompt']}\n{row.get('output') or ''}"
        words = normalize_text(text).split()
        hit = any(not grams.isdisjoint(self._grams(words, n)) for n, grams in self._index.items())
        return "contaminated" if hit else None


@register("max_ifd")
class MaxIFD(RowFilter):
    """After scoring: rows whose response the instruction does not help, IFD above ``limit``
    (Cherry LLM keeps IFD < 1; IFD is the model scorer's). Rows without an IFD pass."""

    after_scoring = True
    columns = ("ifd",)

    class Config(PluginConfig):
        kind: str = "max_ifd"
        limit: float = Field(1.0, gt=0)

    def filter(self, row: dict) -> str | None:
        ifd = row.get("ifd")
        return "ifd_above_max" if ifd is not None and ifd > self.config.limit else None


@register("min_score")
class MinScore(RowFilter):
    """After scoring: rows whose score ``column`` is below ``min`` (reason ``<column>_below_min``).
    AlpaGasus (Chen et al. 2024) keeps the rows an LLM judge rates at least 4.5 of 5; here the
    judge scorer rates 1-10, so ``{kind: min_score, column: judge, min: 9}`` is its threshold.
    Rows without the score pass (they are ``unscorable`` if the scorer requires it)."""

    after_scoring = True

    class Config(PluginConfig):
        kind: str = "min_score"
        column: str = Field(description="a score column of a configured scorer, e.g. judge")
        min: float

    @classmethod
    def reads(cls, config: PluginConfig) -> tuple[str, ...]:
        return (config.column,)

    def filter(self, row: dict) -> str | None:
        value = row.get(self.config.column)
        return f"{self.config.column}_below_min" if value is not None and value < self.config.min else None
