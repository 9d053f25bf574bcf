"""The pairwise judge: which of two models' answers to the same prompt is better, asked of a judge
model (any generation backend: a vLLM model, an OpenAI-compatible endpoint). Each pair is judged
in both orders, which cancels a judge's preference for a position; a prompt's score for the second
model is the mean of its two outcomes (win 1, tie 0.5, loss 0), and the win rate is their mean
(ties count half), with the interval of :mod:`instructscale.stats` over prompts.

A small judge (SmolLM2 here) is weak: its verdicts are reported as they are. On a cluster, point
the judge at a large model.
"""

from __future__ import annotations

import re

from pydantic import Field

from instructscale import stats
from instructscale.backends.base import Conversation
from instructscale.config import StrictModel
from instructscale.plugins import BackendSpec

TEMPLATE = (
    "You are comparing two answers to the same instruction. Judge which answer follows the "
    "instruction better: correct, complete, and in the form asked for.\n\n"
    "Instruction:\n{instruction}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Reply with one word: A if answer A is better, B if answer B is better, or tie."
)
_VERDICT = re.compile(r"\b(tie|a|b)\b", re.IGNORECASE)
OUTCOME = {"A": 0.0, "B": 1.0, "tie": 0.5}  # the second model's outcome when it is answer B


class JudgeSettings(StrictModel):
    """The pairwise judge: a model and the backend that serves it."""

    model: str | None = Field(None, description="judge model (default: the pipeline's teacher)")
    backend: BackendSpec = "vllm"
    max_tokens: int = Field(8, ge=1)
    max_answer_chars: int = Field(2000, ge=1, description="each answer is cut to this many characters")


def parse_verdict(text: str | None) -> str | None:
    """``A``, ``B`` or ``tie`` from the judge's reply (its first such word), None when it gave none."""
    match = _VERDICT.search(text or "")
    if not match:
        return None
    word = match.group(1).lower()
    return "tie" if word == "tie" else word.upper()


def pair_prompts(instruction: str, first: str, second: str, max_chars: int) -> list[Conversation]:
    """The pair in both orders: (first as A, second as B), then (second as A, first as B)."""
    a, b = (first or "")[:max_chars], (second or "")[:max_chars]
    return [
        [{"role": "user", "content": TEMPLATE.format(instruction=instruction, a=a, b=b)}],
        [{"role": "user", "content": TEMPLATE.format(instruction=instruction, a=b, b=a)}],
    ]


def second_model_score(in_order: str | None, swapped: str | None) -> float | None:
    """The second model's score on one prompt from the two verdicts (None: neither parsed)."""
    outcomes = []
    if in_order is not None:
        outcomes.append(OUTCOME[in_order])
    if swapped is not None:
        outcomes.append(1.0 - OUTCOME[swapped])
    return sum(outcomes) / len(outcomes) if outcomes else None


def win_rate(scores: list[float | None]) -> dict:
    """``win_rate`` with its interval, and the verdict against an even split (0.5)."""
    known = [s for s in scores if s is not None]
    if not known:
        return {"win_rate": None, "judged": 0, "unparsable": len(scores)}
    out = stats.metric("win_rate", known)
    low, high = out["win_rate_ci95"]
    return {
        **out,
        "verdict": stats.verdict([low - 0.5, high - 0.5]),
        "judged": len(known),
        "unparsable": len(scores) - len(known),
    }
