"""Answer checking shared by the verifier filter and evaluation: exact match after normalisation,
token F1 and ROUGE-L against a reference."""

from __future__ import annotations

import re
from functools import lru_cache

_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize_answer(text: str | None) -> str:
    """Canonical form for exact-match checks: lower case, single spaces, no trailing period."""
    text = re.sub(r"\s+", " ", (text or "").strip().lower())
    return text.rstrip(".")


def check_answer(prediction: str | None, answer: str) -> bool:
    """True when ``prediction`` equals the reference ``answer`` after normalisation."""
    return normalize_answer(prediction) == normalize_answer(answer)


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
