"""The shared statistics: intervals that cover what they should, paired differences, verdicts."""

import numpy as np
import pytest

from instructscale import stats


def test_mean_and_interval_of_a_known_sample():
    values = [0.0] * 50 + [1.0] * 50
    mean, (low, high) = stats.mean_ci(values)
    assert mean == 0.5 and low < 0.5 < high
    # the bootstrap's spread matches the binomial standard error (0.05) within resampling noise
    assert (high - low) / (2 * 1.96) == pytest.approx(0.05, rel=0.15)
    assert stats.metric("exact_match", values) == {"exact_match": 0.5, "exact_match_ci95": [low, high]}
    assert stats.mean_ci([1.0, 1.0, 1.0]) == (1.0, [1.0, 1.0])


def test_paired_difference_on_a_hand_made_fixture():
    # 40 prompts: the other model fixes 12 the baseline got wrong and breaks 2 it got right
    base = [0] * 20 + [1] * 20
    other = [1] * 12 + [0] * 8 + [1] * 18 + [0] * 2
    out = stats.paired(base, other)
    assert out["diff"] == pytest.approx(10 / 40) and out["verdict"] == stats.BETTER
    assert 0 < out["diff_ci95"][0] < 0.25 < out["diff_ci95"][1]
    assert stats.paired(other, base)["verdict"] == stats.WORSE
    assert stats.paired(base, other, higher_is_better=False)["verdict"] == stats.WORSE  # e.g. a loss went up
    same = stats.paired(base, [1 - v if i in (0, 39) else v for i, v in enumerate(base)])
    assert same["verdict"] == stats.SAME and same["diff_ci95"][0] < 0 < same["diff_ci95"][1]


def test_pairing_narrows_the_interval_and_seeds_are_resampled_too():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=200)  # shared by both models: pairing cancels it
    base, other = difficulty, difficulty + 0.1 + rng.normal(scale=0.05, size=200)
    paired = stats.paired(base, other)["diff_ci95"]
    _, (lo_a, hi_a) = stats.mean_ci(base)
    assert paired[1] - paired[0] < (hi_a - lo_a) / 5 and paired[0] > 0
    seeds = np.stack([base + s for s in (-0.3, 0.0, 0.3)])  # 3 seeds x 200 prompts
    wide = stats.mean_ci(seeds)[1]
    assert wide[1] - wide[0] > hi_a - lo_a  # the seeds' spread widens the interval
    with pytest.raises(ValueError, match="same prompts"):
        stats.paired([1, 2], [1, 2, 3])
