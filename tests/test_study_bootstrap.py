"""Bootstrap intervals, hypervolume and matched-budget differences against hand-computed cases
and SciPy's ``stats.bootstrap`` (the reference implementation)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from avl_lab.experiments.study import bootstrap


def _every_draw(n: int) -> np.ndarray:
    """All n**n draws of n samples with replacement, each once: the exact bootstrap."""
    return np.array(list(itertools.product(range(n), repeat=n)))


def test_exact_bootstrap_of_a_mean_by_hand():
    """Scores [0, 0, 1]: over the 27 equally likely draws the mean is 0 (8 draws), 1/3 (12),
    2/3 (6) and 1 (1). Sorted, the 2.5% quantile sits at position 0.025·26 = 0.65 (between two
    0s) and the 97.5% one at 25.35: 2/3 + 0.35·(1 − 2/3)."""
    score = np.array([[0.0, 0.0, 1.0]])
    means = bootstrap.resample(score, _every_draw(3))[0]
    assert sorted(np.round(means * 3).astype(int).tolist()) == [0] * 8 + [1] * 12 + [2] * 6 + [3]
    lo, hi = bootstrap.interval(means, 0.95)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(2 / 3 + 0.35 / 3)


def test_hypervolume_by_hand():
    """Fronts as staircases over used ∈ [0, 1]: (0.2, 0.5), (0.5, 0.8) and a dominated (0.7, 0.6)
    cover 0.3·0.5 + 0.5·0.8 = 0.55; used beyond 1 is clipped, negative scores count as 0."""
    used, score = np.array([0.2, 0.5, 0.7]), np.array([0.5, 0.8, 0.6])
    assert bootstrap.hypervolume(used, score) == pytest.approx(0.55)
    assert bootstrap.hypervolume(np.array([0.5, 1.4]), np.array([0.4, 2.0])) == pytest.approx(0.2)
    assert bootstrap.hypervolume(np.array([0.3]), np.array([-1.0])) == 0.0
    batched = bootstrap.hypervolume(np.stack([used, used[::-1]]), np.stack([score, score[::-1]]))
    assert batched == pytest.approx([0.55, 0.55])  # the order of trials does not matter


def test_best_within_a_budget():
    used, score = np.array([0.2, 0.5, 0.7]), np.array([0.5, 0.8, 0.6])
    assert bootstrap.best_within(used, score, 0.5) == 0.8
    assert bootstrap.best_within(used, score, 0.3) == 0.5
    assert np.isnan(bootstrap.best_within(used, score, 0.1))


def test_paired_hypervolume_on_every_draw_by_hand():
    """Two trials on two samples: trial 0 (used 0.2, 0.4; score 1, 0), trial 1 (used 0.6, 0.6;
    score 1, 1). The four draws give HV of (trial 0, trial 1) fronts as computed below."""
    used = np.array([[0.2, 0.4], [0.6, 0.6]])
    score = np.array([[1.0, 0.0], [1.0, 1.0]])
    idx = _every_draw(2)  # [[0,0], [0,1], [1,0], [1,1]]
    u, s = bootstrap.resample(used, idx), bootstrap.resample(score, idx)  # [T, B]
    hv = bootstrap.hypervolume(u.T, s.T)
    # draw [0,0]: trial 0 at (0.2, 1) -> 0.8; [0,1] and [1,0]: (0.3, 0.5) then (0.6, 1) -> 0.3·0.5 + 0.4
    # = 0.55; [1,1]: (0.4, 0) dominates nothing, (0.6, 1) -> 0.4
    assert hv == pytest.approx([0.8, 0.55, 0.55, 0.4])


def test_draws_are_seeded():
    a, b = bootstrap.draws(5, 100, seed=3), bootstrap.draws(5, 100, seed=3)
    assert a.shape == (100, 5) and (a == b).all() and a.min() >= 0 and a.max() < 5
    assert not (a == bootstrap.draws(5, 100, seed=4)).all()
    with pytest.raises(ValueError):
        bootstrap.draws(0, 10, 0)


def test_interval_agrees_with_scipy():
    """Percentile intervals of a mean and of a paired difference, against SciPy's bootstrap:
    the two resample differently, so they agree to Monte-Carlo error (20,000 draws)."""
    stats = pytest.importorskip("scipy.stats", reason="scipy is the reference implementation")
    rng = np.random.default_rng(0)
    x = rng.binomial(1, 0.6, size=40).astype(float)  # ANLS-like 0/1 scores
    y = np.clip(x - rng.binomial(1, 0.25, size=40), 0, 1)  # a policy that loses some samples
    idx = bootstrap.draws(40, 20000, seed=1)
    ours = bootstrap.interval(bootstrap.resample(np.stack([x]), idx)[0], 0.95)
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=20000, random_state=2)
    assert ours == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=0.02)
    means = bootstrap.resample(np.stack([x, y]), idx)
    ours = bootstrap.interval(means[0] - means[1], 0.95)
    ref = stats.bootstrap((x, y), lambda a, b: np.mean(a) - np.mean(b), paired=True,
                          method="percentile", n_resamples=20000, random_state=2)
    assert ours == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), abs=0.02)
    unpaired = stats.bootstrap((x, y), lambda a, b: np.mean(a) - np.mean(b), paired=False,
                               method="percentile", n_resamples=20000, random_state=2)
    width = ours[1] - ours[0]  # pairing removes the samples' shared difficulty from the interval
    assert width < unpaired.confidence_interval.high - unpaired.confidence_interval.low
