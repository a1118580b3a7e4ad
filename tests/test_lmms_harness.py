"""The lmms-eval ``avl_lab`` model's pieces, without lmms-eval's command line: its
``--model_args`` (validated as on avl_lab's command line), the errors for what it does not run
(log-likelihood and multi-round tasks, several images), its generation settings, the entry
point, the shipped task files, and the torchvision pitfall as one ``error:`` line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Image as ImageFeature
from datasets import load_dataset
from lmms_eval.api.instance import Instance
from lmms_eval.utils import simple_parse_args_string
from PIL import Image

from avl_lab.errors import ConfigError
from avl_lab.harness import TASKS, TASKS_DIR
from avl_lab.harness.model import AVLLab, generation_kwargs, truncate
from avl_lab.harness.model_args import parse_model_args

ROOT = Path(__file__).resolve().parent.parent


def _args(text: str):
    return parse_model_args(simple_parse_args_string(text))


def test_model_args_split_model_and_policy():
    a = _args("pretrained=avl-tiny,policy=avl,S=45,C=30,K=3,P=90,T=50,batch_size=4,seed=2")
    assert (a.pretrained, a.batch_size, a.seed, a.dtype) == ("avl-tiny", 4, 2, "float32")
    assert a.policy == {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50}
    assert _args("policy=random,policy.seed=3,seed=1").policy == {"name": "random", "seed": 3}
    sinks = _args("policy=streaming,ratio=0.5,sinks=4.0").policy["sinks"]  # lmms-eval: 4.0
    assert sinks == 4 and isinstance(sinks, int)
    assert _args("policy=avl,S=45,layers=2-").policy["layers"] == "2-"
    assert _args("pretrained=x").policy == {"name": "full"}


@pytest.mark.parametrize(("text", "message"), [
    ("policy=avl,S=abc", "`S` must be a number"),
    ("policy=avl,K=1.5", "`K` must be an integer"),
    ("policy=avl,S=30,C=45", "`C` (45) must not exceed `S` (30)"),
    ("policy=avl,Q=3", "`Q` is not a field of policy 'avl'"),
    ("policy=full,S=45", "`S` is not a field of policy 'full'"),
    ("policy=nope", "`policy`: unknown policy 'nope'"),
    ("policy=streaming,budget=-1", "`budget` must be a positive number"),
    ("dtype=float64", "`dtype` must be float32 | bfloat16 | float16"),
    ("batch_size=auto", "`batch_size` must be a non-negative integer"),
    ("batch_size=0", "`batch_size` must be ≥ 1"),
    ("pretrained=", "`pretrained` must name a model"),
])
def test_model_args_errors(text, message):
    with pytest.raises(ConfigError) as err:
        _args(text)
    assert str(err.value).startswith("avl_lab --model_args: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_args_fail_before_loading(monkeypatch):
    """lmms-eval builds the model from its arg string; a bad policy never reaches the weights."""
    import avl_lab.models

    monkeypatch.setattr(avl_lab.models, "load", lambda *a, **k: pytest.fail("loaded weights"))
    with pytest.raises(ConfigError, match="`T` must be a number"):
        AVLLab.create_from_arg_string("pretrained=avl-tiny,policy=avl,S=45,T=x",
                                      {"batch_size": "2", "max_batch_size": None, "device": "cpu"})


def test_layer_beyond_the_model_is_an_error():
    with pytest.raises(ConfigError, match="`policy.layer` 9 is not a decoder layer"):
        AVLLab(pretrained="tiny-random-llava", policy="avl", S=45, P=90, layer=9, device="cpu")


@pytest.fixture(scope="module")
def tiny_model() -> AVLLab:
    return AVLLab(pretrained="tiny-random-llava", policy="avl", S=45, C=30, device="cpu")


def _instance(kind: str, args: tuple, task: str = "some_task") -> Instance:
    return Instance(request_type=kind, arguments=args, idx=0,
                    metadata={"task": task, "doc_id": 0, "repeats": 1})


def test_loglikelihood_names_the_task_type(tiny_model):
    req = _instance("loglikelihood", ("ctx", "cont", None, 0, "mme", "test"), task="mme")
    with pytest.raises(NotImplementedError, match=r"mme ask for log-likelihoods.*generate_until"):
        tiny_model.loglikelihood([req])
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        tiny_model.generate_until_multi_round([req])


def test_one_image_per_request(tiny_model):
    image = Image.new("RGB", (32, 32), "white")
    tiny_model.task_dict = {"t": {"test": [{"x": 1}]}}
    req = _instance("generate_until", ("What?", {"max_new_tokens": 2}, lambda d: [image, image],
                                       0, "t", "test"))
    with pytest.raises(NotImplementedError, match="gives 2 visual"):
        tiny_model.generate_until([req])


def test_generate_until_without_ids(tiny_model):
    """A task of lmms-eval's own (docs without ``id``): text plus token counts with the cache."""
    image = Image.new("RGB", (32, 32), "white")
    tiny_model.task_dict = {"t": {"test": [{"q": "a"}, {"q": "b"}]}}
    reqs = [_instance("generate_until", ("What?", {"max_new_tokens": 3, "until": ["\n\n"]},
                                         lambda d: [image], i, "t", "test")) for i in (0, 1)]
    out = tiny_model.generate_until(reqs)
    assert len(out) == 2 and all(isinstance(r.text, str) for r in out)
    counts = out[0].token_counts.to_dict()
    assert 0 < counts["used"] <= counts["stored"] <= 1 and 1 <= counts["output_tokens"] <= 3


