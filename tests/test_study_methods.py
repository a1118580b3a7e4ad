"""Studies over any registered policy, several methods in one study, their report (fronts,
hypervolumes, paired bootstrap intervals) and the storage read back by optuna-dashboard."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from avl_lab.__main__ import main
from avl_lab.experiments.study import bootstrap
from avl_lab.experiments.study.config import load_study
from avl_lab.experiments.study.methods import resolve
from avl_lab.experiments.study.space import suggest, to_policy

FAST = ["model=tiny-random-llava", "data.limit=4", "generation.max_new_tokens=3", "batch_size=4"]

STUDY = {
    "name": "two_methods",
    "eval": {"model": {"name": "avl-tiny"}, "data": {"name": "synth-docvqa", "limit": 4}},
    "methods": {
        "avl": {"policy": "avl", "space": {"S": {"low": 10, "high": 90, "step": 10},
                                           "C": {"low": 5, "high": 90, "step": 5}},
                "relations": ["C <= S"], "reference": {"S": 45, "C": 30}, "n_trials": 3},
        "pdrop": {"policy": "pyramiddrop", "fixed": {"stages": [1, 2, 3]}, "n_trials": 2,
                  "space": {"positions": {"choices": ["renumber", "keep"]}}},
        "snapkv": {"policy": "snapkv", "space": {"ratio": {"low": 0.1, "high": 0.9},
                                                 "window": {"low": 2, "high": 16, "log": True},
                                                 "kernel": {"choices": [3, 5]}},
                   "n_trials": 3},
    },
    "sampler": {"name": "random", "seed": 0},
    "bootstrap": {"resamples": 500, "seed": 3, "budgets": [0.5, 0.9]},
}


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The two-method study run once from the command line (in-process)."""
    root = tmp_path_factory.mktemp("methods")
    path = _write(root / "two_methods.yaml", STUDY)
    out = root / "out"
    rc = main(["sweep", "--study", str(path), "--out", str(out), "--no-progress", *FAST])
    assert rc == 0
    return path, out


def test_each_method_is_its_own_optuna_study(finished):
    path, out = finished
    storage = f"sqlite:///{out / 'study.db'}"
    assert sorted(optuna.get_all_study_names(storage)) == ["two_methods/avl", "two_methods/pdrop",
                                                           "two_methods/snapkv"]
    snap = optuna.load_study(study_name="two_methods/snapkv", storage=storage)
    assert snap.metric_names == ["used", "score"]
    dists = snap.trials[0].distributions
    assert isinstance(dists["ratio"], optuna.distributions.FloatDistribution)
    assert dists["window"].log and isinstance(dists["window"], optuna.distributions.IntDistribution)
    assert dists["kernel"].choices == (3, 5)
    for t in snap.trials:
        assert t.user_attrs["policy"] == {"name": "snapkv", **t.params}
    avl = optuna.load_study(study_name="two_methods/avl", storage=storage)
    assert all(t.user_attrs["policy"]["C"] <= t.user_attrs["policy"]["S"] for t in avl.trials)
    assert avl.user_attrs["reference"]["policy"] == {"name": "avl", "S": 45, "C": 30}
    assert avl.user_attrs["full"]["policy"] == {"name": "full"}


def _hv_by_grid(used: np.ndarray, score: np.ndarray) -> float:
    """The hypervolume as the mean over a fine grid of x of the best score with used ≤ x."""
    xs = np.linspace(0, 1, 200_001)
    best = np.array([max([s for u, s in zip(used, score) if u <= x] or [0.0]) for x in xs[::100]])
    return float(best.mean())


def test_report_tables_against_an_independent_computation(finished):
    path, out = finished
    df = pd.read_csv(out / "pareto.csv")
    assert df.groupby("method").size().to_dict() == {"avl": 3, "pdrop": 2, "snapkv": 3}
    assert set(df.loc[df["method"] == "pdrop", "stages"]) == {"[1, 2, 3]"}  # a list, as text
    assert (df["score_lo"] <= df["score"] + 1e-12).all() and (df["score"] <= df["score_hi"] + 1e-12).all()
    methods = pd.read_csv(out / "methods.csv").set_index("method")
    for name, part in df.groupby("method"):
        assert methods.loc[name, "hypervolume"] == pytest.approx(
            _hv_by_grid(part["used"].to_numpy(), part["score"].to_numpy()), abs=2e-3)
        assert methods.loc[name, "hv_lo"] <= methods.loc[name, "hypervolume"] + 1e-9
    assert methods["resamples"].eq(500).all() and methods["seed"].eq(3).all()
    # each trial's interval, recomputed from its samples.jsonl with the same draws
    samples = {}
    for _, row in df.iterrows():
        recs = sorted((json.loads(x) for x in (Path(row["out_dir"]) / "samples.jsonl").read_text()
                       .splitlines()), key=lambda r: r["id"])
        samples[row["out_dir"]] = np.array([r["score"] for r in recs])
    idx = bootstrap.draws(4, 500, seed=3)
    for _, row in df.iterrows():
        means = samples[row["out_dir"]][idx].mean(1)
        assert [row["score_lo"], row["score_hi"]] == pytest.approx(np.percentile(means, [2.5, 97.5]))
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["budget"]) == {"0.5", "0.9", "hypervolume"}
    for _, row in paired[paired["budget"] != "hypervolume"].iterrows():
        u = float(row["budget"])
        best = {m: part.loc[part["used"] <= u, "score"].max() for m, part in df.groupby("method")}
        want = best[row["method"]] - best["avl"]
        assert (np.isnan(row["difference"]) and np.isnan(want)) or row["difference"] == pytest.approx(want)
    assert (out / "pareto.png").stat().st_size > 10_000


