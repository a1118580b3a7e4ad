"""Figure 9/10 and attention-analysis commands, and the notebooks that call them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from avl_lab.experiments.analysis.measures import mass_fraction
from avl_lab.experiments.figures import Grids, fig9, fig10
from avl_lab.policies.vision_tiering import SIGNALS

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model=tiny-random-llava", "data.limit=2", "generation.max_new_tokens=3", "batch_size=2"]


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_fig9_cli_writes_tidy_csv_and_png(tmp_path):
    _run("avl_lab.figures", ["fig9", *FAST, "grid.S=[20,60]", "grid.C=[10,30]", "grid.K=[1,3]",
                             f"out_dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "fig9.csv")
    assert set(df["panel"]) == {"reference", "a: secondary only", "b: core vs evict", "c: update period"}
    full = df[df["method"] == "full"].iloc[0]
    assert full["stored"] == pytest.approx(1.0) and full["used"] == pytest.approx(1.0)
    a = df[df["panel"] == "a: secondary only"].sort_values("value")
    assert list(a["value"]) == [20, 60] and a["stored"].is_monotonic_increasing
    b = df[df["panel"] == "b: core vs evict"]
    core, evict = b[b["method"].str.startswith("core")], b[b["method"] == "evict to C"]
    assert (core["stored"].to_numpy() > evict["stored"].to_numpy()).all()  # same C, more stored
    _png(tmp_path / "fig9.png")
    # A second run reads the cached points instead of recomputing them.
    mtimes = {p: p.stat().st_mtime for p in tmp_path.glob("evals/*/samples.jsonl")}
    _run("avl_lab.figures", ["fig9", *FAST, "grid.S=[20,60]", "grid.C=[10,30]", "grid.K=[1,3]",
                             f"out_dir={tmp_path}"])
    assert mtimes and all(p.stat().st_mtime == t for p, t in mtimes.items())


def test_fig10_cli(tmp_path):
    _run("avl_lab.figures", ["fig10", *FAST, "grid.P=[50,100]", "grid.T=[20,100]", f"out_dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "fig10.csv")
    t = df[df["panel"] == "b: text window"].set_index("value")
    full = df[df["method"] == "full"].iloc[0]
    assert t.loc[100, "score"] == pytest.approx(full["score"])  # T=100 keeps every text row
    _png(tmp_path / "fig10.png")


def test_figure_specs_follow_the_paper():
    g = Grids()
    pts = fig9(g)
    assert {p.policy.get("C") for p in pts if p.panel.startswith("a")} == {None}
    for p in pts:
        if "C" in p.policy:
            assert p.policy["C"] <= p.policy["S"]
    assert {p.param for p in fig10(g)} == {"P", "T"}


def test_mass_fraction_by_hand():
    assert mass_fraction(torch.tensor([0.7, 0.1, 0.1, 0.1])) == pytest.approx(0.5)  # 0.7+0.1 ≥ 0.8
    assert mass_fraction(torch.tensor([0.25, 0.25, 0.25, 0.25])) == pytest.approx(1.0)
    assert mass_fraction(torch.tensor([0.9, 0.05, 0.05])) == pytest.approx(1 / 3)


def test_analyze_cli_all(tmp_path):
    res = _run("avl_lab.analyze", ["all", *FAST, "data.limit=3", "generation.max_new_tokens=4",
                                   f"out_dir={tmp_path}"])
    for name in ("modality-attention", "sparsity", "layer-ppci", "step-ppci", "coverage", "drift"):
        assert (tmp_path / f"{name}.csv").exists(), res.stdout
        _png(tmp_path / f"{name}.png")
    shares = pd.read_csv(tmp_path / "modality-attention.csv")
    per_step = shares.groupby(["sample", "step"])["share"].sum()
    assert per_step.to_numpy() == pytest.approx(1.0, abs=1e-4)  # shares of one step sum to 1
    assert set(shares["step"]) == {1, 2, 3}
    layer = pd.read_csv(tmp_path / "layer-ppci.csv")
    assert layer[layer["layer"] == 0]["ppci"].to_numpy() == pytest.approx(1.0)
    frac = pd.read_csv(tmp_path / "sparsity.csv")["fraction"]
    assert ((frac > 0) & (frac <= 1)).all()
    cov = pd.read_csv(tmp_path / "coverage.csv")  # tiny-random-llava: 4 layers x 2 KV heads
    assert set(cov["head"].astype(str)) == {"0", "1", "mean"} and set(cov["signal"]) == set(SIGNALS)
    assert set(cov["layer"]) == {0, 1, 2, 3} and set(cov["S"]) == {30, 45}
    assert cov["coverage"].between(0, 1).all()
    assert cov[cov["S"] == 45]["random"].iloc[0] == pytest.approx(28 / 64)  # floor(0.45 * 64)
    means = pd.read_csv(tmp_path / "coverage_intervals.csv")  # means over the 2 samples
    want = cov.groupby(["signal", "layer", "head", "S"])["coverage"].mean()
    got = means.assign(head=means["head"].astype(str)).set_index(["signal", "layer", "head", "S"])
    assert len(got) == len(want) == 5 * 4 * 3 * 2
    assert got["coverage"].to_numpy() == pytest.approx(want.reindex(got.index).to_numpy())
    assert ((got["lo"] <= got["coverage"] + 1e-12) & (got["coverage"] <= got["hi"] + 1e-12)).all()
    drift = pd.read_csv(tmp_path / "drift.csv")
    assert set(drift["step"]) <= {1, 2, 3} and drift["ppci"].between(0, 1).all()


def test_table_cli_reports_every_method_and_task_and_matches_direct_evaluation(tmp_path):
    _run("avl_lab.figures", ["table", *FAST, "tasks=[synth-ocr,easy-vqa]", f"out_dir={tmp_path}"])
    df = pd.read_csv(tmp_path / "table.csv")
    from avl_lab.experiments.figures.table import METHODS

    assert sorted(df["task"].unique()) == ["easy-vqa", "synth-ocr"]
    assert set(df["method"]) == set(METHODS) and len(df) == 2 * len(METHODS)
    full = df[df["method"] == "Full"]
    assert (full["stored"] == 1.0).all() and (full["used"] == 1.0).all()
    avl = df[df["method"] == "A-VL"]
    assert (avl["used"] < avl["stored"]).all() and (avl["stored"] < 0.7).all()
    assert ((df["score_lo"] <= df["score"] + 1e-12) & (df["score"] <= df["score_hi"] + 1e-12)).all()
    md = (tmp_path / "table.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == len(METHODS) + 1
    assert "synth-ocr (ocrbench)" in md
    # a cell equals a direct run of the evaluation runner with the same settings
    import avl_lab

    direct = avl_lab.evaluation.evaluate([*FAST, "data=easy-vqa", "policy=h2o", "policy.ratio=0.5",
                               "progress=false", f"out_dir={tmp_path / 'direct'}"])
    cell = df[(df["task"] == "easy-vqa") & (df["method"] == "H2O ratio=0.5 (per head)")].iloc[0]
    assert cell["score"] == pytest.approx(direct.score)
    assert cell["stored"] == pytest.approx(direct.stored)
