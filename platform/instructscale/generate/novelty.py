"""Self-Instruct's novelty filter at scale: is a new instruction's ROUGE-L F against any instruction
already in the pool at or over a threshold? Same tokenizer and LCS as `rouge-score`, with a
lossless prefilter.

ROUGE-L F of token lists a and b is exactly 2·LCS/(|a|+|b|), and the LCS is at most the size of
their multiset intersection m. So 2·m/(|a|+|b|) bounds F from above: a pool instruction whose bound
is under the threshold cannot be too similar, and only the rest get an LCS. The bounds for every
pool instruction come at once from an inverted index (token -> the instructions holding it, with
counts), so a check costs one pass over the query's postings plus a few LCS computations instead
of an LCS against every instruction, and accepts exactly what all-pairs would.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from rouge_score import rouge_scorer, tokenizers

EPS = 1e-9  # F and its bound are equal in exact arithmetic when LCS = m; keep ties on the safe side


class _Postings:
    """A growable (instruction, count) list for one token."""

    def __init__(self):
        self.docs, self.counts, self.size = np.empty(4, np.int32), np.empty(4, np.int32), 0

    def append(self, doc: int, count: int) -> None:
        if self.size == len(self.docs):
            self.docs, self.counts = np.resize(self.docs, 2 * self.size), np.resize(self.counts, 2 * self.size)
        self.docs[self.size], self.counts[self.size] = doc, count
        self.size += 1


class NoveltyIndex:
    """Instructions accepted so far; :meth:`nearest` finds the most similar one over a floor."""

    def __init__(self):
        self.tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)  # rouge-score's own
        self.vocab: dict[str, _Postings] = {}
        self.tokens: list[list[str]] = []
        self.lengths = np.empty(1024, np.int32)

    def __len__(self) -> int:
        return len(self.tokens)

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer.tokenize(text)

    def add(self, tokens: list[str]) -> None:
        doc = len(self.tokens)
        if doc == len(self.lengths):
            self.lengths = np.resize(self.lengths, 2 * doc)
        self.lengths[doc] = len(tokens)
        self.tokens.append(tokens)
        for token, count in Counter(tokens).items():
            self.vocab.setdefault(token, _Postings()).append(doc, count)

    def bounds(self, tokens: list[str]) -> np.ndarray:
        """Every pool instruction's upper bound on ROUGE-L F with ``tokens``."""
        n = len(self.tokens)
        overlap = np.zeros(n, np.int32)
        for token, count in Counter(tokens).items():
            if (p := self.vocab.get(token)) is not None:
                overlap[p.docs[: p.size]] += np.minimum(p.counts[: p.size], count)
        return 2 * overlap / np.maximum(len(tokens) + self.lengths[:n], 1)

    def nearest(self, tokens: list[str], floor: float) -> tuple[float, int | None]:
        """The highest ROUGE-L F of ``tokens`` against the pool and the instruction that has it,
        searched among instructions whose bound reaches ``floor`` (``(0.0, None)`` when none
        reaches it): candidates by falling bound, stopping once a bound is under the best F."""
        if not tokens or not self.tokens:
            return 0.0, None
        bound = self.bounds(tokens)
        candidates = np.flatnonzero(bound >= floor - EPS)
        best, best_doc = 0.0, None
        for doc in candidates[np.argsort(-bound[candidates], kind="stable")]:
            if bound[doc] < max(best, floor) - EPS:
                break
            f = lcs_f(self.tokens[doc], tokens)
            if f > best:
                best, best_doc = f, int(doc)
        return (best, best_doc) if best >= floor else (0.0, None)


def lcs_f(a: list[str], b: list[str]) -> float:
    """ROUGE-L F of two token lists, by rouge-score's own LCS."""
    return rouge_scorer._score_lcs(a, b).fmeasure
