"""Paired bootstrap intervals for a study's trials and fronts.

Every trial of a study is evaluated on the same samples, so one resample (a draw of ``n``
sample indices with replacement) applies to all trials at once: each trial's score and cache
used on the draw are means over the drawn samples, each method's front and hypervolume are
recomputed from them, and a difference between two methods is taken within the draw. The
intervals are percentile intervals over the draws (NumPy's default, linearly interpolated,
quantiles), so paired differences come from the same draws as the intervals they compare.

Notation: ``T`` trials, ``n`` samples, ``B`` draws.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["best_within", "draws", "hypervolume", "interval", "resample"]


def draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[B, n]`` sample indices, each row a draw of ``n`` with replacement (seeded)."""
    if n < 1:
        raise ValueError(f"need at least one sample to resample, got n={n}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resample(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``[T, B]`` per-trial means on each draw, from ``values`` ``[T, n]`` and ``idx`` ``[B, n]``."""
    return values[:, idx].mean(-1)  # [T, B, n] -> [T, B]


def interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of ``values`` along the last axis (the draws); NaN draws (a
    method without a trial under some budget) are ignored."""
    tail = (1.0 - level) / 2.0
    with warnings.catch_warnings():  # all-NaN draws: the interval is NaN, said by the table
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(values, [tail, 1.0 - tail], axis=-1)
    return lo, hi


def hypervolume(used: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The area dominated by trials in (cache used ∈ [0, 1], score ≥ 0): the integral over
    x ∈ [0, 1] of the best score among trials with used ≤ x.

    Parameters
    ----------
    used, score : ``[..., T]`` (NaN marks a missing trial: it dominates nothing).

    Returns
    -------
    ``[...]`` the hypervolume of each row (reference point used = 1, score = 0).
    """
    u = np.clip(np.nan_to_num(used, nan=1.0), 0.0, 1.0)
    s = np.clip(np.nan_to_num(score, nan=0.0), 0.0, None)
    order = np.argsort(u, axis=-1, kind="stable")
    u = np.take_along_axis(u, order, -1)
    best = np.maximum.accumulate(np.take_along_axis(s, order, -1), axis=-1)
    width = np.diff(np.concatenate([u, np.ones_like(u[..., :1])], -1), axis=-1)  # [..., T]
    return (width * best).sum(-1)


def best_within(used: np.ndarray, score: np.ndarray, budget: float) -> np.ndarray:
    """``[...]`` the best score among trials with ``used ≤ budget`` (NaN where none is)."""
    ok = used <= budget + 1e-12
    masked = np.where(ok, score, -np.inf)
    best = masked.max(-1)
    return np.where(np.isfinite(best), best, np.nan)