def test_report_rerun_prints_every_front(finished, capsys):
    path, out = finished
    assert main(["sweep", "--study", str(path), "--out", str(out), "--report", *FAST]) == 0
    text = capsys.readouterr().out
    assert "[avl]" in text and "[snapkv]" in text and "[pdrop]" in text
    assert "500 resamples of the 4 samples (seed 3)" in text
    assert "paired differences" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_optuna_dashboard_reads_the_study(finished):
    """optuna-dashboard (optional extra ``dashboard``) on 127.0.0.1 against the finished study:
    the studies, their trials and objective names come back over HTTP."""
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed "
                        "(pip install 'avl_lab[dashboard]')")
    _, out = finished
    exe = Path(sys.executable).parent / "optuna-dashboard"  # its console script, as users run it
    if not exe.exists():
        pytest.skip(f"optuna-dashboard's command is not at {exe}")
    port = _free_port()
    proc = subprocess.Popen([str(exe), f"sqlite:///{out / 'study.db'}",
                             "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, summaries = time.time() + 60, None
        while summaries is None:
            try:
                summaries = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
                time.sleep(0.3)
        names = {s["study_name"]: s["study_id"] for s in summaries}
        assert set(names) == {"two_methods/avl", "two_methods/pdrop", "two_methods/snapkv"}
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{names['two_methods/snapkv']}")
        assert len(detail["trials"]) == 3 and detail["objective_names"] == ["used", "score"]
        assert {p["name"] for p in detail["trials"][0]["params"]} == {"ratio", "window", "kernel"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _bad(tmp_path: Path, method: str, **changes) -> list[str]:
    spec = json.loads(json.dumps(STUDY))
    for key, value in changes.items():
        node = spec["methods"][method] if method else spec
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return ["sweep", "--study", str(_write(tmp_path / "bad.yaml", spec)), "--out", str(tmp_path / "o")]


@pytest.mark.parametrize(("method", "changes", "needle"), [
    ("snapkv", {"space__foo": {"low": 1, "high": 2}},
     "`methods.snapkv.space.foo` is not a field of policy 'snapkv'"),
    ("snapkv", {"space__window": {"low": 2.5, "high": 8}},
     "`methods.snapkv.space.window` `window` is an integer field"),
    ("snapkv", {"space__kernel": {"choices": ["a", 5]}},
     "`methods.snapkv.space.kernel.choices` 'a': must be an integer"),
    ("snapkv", {"space__pooling": {"low": 1, "high": 2}}, "not a number field; give `choices`"),
    ("snapkv", {"space__ratio": {"low": 0.9, "high": 0.1}},
     "`methods.snapkv.space.ratio` needs low ≤ high, got low=0.9 high=0.1"),
    ("snapkv", {"space__kernel": {"choices": []}}, "`methods.snapkv.space.kernel.choices` is empty"),
    ("snapkv", {"space__ratio": {"low": 0.0, "high": 0.5}},
     "`methods.snapkv.space.ratio` gives an invalid 'snapkv' policy"),
    ("snapkv", {"space__window": {"low": 0, "high": 8, "log": True}}, "space.window.log` needs low > 0"),
    ("snapkv", {"policy": "snapkvv"}, "`methods.snapkv.policy` is 'snapkvv', not a registered policy"),
    ("snapkv", {"fixed": {"bogus": 1}}, "`methods.snapkv.fixed.bogus` is not a field"),
    ("snapkv", {"reference": {"S": 3}}, "`methods.snapkv.reference.S` is not a field"),
    ("avl", {"relations": ["C < S"]}, "`methods.avl.relations` 'C < S' is not a relation"),
    ("avl", {"relations": ["C <= P"]}, "`P` is not a numeric field the study searches or fixes"),
    ("avl", {"relations": []}, "`methods.avl.space.C` gives an invalid 'avl' policy"),
    ("avl", {"n_trials": 0}, "`methods.avl.n_trials` must be ≥ 1"),
    (None, {"space": {"S": {"low": 1, "high": 2}}}, "`space` is set beside `methods`"),
    (None, {"bootstrap": {"level": 2}}, "`bootstrap.level` must be in (0, 1)"),
    (None, {"bootstrap": {"baseline": "h2o"}}, "`bootstrap.baseline` is 'h2o', not a method"),
])
def test_a_bad_study_space_is_one_error_and_nothing_is_written(tmp_path, capsys, method, changes,
                                                              needle):
    rc = main(_bad(tmp_path, method, **changes))
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert needle in err[0], err[0]
    assert not (tmp_path / "o").exists()


def test_any_policy_as_a_single_study(tmp_path):
    """A single-policy study of a baseline: `policy` names it; its fields are searched."""
    spec = {"name": "h2o_alone", "policy": "h2o", "eval": STUDY["eval"],
            "space": {"ratio": {"low": 0.2, "high": 0.8, "step": 0.1},
                      "per_head": {"choices": [True, False]}}, "fixed": {"recent": 0.5}}
    cfg, _ = load_study(str(_write(tmp_path / "h2o.yaml", spec)))
    (method,) = resolve(cfg)
    assert method.study_name == "h2o_alone" and method.policy == "h2o"
    study = optuna.create_study(directions=["minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        raw = suggest(study.ask(), method)
        assert 0.2 - 1e-9 <= raw["ratio"] <= 0.8 + 1e-9
        assert round(raw["ratio"] * 10, 6) == round(raw["ratio"] * 10)  # on the 0.1 grid
        policy = to_policy(raw, method)
        assert policy == {"name": "h2o", "recent": 0.5, **raw}
        seen.add(raw["per_head"])
    assert seen == {True, False}
