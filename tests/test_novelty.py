"""The novelty filter accepts exactly what an all-pairs rouge-score check accepts."""

from __future__ import annotations

import random

from rouge_score import rouge_scorer

from instructscale.generate.novelty import NoveltyIndex

WORDS = [
    "write",
    "a",
    "short",
    "poem",
    "story",
    "list",
    "summary",
    "about",
    "the",
    "cat",
    "dog",
    "sea",
    "city",
    "rain",
    "and",
    "of",
    "three",
    "five",
    "why",
    "how",
]


def _instructions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(n)]


def test_prefiltered_nearest_matches_all_pairs_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool, queries = _instructions(300, 0), _instructions(60, 1)
    index = NoveltyIndex()
    for text in pool:
        index.add(index.tokenize(text))
    for q in queries:
        exact = max(scorer.score(p, q)["rougeL"].fmeasure for p in pool)
        for floor in (0.0, 0.5, 0.7):
            best, doc = index.nearest(index.tokenize(q), floor)
            if exact >= floor and exact > 0:
                assert abs(best - exact) < 1e-12 and scorer.score(pool[doc], q)["rougeL"].fmeasure == best
            else:
                assert (best, doc) == (0.0, None)


def test_sequential_acceptance_equals_all_pairs_including_ties_at_the_threshold():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    # "a b c d e" vs "a b c x y": LCS 3 of 5 + 5 tokens, F = 0.6 exactly: too similar at 0.6
    texts = ["a b c d e", "a b c x y", "q r s t u", *_instructions(200, 2)]
    for threshold in (0.6, 0.7):
        kept, index = [], NoveltyIndex()
        for text in texts:
            tokens = index.tokenize(text)
            if index.nearest(tokens, threshold)[1] is None:
                kept.append(text)
                index.add(tokens)
        brute = []
        for text in texts:
            if all(scorer.score(k, text)["rougeL"].fmeasure < threshold for k in brute):
                brute.append(text)
        assert kept == brute
        assert ("a b c x y" in kept) == (threshold > 0.6)
