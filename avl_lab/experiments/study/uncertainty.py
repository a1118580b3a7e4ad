"""A study's intervals: every trial's per-sample scores, resampled jointly (paired) across
trials and methods (:mod:`avl_lab.experiments.study.bootstrap`).

The per-sample values come from each trial's cached evaluation (``samples.jsonl`` in its
``out_dir``): the score of each sample (CIDEr-D per image, with the idf of the whole sample
set, so that their mean is the corpus score) and its cache used. Trials are aligned on the
sample ids they share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from avl_lab.experiments.study import bootstrap
from avl_lab.experiments.study.config import BootstrapConfig

log = logging.getLogger(__name__)

__all__ = ["Resampled", "method_table", "paired_table", "per_sample", "resampled", "score_interval"]


@dataclass
class Resampled:
    """Each trial's score and used on every draw.

    Attributes
    ----------
    score, used : ``[T, B]`` means over each draw's samples, rows in the trials frame's order.
    n : samples resampled (shared by every trial).
    cfg : the bootstrap settings (resamples, seed, level).
    """

    score: np.ndarray
    used: np.ndarray
    n: int
    cfg: BootstrapConfig


def per_sample(out_dir: str, metric: str, root: Path | None = None) -> dict[str, tuple[float, float]] | None:
    """``id -> (score, used)`` of one trial's evaluation; the evaluation is looked for where the
    trial recorded it, then under ``root/evals/`` (a study folder moved, or reported from
    another working directory)."""
    from avl_lab.evaluation.records import RecordLog
    from avl_lab.evaluation.summary import sample_scores

    places = [Path(out_dir)] + ([root / "evals" / Path(out_dir).name] if root is not None else [])
    path = next((p / "samples.jsonl" for p in places if (p / "samples.jsonl").is_file()), None)
    if path is None:
        return None
    records = sorted(RecordLog(path).read(), key=lambda r: r["id"])
    scores, _ = sample_scores(metric, records)
    return {r["id"]: (s, r["used"]) for r, s in zip(records, scores)}


def resampled(df: pd.DataFrame, metric: str, cfg: BootstrapConfig,
              root: Path | None = None) -> Resampled | None:
    """Resample the trials of ``df`` (a trials frame with ``out_dir``; ``root`` the study's
    folder); None (with a warning) when intervals are off or a trial's samples are not on this
    machine."""
    if cfg.resamples == 0 or df.empty:
        return None
    tables = []
    for out_dir in df["out_dir"]:
        table = per_sample(out_dir, metric, root) if isinstance(out_dir, str) else None
        if table is None:
            log.warning("no samples.jsonl in %s (trial run on another machine?): the report has "
                        "no intervals", out_dir)
            return None
        tables.append(table)
    ids = sorted(set.intersection(*(set(t) for t in tables)))
    dropped = max(len(t) for t in tables) - len(ids)
    if dropped:
        log.warning("intervals over the %d samples every trial scored (%d not scored by all)",
                    len(ids), dropped)
    if not ids:
        return None
    score = np.array([[t[i][0] for i in ids] for t in tables], dtype=np.float64)  # [T, n]
    used = np.array([[t[i][1] for i in ids] for t in tables], dtype=np.float64)  # [T, n]
    idx = bootstrap.draws(len(ids), cfg.resamples, cfg.seed)  # [B, n]
    return Resampled(bootstrap.resample(score, idx), bootstrap.resample(used, idx), len(ids), cfg)


def score_interval(out_dir: str, metric: str, cfg: BootstrapConfig) -> tuple[float, float]:
    """The bootstrap interval of one evaluation's score (the mean over its samples; CIDEr-D's
    per-image scores average to the corpus score); NaN when its samples are not on disk."""
    table = per_sample(out_dir, metric)
    if not table or cfg.resamples == 0:
        return float("nan"), float("nan")
    scores = np.array([[v[0] for v in table.values()]], dtype=np.float64)  # [1, n]
    draws = bootstrap.resample(scores, bootstrap.draws(scores.shape[1], cfg.resamples, cfg.seed))
    lo, hi = bootstrap.interval(draws[0], cfg.level)
    return float(lo), float(hi)


def trial_intervals(df: pd.DataFrame, res: Resampled | None) -> pd.DataFrame:
    """``df`` with ``score_lo`` and ``score_hi`` (NaN without intervals)."""
    lo, hi = (bootstrap.interval(res.score, res.cfg.level) if res is not None
              else (np.full(len(df), np.nan), np.full(len(df), np.nan)))
    return df.assign(score_lo=lo, score_hi=hi)


def _rows(df: pd.DataFrame, method: str) -> np.ndarray:
    return np.flatnonzero((df["method"] == method).to_numpy())


def method_table(df: pd.DataFrame, res: Resampled | None) -> pd.DataFrame:
    """Per method: trials, front size, hypervolume over (used ∈ [0, 1], score) and its interval."""
    rows = []
    for method in dict.fromkeys(df["method"]):
        sel = _rows(df, method)
        hv = float(bootstrap.hypervolume(df["used"].to_numpy()[sel], df["score"].to_numpy()[sel]))
        lo = hi = float("nan")
        if res is not None:
            draws_hv = bootstrap.hypervolume(res.used[sel].T, res.score[sel].T)  # [B]
            lo, hi = (float(x) for x in bootstrap.interval(draws_hv, res.cfg.level))
        rows.append({"method": method, "trials": len(sel), "front": int(df["front"].to_numpy()[sel].sum()),
                     "hypervolume": hv, "hv_lo": lo, "hv_hi": hi})
    return pd.DataFrame(rows, columns=["method", "trials", "front", "hypervolume", "hv_lo", "hv_hi"])


def paired_table(df: pd.DataFrame, res: Resampled | None, cfg: BootstrapConfig) -> pd.DataFrame:
    """Each method against the baseline, from the same draws: the difference of the best score
    with used ≤ each budget, and of the hypervolume (``budget`` = ``hypervolume``)."""
    methods = list(dict.fromkeys(df["method"]))
    base = cfg.baseline or methods[0]
    cols = ["method", "baseline", "budget", "difference", "lo", "hi"]
    if len(methods) < 2:
        return pd.DataFrame(columns=cols)
    used, score = df["used"].to_numpy(), df["score"].to_numpy()

    def point(method: str, budget: float | None) -> float:
        sel = _rows(df, method)
        if budget is None:
            return float(bootstrap.hypervolume(used[sel], score[sel]))
        return float(bootstrap.best_within(used[sel], score[sel], budget))

    def drawn(method: str, budget: float | None) -> np.ndarray:
        sel = _rows(df, method)
        u, s = res.used[sel].T, res.score[sel].T  # [B, T_m]
        return bootstrap.hypervolume(u, s) if budget is None else bootstrap.best_within(u, s, budget)

    rows = []
    for method in (m for m in methods if m != base):
        for budget in [*cfg.budgets, None]:
            diff = point(method, budget) - point(base, budget)
            lo = hi = float("nan")
            if res is not None:
                lo, hi = (float(x) for x in bootstrap.interval(drawn(method, budget) - drawn(base, budget),
                                                               cfg.level))
            rows.append({"method": method, "baseline": base,
                         "budget": "hypervolume" if budget is None else budget,
                         "difference": diff, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=cols)
