"""Answer checking shared by the verifier filter and evaluation: exact match after normalisation."""

from __future__ import annotations

import re


def normalize_answer(text: str | None) -> str:
    """Canonical form for exact-match checks: lower case, single spaces, no trailing period."""
    text = re.sub(r"\s+", " ", (text or "").strip().lower())
    return text.rstrip(".")


def check_answer(prediction: str | None, answer: str) -> bool:
    """True when ``prediction`` equals the reference ``answer`` after normalisation."""
    return normalize_answer(prediction) == normalize_answer(answer)
