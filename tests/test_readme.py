"""Every code block of the README runs as written, with the offline models standing in.

- ```python blocks run in a fresh interpreter (a subprocess each: a block may register a
  policy) and must exit 0.
- ```bash blocks: each ``python -m avl_lab...`` command runs as written with ``--check``
  added (the verb validates keys, values, files, checkpoint and data exactly as the real run
  does, then stops); ``--help`` commands run as they are. Commands that need the network or a
  package manager (``pip``, ``hf``, ``export``) and the ``make`` targets, which are what CI
  itself runs, are listed in :data:`NOT_RUN_HERE`; a command of any other kind fails the test,
  so a new kind of command cannot slip past. ``lmms-eval --model avl_lab`` commands are
  checked without lmms-eval's run: the ``avl_lab`` model is built from their ``--model_args``
  (the stand-in checkpoint loaded, the policy validated and fitted to it) and every ``--tasks``
  name must be lmms-eval's DocVQA or one of the shipped ``avl_synth*`` tasks
  (``tests/test_lmms_eval_cli.py`` runs the command line itself).

Stand-ins (the only edits made to a block): the checkpoints and datasets under ``/data`` are
tiny models and a tiny DocVQA copy built offline under a temporary directory, ``cuda`` / ``gpu``
become ``cpu``, ``receipt.png`` a generated image and ``run.yaml`` a small config file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN_HERE = ("make", "pip", "hf", "export",
                "optuna-dashboard")  # a server: tests/test_study_methods.py starts it


def blocks(lang: str) -> list[str]:
    text = README.read_text()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """The block's commands, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """``/data/...`` paths → offline stand-ins, built once."""
    from avl_lab import models
    from tests.helpers import random_image
    from tests.test_data_lmms import _docvqa

    root = tmp_path_factory.mktemp("readme")
    paths = {}
    for name, kind in (("qwen2.5-vl-7b", "qwen2_5_vl"), ("llava-1.5-7b", "llava")):
        model, processor = models.tiny_random(kind)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[f"/data/{name}"] = str(root / name)
    docvqa = root / "lmms-lab-DocVQA"
    (docvqa / "DocVQA").mkdir(parents=True)
    _docvqa(4).to_parquet(str(docvqa / "DocVQA" / "validation-00000-of-00001.parquet"))
    paths["/data/lmms-lab-DocVQA"] = str(docvqa)
    random_image((320, 240), seed=0).save(root / "receipt.png")
    (root / "run.yaml").write_text("model: tiny-random-llava\ndata: {name: synth-ocr}\n"
                                   "generation.max_new_tokens: 4\n")
    (root / "examples").symlink_to(ROOT / "examples")  # commands name examples/... from the checkout
    paths["cwd"] = str(root)
    return paths


def substitute(text: str, paths: dict[str, str]) -> str:
    for data_path, local in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        if data_path.startswith("/data/"):
            text = text.replace(data_path, local)
    text = text.replace('"cuda"', '"cpu"').replace("accelerator=gpu", "accelerator=cpu")
    return text


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "AVL_LAB_NO_EXT": "1"}


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(blocks("python")) >= 3 and len(blocks("bash")) >= 5
    assert not re.findall(r"^```(?!python|bash|$)\w+", README.read_text(), flags=re.M)


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index, stand_ins):
    code = substitute(blocks("python")[index], stand_ins)
    proc = subprocess.run([sys.executable, "-c", code], cwd=stand_ins["cwd"], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README python block {index}:\n{code}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_bash_block_commands_are_valid(index, stand_ins):
    for words in commands(substitute(blocks("bash")[index], stand_ins)):
        if words[0] in NOT_RUN_HERE:
            continue
        if words[0] == "lmms-eval":
            _check_lmms_eval(words)
            continue
        assert words[:2] == ["python", "-m"] and words[2].startswith("avl_lab"), (
            f"README bash block {index}: {shlex.join(words)} is neither an avl_lab command nor "
            f"one of {NOT_RUN_HERE}")
        argv = words[3:]
        if not {"--help", "-h", "--check"} & set(argv):
            argv.append("--check")
        proc = subprocess.run([sys.executable, "-m", words[2], *argv], cwd=stand_ins["cwd"],
                              env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(words)}\n{proc.stderr[-3000:]}"
        if "--help" in argv:
            assert proc.stdout.startswith("usage:")
        else:
            assert proc.stdout.startswith("ok: the"), proc.stdout


def _check_lmms_eval(words: list[str]) -> None:
    """Build the ``avl_lab`` model from the command's ``--model_args`` (without running it)."""
    from avl_lab.harness import TASKS
    from avl_lab.harness.model import AVLLab

    opts = dict(zip(words[1::2], words[2::2]))
    assert opts.get("--model") == "avl_lab", shlex.join(words)
    tasks = opts["--tasks"].split(",")
    assert set(tasks) <= {*TASKS, "avl_synth", "docvqa_val"}, tasks
    device = opts.get("--device", "cpu").replace("cuda:0", "cpu")
    model = AVLLab.create_from_arg_string(opts["--model_args"], {
        "batch_size": opts.get("--batch_size"), "max_batch_size": None, "device": device})
    assert model.batch_size == int(opts.get("--batch_size", 1))
