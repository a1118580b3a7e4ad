"""``--check``: every verb validates its command as a real run would and stops before it runs
or writes anything; the reference is the run itself (same error, same exit code)."""

from __future__ import annotations

import pytest

from avl_lab.cli import VERBS

VALID = {
    "evaluate": ["model=tiny-random-llava", "data=synth-docvqa", "data.limit=2"],
    "sweep": ["--study", "docvqa_pareto", "data.limit=2"],
    "figures": ["fig9", "data.limit=2"],
    "analyze": ["coverage", "data.limit=2"],
    "train": ["max_steps=3"],
}


def _main(verb: str):
    import importlib

    return importlib.import_module(VERBS[verb]).main


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_check_validates_and_writes_nothing(verb, tmp_path, capsys):
    out = tmp_path / "out"
    assert _main(verb)([*VALID[verb], f"out_dir={out}", "--check"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: the {verb} command is valid")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_check_fails_as_the_run_would(verb, tmp_path, capsys):
    argv = [*VALID[verb], "bogus_key=1", f"out_dir={tmp_path / 'out'}"]
    assert _main(verb)([*argv, "--check"]) == 2
    checked = capsys.readouterr().err
    assert _main(verb)(argv) == 2
    assert capsys.readouterr().err == checked and checked.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_check_reads_the_checkpoint(tmp_path, capsys):
    argv = ["model=" + str(tmp_path / "no-such-model"), "data=synth-docvqa", "--check"]
    assert _main("evaluate")(argv) == 2
    assert "no-such-model" in capsys.readouterr().err
