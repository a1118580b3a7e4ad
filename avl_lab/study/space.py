"""The search space: ``suggest_*`` calls only, and the clipping that keeps C ≤ S ≤ P."""

from __future__ import annotations

from typing import Any

import optuna

from avl_lab.study.config import PARAMS, StudyConfig


def suggest(trial: optuna.Trial, cfg: StudyConfig) -> dict[str, int]:
    """Raw parameter values of a trial (static ranges, so every sampler sees one space)."""
    return {
        key: trial.suggest_int(key, r.low, r.high, step=r.step)
        for key in PARAMS
        if (r := cfg.space.get(key)) is not None
    }


def to_policy(raw: dict[str, int], fixed: dict[str, Any]) -> dict[str, Any]:
    """The ``avl`` policy of a trial: ``S`` clipped to ``P`` and ``C`` to ``S``."""
    params = {**fixed, **raw}
    if "S" in params and "P" in params:
        params["S"] = min(params["S"], params["P"])
    if "C" in params and "S" in params:
        params["C"] = min(params["C"], params["S"])
    return {"name": "avl", **params}
