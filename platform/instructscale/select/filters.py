"""The built-in row filters (plug-ins): length bounds, repetition, control characters, charset and
refusal phrases. Each returns the reason a row is dropped, or None."""

from __future__ import annotations

from pydantic import Field

from instructscale.plugins import PluginConfig, RowFilter, register

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
