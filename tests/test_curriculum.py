"""Curriculum schedules, checked exactly on small difficulty lists."""

import numpy as np
import pytest

from instructscale.plugins import Curriculum
from instructscale.train.curriculum import build_schedule, competence


def CurriculumConfig(strategy: str, **options):
    return Curriculum.registry.parse({"kind": strategy, **options})


D = [5, 1, 4, 2, 3, 0, 7, 6]  # row i has difficulty D[i]; sorted order is 5,1,3,4,2,0,7,6


def schedule(strategy: str, **kw) -> list[list[int]]:
    opts = {k: kw.pop(k) for k in ("pacing", "c0", "competence_fraction", "buckets") if k in kw}
    return build_schedule(D, CurriculumConfig(strategy=strategy, **opts), seed=0, **kw).tolist()


def test_easy_to_hard_and_anti_are_exact_orders():
    assert schedule("easy_to_hard", global_batch=2, epochs=1) == [[5, 1], [3, 4], [2, 0], [7, 6]]
    assert schedule("anti", global_batch=2, epochs=1) == [[6, 7], [0, 2], [4, 3], [1, 5]]
    # every epoch restarts from the easiest rows; max_steps truncates
    two = schedule("easy_to_hard", global_batch=4, epochs=2)
    assert two == [[5, 1, 3, 4], [2, 0, 7, 6], [5, 1, 3, 4], [2, 0, 7, 6]]
    assert schedule("easy_to_hard", global_batch=4, epochs=2, max_steps=3) == two[:3]


def test_ties_are_shuffled_but_reproducible():
    d = [1, 1, 1, 1, 0, 0, 0, 0]
    cfg = CurriculumConfig(strategy="easy_to_hard")
    first = build_schedule(d, cfg, global_batch=4, epochs=1, seed=0).tolist()
    assert sorted(first[0]) == [4, 5, 6, 7] and sorted(first[1]) == [0, 1, 2, 3]
    assert first == build_schedule(d, cfg, global_batch=4, epochs=1, seed=0).tolist()
    assert any(build_schedule(d, cfg, global_batch=4, epochs=1, seed=s).tolist() != first for s in range(1, 6))


def test_random_is_a_permutation_per_epoch():
    batches = schedule("random", global_batch=4, epochs=2)
    assert len(batches) == 4
    assert sorted(batches[0] + batches[1]) == list(range(8)) == sorted(batches[2] + batches[3])
    assert batches[:2] != batches[2:]


def test_competence_pacing_values_and_availability():
    assert competence(0, 10, 0.25, "linear") == pytest.approx(0.25)
    assert competence(5, 10, 0.25, "linear") == pytest.approx(0.625)
    assert competence(0, 10, 0.2, "sqrt") == pytest.approx(0.2)
    assert competence(5, 10, 0.2, "sqrt") == pytest.approx(np.sqrt(0.5 * 0.96 + 0.04))
    assert competence(20, 10, 0.2, "sqrt") == 1.0
    d = list(range(100))  # difficulty == index, so a row's index is its rank
    cfg = CurriculumConfig(strategy="competence", pacing="linear", c0=0.1, competence_fraction=1.0)
    batches = build_schedule(d, cfg, global_batch=10, epochs=1, seed=0).tolist()
    assert len(batches) == 10
    for t, batch in enumerate(batches):
        available = max(10, round(competence(t, 10, 0.1, "linear") * 100))
        assert len(set(batch)) == 10 and max(batch) < available, (t, batch)
    assert sorted(batches[0]) == list(range(10))  # at c0 only the easiest 10% exist


def test_baby_steps_adds_one_bucket_per_stage():
    d = list(range(12))
    cfg = CurriculumConfig(strategy="baby_steps", buckets=3)
    batches = build_schedule(d, cfg, global_batch=2, epochs=1, seed=0).tolist()
    assert len(batches) == 6  # 12 rows / 2 per step, split 2/2/2 over the three stages
    assert [max(max(b) for b in batches[k : k + 2]) < 4 * (k // 2 + 1) for k in (0, 2, 4)] == [True] * 3
    assert all(max(b) < 4 for b in batches[:2])


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="training set has 8 rows, fewer than one global batch \\(16\\)"):
        schedule("random", global_batch=16, epochs=1)
