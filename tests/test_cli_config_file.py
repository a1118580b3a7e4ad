"""``config=FILE``: every verb reads a YAML file of its keys, and ``key=value`` overrides it.

The reference is the same keys given on the command line alone: a file plus overrides must
give the config that the merged dotlist gives.
"""

from __future__ import annotations

import json

import pytest

from avl_lab.cli.config_file import file_items, with_config_file
from avl_lab.evaluation.config import load_config

FILE = """\
model: tiny-random-llava
data: {name: synth-ocr, limit: 4}
generation.max_new_tokens: 3
policy: {name: avl, S: 45, C: 30}
progress: false
"""


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(FILE)
    return path


def test_file_items_keep_the_values(cfg_file):
    assert file_items(cfg_file) == [
        "model=tiny-random-llava", "data.name=synth-ocr", "data.limit=4",
        "generation.max_new_tokens=3", "policy.name=avl", "policy.S=45", "policy.C=30",
        "progress=false",
    ]  # fmt: skip


def test_file_values_are_used_and_the_command_line_overrides_them(cfg_file, tmp_path):
    cfg = with_config_file(load_config, [f"config={cfg_file}", "data.limit=2", "policy.S=50"])
    reference = load_config([
        "model=tiny-random-llava", "data=synth-ocr", "data.limit=2", "generation.max_new_tokens=3",
        "policy=avl", "policy.S=50", "policy.C=30", "progress=false",
    ])  # fmt: skip
    assert cfg == reference
    assert (cfg.data.name, cfg.data.limit, cfg.policy["S"], cfg.policy["C"]) == ("synth-ocr", 2, 50, 30)
    assert with_config_file(load_config, [f"config={cfg_file}"]).data.limit == 4


def test_every_verb_takes_a_config_file(tmp_path):
    from avl_lab import analyze, figures, sweep
    from avl_lab.train import cli as train

    path = tmp_path / "c.yaml"
    path.write_text("study: docvqa_pareto\nn_trials: 5\ndata: {limit: 3}\nbatch_size: 2\n")
    args, study, base = with_config_file(sweep.configure, [f"config={path}", "n_trials=7"])
    assert (args.study, args.n_trials, base.data.limit, base.batch_size) == (
        "docvqa_pareto", 7, 3, 2)
    assert study.name == "docvqa_pareto"
    path.write_text("analysis: sparsity\ndata.limit: 3\n")
    opts, names, cfg = with_config_file(analyze.configure, [f"config={path}", "data.limit=5"])
    assert (names, cfg.data.limit) == (["sparsity"], 5)
    path.write_text("figure: fig9\ngrid: {S: [10, 50]}\ndata: {limit: 3}\n")
    fig, base = with_config_file(figures.configure, [f"config={path}", "grid.K=[1]"])
    assert (fig.figure, fig.grid.S, fig.grid.K, base.data.limit) == ("fig9", [10, 50], [1], 3)
    path.write_text(f"max_steps: 5\nlr: 0.001\nout_dir: {tmp_path / 'train'}\n")
    tcfg = with_config_file(train.configure, [f"config={path}", "max_steps=9"])
    assert (tcfg.max_steps, tcfg.lr) == (9, 0.001)
    assert not (tmp_path / "train").exists()  # configuring writes nothing


def test_evaluate_runs_from_a_config_file(cfg_file, tmp_path, monkeypatch, capsys):
    from avl_lab.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc = main(["evaluate", f"config={cfg_file}", "data.limit=1", "generation.max_new_tokens=2",
               f"out_dir={out}"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 1 and summary["metric"] == "ocrbench"  # data.name from the file
    assert summary["config"]["policy"] == {"name": "avl", "S": 45, "C": 30}
    assert summary["config"]["generation"]["max_new_tokens"] == 2  # the command line's


@pytest.mark.parametrize("text", [
    "data:\n  limit: 2\n  limit: 3\n",
    "limit: 2\nprogress: false\nlimit: 3\n",
])
def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path, capsys, text):
    from avl_lab.__main__ import main

    path = tmp_path / "dup.yaml"
    path.write_text(text)
    first, second = (i + 1 for i, line in enumerate(text.splitlines()) if "limit" in line)
    rc = main(["evaluate", f"config={path}", "--check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error:") and "`limit` appears twice" in err[0]
    assert f"lines {first} and {second}" in err[0] and str(path) in err[0]
