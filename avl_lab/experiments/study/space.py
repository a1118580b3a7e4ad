"""The search space: ``suggest_*`` calls only, the clipping that keeps C ≤ S ≤ P, and the
first tiered layer ``L`` as the policy's layer scope ``"L-"``."""

from __future__ import annotations

from typing import Any

import optuna

from avl_lab.experiments.study.config import PARAMS, StudyConfig


def suggest(trial: optuna.Trial, cfg: StudyConfig) -> dict[str, int]:
    """Raw parameter values of a trial (static ranges, so every sampler sees one space)."""
    return {
        key: trial.suggest_int(key, r.low, r.high, step=r.step)
        for key in PARAMS
        if (r := cfg.space.get(key)) is not None
    }


def to_policy(raw: dict[str, int], fixed: dict[str, Any]) -> dict[str, Any]:
    """The ``avl`` policy of a trial: ``S`` clipped to ``P`` and ``C`` to ``S``; ``L`` becomes
    the scope ``layers: "L-"`` (layers before L keep and use every row; prefill pruning then
    runs only if its ``layer`` is ≥ L)."""
    params = {**fixed, **raw}
    if "S" in params and "P" in params:
        params["S"] = min(params["S"], params["P"])
    if "C" in params and "S" in params:
        params["C"] = min(params["C"], params["S"])
    first = params.pop("L", None)
    policy = {"name": "avl", **params}
    if first is not None:
        policy["layers"] = f"{int(first)}-"
    return policy


def first_layer(policy: dict[str, Any]) -> int | None:
    """``L`` of a trial's policy (its scope ``"L-"``); None when the policy has no scope."""
    layers = policy.get("layers")
    if isinstance(layers, str) and layers.endswith("-") and layers[:-1].isdigit():
        return int(layers[:-1])
    return None
