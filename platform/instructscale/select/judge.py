"""LLM-judge quality scores through the generation backends (vLLM, transformers, OpenAI-compatible)."""
from __future__ import annotations

import re

import pyarrow as pa

from instructscale.generate.backends import make_backend
from instructscale.generate.config import GenerateConfig, SamplingConfig
from instructscale.select.config import JudgeSettings
from instructscale.select.features import prompt_text

_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_score(text: str) -> float | None:
    """The judge's 1-10 score from its reply ("Score: 7"), or None if it gave none in range."""
    match = _SCORE.search(text or "")
    if not match:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 10 else None


class JudgeScorer:
    """Ray Data actor: one judge backend, adds the `judge` column (null when unparsable)."""

    def __init__(self, settings_json: str, api_key: str | None = None):
        self.cfg = JudgeSettings.model_validate_json(settings_json)
        gen = GenerateConfig(input="-", out_dir="-", model=self.cfg.model, backend=self.cfg.backend)
        self.backend = make_backend(gen, api_key)
        self.sampling = SamplingConfig(max_tokens=self.cfg.max_tokens, temperature=0.0)

    def scores(self, rows: list[dict]) -> list[float | None]:
        prompts = [[{"role": "user", "content": self.cfg.template.format(instruction=prompt_text(r),
                                                                           response=r.get("output") or "")}]
                   for r in rows]
        return [parse_score(c[0].text) for c in self.backend.generate(prompts, self.sampling)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.append_column("judge", pa.array(self.scores(batch.to_pylist()), pa.float32()))
