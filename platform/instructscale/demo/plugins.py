"""The demo's plug-ins, registered through the `instructscale.plugins` entry point: the verifier
that drops rows whose output does not match the reference answer in ``metadata.answer``."""

from __future__ import annotations

from instructscale.answers import check_answer
from instructscale.plugins import PluginConfig, RowFilter, register
from instructscale.schema import decode_metadata


@register("reference_answer")
class ReferenceAnswer(RowFilter):
    """Verifier: a row with a checkable ``metadata.answer`` must answer it (after normalisation)."""

    class Config(PluginConfig):
        kind: str = "reference_answer"
        key: str = "answer"

    def filter(self, row: dict) -> str | None:
        answer = decode_metadata(row.get("metadata")).get(self.config.key)
        if answer is None or check_answer(row.get("output"), str(answer)):
            return None
        return "verifier_wrong"
