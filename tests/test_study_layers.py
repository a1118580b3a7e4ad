"""The first tiered layer ``L`` as a study dimension: suggested, turned into the policy's layer
scope, validated in study files (one ``error:`` line, exit 2), reported on the front."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from avl_lab import policies
from avl_lab.errors import ConfigError
from avl_lab.evaluation.policy_spec import check_policy
from avl_lab.experiments.study.config import StudyConfig, check_layers, load_study
from avl_lab.experiments.study.methods import resolve
from avl_lab.experiments.study.space import (
    Dim,
    Method,
    Relation,
    first_layer,
    reference_policy,
    suggest,
    to_policy,
)
from avl_lab.policies.scope import Scoped

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "sweeps" / "docvqa_layers.yaml").read_text())
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _avl(fixed: dict) -> Method:
    """A-VL as docvqa_layers searches it: C ≤ S ≤ P kept by clipping, in that order."""
    return Method("avl", "avl", (Dim("S", "int", 10, 100, 5),), fixed=fixed,
                  relations=(Relation("S", "P"), Relation("C", "S")))


def test_to_policy_turns_L_into_a_layer_scope():
    policy = to_policy({"S": 60, "C": 70, "L": 2}, _avl({"P": 50}))
    assert policy == {"name": "avl", "P": 50, "S": 50, "C": 50, "layers": "2-"}
    built = policies.build(policy)
    assert isinstance(built, Scoped)
    assert [built.covers(i) for i in range(4)] == [False, False, True, True]
    assert first_layer(policy) == 2
    none = to_policy({"S": 10}, _avl({}))
    assert "layers" not in none and first_layer(none) is None
    assert to_policy({"S": 10}, _avl({"L": 0}))["layers"] == "0-"
    check_policy(policy)  # an evaluation takes the scope (it is no field of the avl dataclass)
    with pytest.raises(ConfigError, match="`layers`"):
        check_policy({**policy, "layers": "3-1"})


def test_suggest_draws_L_from_its_range(tmp_path):
    cfg, _ = load_study(str(_write(tmp_path)))
    (method,) = resolve(cfg)
    study = optuna.create_study(directions=["minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        raw = suggest(study.ask(), method)
        assert set(raw) == {"S", "C", "K", "P", "T", "L"}
        seen.add(raw["L"])
    assert seen == {0, 1, 2, 3}
    assert reference_policy(method)["layers"] == "0-"  # the paper tiers every layer


@pytest.mark.parametrize(("changes", "key"), [
    ({"space__L": {"low": 3, "high": 1}}, "space.L"),
    ({"space__L": {"low": -1, "high": 2}}, "space.L"),
    ({"space__L": {"low": 0, "high": 2, "step": 0}}, "space.L.step"),
    ({"space__L": None, "fixed": {"L": -1}}, "fixed.L"),
    ({"space__L": None, "fixed": {"L": 1.5}}, "fixed.L"),
    ({"space": {"L": {"low": 0, "high": 3}}}, "space.L"),  # a scope of nothing
])
def test_bad_L_is_one_config_error_naming_the_key(tmp_path, changes, key):
    with pytest.raises(ConfigError, match=f"`{key}`"):
        load_study(str(_write(tmp_path, **changes)))


def test_L_must_be_a_layer_of_the_model(tmp_path):
    path = _write(tmp_path, space__L={"low": 0, "high": 4})
    cfg, _ = load_study(str(path))
    check_layers(cfg, None, "tiny-random-llava")  # unknown before the model is built
    check_layers(cfg, 5, "m")
    with pytest.raises(ConfigError, match="`space.L` reaches layer 4, but avl-tiny has 4"):
        check_layers(cfg, 4, "avl-tiny")
    fixed = StudyConfig(name="x", space=cfg.space, fixed={"L": 4}, relations=cfg.relations)
    fixed.space = {k: v for k, v in cfg.space.items() if k != "L"}
    with pytest.raises(ConfigError, match="`fixed.L`"):
        check_layers(fixed, 4, "avl-tiny")


@pytest.mark.parametrize(("changes", "text"), [
    ({"space__L": {"low": 2, "high": 0}}, "space.L"),
    ({"space__L": {"low": 0, "high": 4}}, "`space.L` reaches layer 4"),  # avl-tiny: layers 0..3
])
def test_sweep_cli_refuses_bad_L_with_exit_2(tmp_path, changes, text):
    path = _write(tmp_path, **changes)
    res = subprocess.run([sys.executable, "-m", "avl_lab.sweep", "--study", str(path),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_front_table_shows_L_only_where_the_study_set_it():
    import pandas as pd

    from avl_lab.experiments.study.report import front_table

    row = {"trial": 0, "S": 10, "C": None, "K": None, "P": None, "T": None, "stored": 0.5,
           "used": 0.5, "score": 1.0, "n": 4, "front": True, "seconds": 1.0}
    def header(df):
        return front_table(df).splitlines()[0].split()

    assert header(pd.DataFrame([{**row, "L": None}])) == ["trial", "S", "stored", "used", "score", "n",
                                                         "seconds"]
    assert "L" in header(pd.DataFrame([{**row, "L": 2}]))