def test_generation_settings():
    gen, until = generation_kwargs({"max_new_tokens": 16, "temperature": 0, "until": "\n\n"})
    assert gen == {"do_sample": False, "max_new_tokens": 16, "num_beams": 1} and until == ["\n\n"]
    gen, _ = generation_kwargs({"temperature": 0.7, "top_p": 0.9, "num_beams": 2})
    assert gen == {"do_sample": True, "max_new_tokens": 1024, "num_beams": 2,
                   "temperature": 0.7, "top_p": 0.9}
    assert truncate(" a b\n\nc ", ["\n\n"]) == "a b"
    assert truncate(" x ", []) == "x"


def test_entry_point_is_registered():
    from lmms_eval.models import get_model

    assert get_model("avl_lab") is AVLLab


@pytest.mark.parametrize("task", list(TASKS))
def test_shipped_rows_are_the_generated_rows(task):
    """The parquet files are avl_lab's own rows (rerun ``python -m avl_lab.harness.export``)."""
    from avl_lab.harness.export import rows, task_file

    config = yaml.load((TASKS_DIR / f"{task}.yaml").read_text(), Loader=yaml.BaseLoader)
    assert config["task"] == task
    assert (TASKS_DIR / config["dataset_kwargs"]["data_files"]["test"]) == task_file(task)
    shipped = load_dataset("parquet", data_files={"test": str(task_file(task))},
                           cache_dir=None)["test"]
    assert isinstance(shipped.features["image"], ImageFeature) and shipped.features["image"].decode
    want = rows(task, decode=False)
    got = shipped.cast_column("image", ImageFeature(decode=False))
    assert len(got) == len(want) == TASKS[task][1]
    for col in ("id", "prompt", "answers", "metric", "meta"):
        assert got[col] == want[col], col
    assert [r["bytes"] for r in got["image"]] == [r["bytes"] for r in want["image"]]


@pytest.fixture
def broken_torchvision(tmp_path) -> dict:
    """A torchvision that fails to import as PyPI's CUDA build does beside a CPU torch."""
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


@pytest.mark.parametrize("verb", ["evaluate", "harness"])
def test_broken_torchvision_is_one_error_line(broken_torchvision, tmp_path, verb):
    cmd = (["-m", "avl_lab", "evaluate", "model=avl-tiny", "data.limit=1",
            f"out_dir={tmp_path / 'out'}"] if verb == "evaluate" else ["-m", "avl_lab.harness"])
    res = subprocess.run([sys.executable, *cmd], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=broken_torchvision)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torchvision is installed but does "
                                                   "not import beside torch"), res.stderr[-2000:]
    assert "operator torchvision::nms does not exist" in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_healthy_environment_has_no_torchvision_problem():
    from avl_lab.torchvision_check import check_torchvision, torchvision_problem

    assert torchvision_problem() is None
    check_torchvision()
