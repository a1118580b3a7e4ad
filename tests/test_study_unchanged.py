"""``docvqa_pareto`` keeps its meaning: with the same seed the study proposes the same trials and
finds the same front as before studies could search any policy (recorded from main at 74bd236,
``tests/data/docvqa_pareto_before.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from avl_lab.experiments.study import driver
from avl_lab.experiments.study.config import load_study
from avl_lab.experiments.study.methods import resolve

ROOT = Path(__file__).resolve().parent.parent
BEFORE = json.loads((ROOT / "tests" / "data" / "docvqa_pareto_before.json").read_text())


def _key(policy: dict) -> str:
    return json.dumps(policy, sort_keys=True)


def test_same_trials_and_front_with_the_recorded_evaluations(tmp_path, monkeypatch):
    """The driver, space and sampler alone: each evaluation answers with the value recorded for
    that policy, so the study follows the recorded path only if it proposes the same trials."""
    recorded = {_key(t["policy"]): t["values"] for t in BEFORE["trials"]}
    points = {_key({"name": "full"}): (1.0, 0.9167),
              _key({"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50}): (0.36, 0.26)}

    def evaluate(base, policy, root):
        key = _key(policy)
        assert key in recorded or key in points, f"a trial main never proposed: {policy}"
        used, score = recorded.get(key) or points[key]
        return {"score": score, "stored": used, "used": used, "n": 16, "metric": "anls",
                "out_dir": str(tmp_path / "evals" / key)}

    monkeypatch.setattr(driver, "evaluate_policy", evaluate)
    cfg, base = load_study("docvqa_pareto")
    studies = driver.run(cfg, base, tmp_path, None, progress=False)
    (method, study), = studies
    assert method.study_name == "docvqa_pareto"
    trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
                    key=lambda t: t.number)
    assert [t.params for t in trials] == [t["params"] for t in BEFORE["trials"]]
    assert [t.user_attrs["policy"] for t in trials] == [t["policy"] for t in BEFORE["trials"]]
    assert sorted(t.number for t in study.best_trials) == BEFORE["front"]
    assert study.user_attrs["reference"]["policy"] == {"name": "avl", "S": 45, "C": 30, "K": 3,
                                                       "P": 90, "T": 50}


@pytest.mark.slow
def test_same_trials_and_front_when_run(tmp_path):
    """The whole study, evaluations included, on avl-tiny (about a minute on 2 cores)."""
    cfg, base = load_study("docvqa_pareto")
    (method, study), = driver.run(cfg, base, tmp_path, None, progress=False)
    trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
                    key=lambda t: t.number)
    assert [t.params for t in trials] == [t["params"] for t in BEFORE["trials"]]
    for got, want in zip(trials, BEFORE["trials"]):
        assert got.values == pytest.approx(want["values"], abs=1e-9)
    assert sorted(t.number for t in study.best_trials) == BEFORE["front"]
    assert resolve(cfg)[0].space[0].name == "S"
