"""The sweep driver: Pareto report, resume after a kill, several workers (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from PIL import Image

from avl_lab.experiments.study.driver import storage_url
from avl_lab.experiments.study.report import dominates
from tests.postgres import find_bin, postgres_server

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model=tiny-random-llava", "data.limit=2", "generation.max_new_tokens=3", "batch_size=2"]


@pytest.fixture
def study_file(tmp_path) -> Path:
    """docvqa_pareto with a short heartbeat so that a killed worker's trial is retried quickly."""
    spec = yaml.safe_load((ROOT / "sweeps" / "docvqa_pareto.yaml").read_text())
    spec.update(name="test_study", heartbeat_interval=1, grace_period=3)
    path = tmp_path / "test_study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _sweep(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "avl_lab.sweep", "--no-progress", *args, *FAST],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _url(storage: str) -> str:
    """The URL as the sweep opens it (a plain ``postgresql://`` gets the installed driver)."""
    return storage_url(storage, Path("."))


def _states(storage: str, name: str = "test_study") -> dict[TrialState, int]:
    study = optuna.load_study(study_name=name, storage=_url(storage))
    counts: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def test_four_trials_write_a_pareto_report(study_file, tmp_path):
    out = tmp_path / "out"
    stdout = _finish(_sweep(["--study", str(study_file), "--n-trials", "4", "--out", str(out)]))
    assert "Pareto front:" in stdout
    df = pd.read_csv(out / "pareto.csv")
    assert len(df) == 4 and df["front"].any()
    with Image.open(out / "pareto.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    front, rest = df[df["front"]], df
    for _, a in front.iterrows():
        assert not any(dominates(b, a, ["used", "score"]) for _, b in rest.iterrows())
    for _, b in df[~df["front"]].iterrows():
        assert any(dominates(a, b, ["used", "score"]) for _, a in front.iterrows())
    assert ((df["C"] <= df["S"]) & (df["S"] <= df["P"])).all()
    report = _finish(_sweep(["--study", str(study_file), "--out", str(out), "--report"]))
    assert "Pareto front:" in report
    # another study into the same out_dir is refused (with --check too), the report untouched
    other = tmp_path / "other_study.yaml"
    other.write_text(study_file.read_text().replace("name: test_study", "name: other_study"))
    before = (out / "pareto.csv").read_bytes()
    for extra in (["--check"], ["--n-trials", "1"]):
        proc = _sweep(["--study", str(other), "--out", str(out), *extra])
        _, err = proc.communicate(timeout=600)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1, err[-2000:]
        assert "holds the report of study 'test_study'" in lines[0]
    assert (out / "pareto.csv").read_bytes() == before
    # --check refuses what the run refuses: the stored study was run with other settings
    other_limit = [a if not a.startswith("data.limit=") else "data.limit=3" for a in FAST]
    db = (out / "study.db").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "avl_lab.sweep", "--no-progress", "--study",
                           str(study_file), "--out", str(out), *other_limit, "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "was run with other settings" in proc.stderr, proc.stderr[-2000:]
    assert (out / "study.db").read_bytes() == db


def test_killed_sweep_resumes_to_exactly_n_trials(study_file, tmp_path):
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'study.db'}"
    proc = _sweep(["--study", str(study_file), "--n-trials", "4", "--out", str(out)])
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if _states(storage).get(TrialState.COMPLETE, 0) >= 2:
                break
        except (KeyError, Exception):  # the study does not exist yet
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 2 <= _states(storage).get(TrialState.COMPLETE, 0) < 4
    _finish(_sweep(["--study", str(study_file), "--n-trials", "4", "--out", str(out)]))
    states = _states(storage)
    assert states.get(TrialState.COMPLETE) == 4
    assert states.get(TrialState.RUNNING, 0) == 0 and states.get(TrialState.WAITING, 0) == 0
    assert len(pd.read_csv(out / "pareto.csv")) == 4


def _workers(study_file: Path, tmp_path: Path, storage: str, n: int) -> None:
    """``n`` workers on one study and one out_dir, started together: every completed trial is
    a distinct configuration, and every evaluation's samples.jsonl holds each sample once."""
    out = tmp_path / "shared"
    procs = [_sweep(["--study", str(study_file), "--n-trials", "5", "--storage", storage,
                     "--out", str(out)]) for _ in range(n)]
    for p in procs:
        _finish(p)
    states = _states(storage)
    assert states.get(TrialState.COMPLETE) == 5
    assert states.get(TrialState.RUNNING, 0) == 0 and states.get(TrialState.FAIL, 0) == 0
    study = optuna.load_study(study_name="test_study", storage=_url(storage))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    configs = {json.dumps(t.user_attrs["policy"], sort_keys=True) for t in done}
    assert len(configs) == len(done) == 5
    evals = list((out / "evals").glob("*/samples.jsonl"))
    assert len(evals) >= 6  # the 5 trials and the full baseline (and the reference point)
    for path in evals:
        ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 2, path


@pytest.mark.parametrize("n", [2, 3])
def test_workers_share_a_sqlite_study(study_file, tmp_path, n):
    _workers(study_file, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", n)


@pytest.mark.parametrize("n", [2, 3])
def test_workers_share_a_postgres_study(study_file, tmp_path, n):
    if not find_bin("initdb") or not find_bin("pg_ctl"):
        pytest.skip("PostgreSQL (initdb/pg_ctl) is not installed and could not be installed here")
    with postgres_server() as url:
        _workers(study_file, tmp_path, url, n)


def test_invalid_study_file_names_the_key(tmp_path):
    spec = yaml.safe_load((ROOT / "sweeps" / "docvqa_pareto.yaml").read_text())
    spec["space"]["Z"] = {"low": 1, "high": 5}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "avl_lab.sweep", "--study", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ})
    assert res.returncode == 2 and "space.Z" in res.stderr and "Traceback" not in res.stderr
    spec = yaml.safe_load((ROOT / "sweeps" / "docvqa_pareto.yaml").read_text())
    spec["sampler"]["nam"] = "tpe"
    bad.write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "avl_lab.sweep", "--study", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ})
    assert res.returncode == 2 and "sampler.nam" in res.stderr
