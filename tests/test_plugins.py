"""Plugins: the example package installed (its entry point), the same policy through
``plugins=FILE``, tasks and metrics by the same mechanism, and bad plugins as one ``error:``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from avl_lab import plugins

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "top_image_policy"
PLUGIN_FILE = EXAMPLE / "avl_top_image" / "top_image.py"
FAST = ["model=tiny-random-llava", "data.limit=2", "generation.max_new_tokens=3", "batch_size=2"]


@pytest.fixture
def isolated(monkeypatch):
    """Plugins loaded in this process are forgotten afterwards: the registries, the plugin
    records and ``sys.modules`` are restored (so the policy matrix never sees a test plugin)."""
    from avl_lab.data import registry as tasks
    from avl_lab.metrics import registry as metrics
    from avl_lab.policies import registry as policies

    for module, names in ((policies, ("_REGISTRY", "_EXAMPLES")), (tasks, ("_REGISTRY",)),
                          (metrics, ("_BUILDERS", "SAMPLE_SCORERS")), (plugins, ("_LOADED",))):
        for name in names:
            monkeypatch.setattr(module, name, dict(getattr(module, name)))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _run(args: list[str], cwd: Path = ROOT, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "avl_lab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _one_error(res: subprocess.CompletedProcess, *texts: str) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def _check_plugin_runs(tmp_path: Path, extra: list[str], pythonpath: Path | None = None) -> None:
    """``evaluate policy=top_image`` and a 3-trial study of it, from the command line."""
    out = tmp_path / "eval"
    _ok(_run(["evaluate", *extra, *FAST, "policy=top_image", "policy.keep=40", f"out_dir={out}"],
             pythonpath=pythonpath))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["policy"] == {"name": "top_image", "keep": 40}
    assert 0 < summary["stored"] < 1  # the plugin's hook ran: image rows were evicted
    assert "top_image" in summary["versions"]["plugins"]
    sweep = tmp_path / "sweep"
    stdout = _ok(_run(["sweep", "--study", str(EXAMPLE / "study.yaml"), "--n-trials", "3",
                       "--no-progress", *extra, *FAST, "--out", str(sweep)], pythonpath=pythonpath))
    assert "[top_image]" in stdout and "[avl_S]" in stdout
    df = pd.read_csv(sweep / "pareto.csv")
    assert (df["method"] == "top_image").sum() == 3 and (df["method"] == "avl_S").sum() == 3
    assert df.loc[df["method"] == "top_image", "keep"].between(10, 90).all()
    methods = pd.read_csv(sweep / "methods.csv")
    assert list(methods["method"]) == ["top_image", "avl_S"]


def test_installed_example_package_is_used_by_every_verb(tmp_path):
    """pip-installs examples/top_image_policy (local path, no deps, no build isolation, no
    network) into a target folder on the subprocesses' path: its entry point alone makes the
    policy known."""
    site, source = tmp_path / "site", tmp_path / "source"
    shutil.copytree(EXAMPLE, source)  # the build writes build/ and *.egg-info beside the sources
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert list(site.glob("avl_top_image-*.dist-info/entry_points.txt"))
    listing = _ok(_run(["evaluate", "--help"], pythonpath=site))
    assert "top_image" in listing and "top_image" not in _ok(_run(["evaluate", "--help"]))
    _check_plugin_runs(tmp_path, [], pythonpath=site)


def test_the_same_policy_through_plugins_file(tmp_path):
    _check_plugin_runs(tmp_path, [f"plugins=[{PLUGIN_FILE}]"])


TASK_AND_METRIC = '''
from avl_lab import data
from avl_lab.metrics._base import MeanScoreMetric
from avl_lab.metrics.registry import register_metric


def first_letter(prediction, answers):
    """1 when the prediction starts with the first letter of an answer."""
    p = prediction.strip().lower()[:1]
    return float(any(p and a.strip().lower()[:1] == p for a in answers))


@register_metric("first_letter", sample=first_letter)
class FirstLetter(MeanScoreMetric):
    def score(self, prediction, answers):
        return first_letter(prediction, answers)


@data.register("docvqa-first-letter", metric="first_letter", splits=("eval",), kind="synthetic",
               description="synth-docvqa scored by the first letter")
def load(split, limit, **kwargs):
    rows = data.load("synth-docvqa", split, limit)
    return rows.map(lambda r: {"metric": "first_letter"})
'''


def test_a_task_and_a_metric_from_a_plugin(tmp_path, isolated, capsys):
    plugin = tmp_path / "my_task.py"
    plugin.write_text(TASK_AND_METRIC)
    listing = _ok(_in_process(["evaluate", f"plugins={plugin}", "--help"], capsys))
    assert "docvqa-first-letter" in listing
    out = tmp_path / "eval"
    _ok(_in_process(["evaluate", f"plugins={plugin}", *FAST, "data=docvqa-first-letter",
                     f"out_dir={out}", "progress=false"], capsys))
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert summary["metric"] == "first_letter" and len(records) == 2
    for r in records:  # each sample scored by the plugin's own function
        p = r["prediction"].strip().lower()[:1]
        assert r["score"] == float(any(p and a.lower()[:1] == p for a in r["references"]))


def _in_process(args: list[str], capsys) -> subprocess.CompletedProcess:
    """``python -m avl_lab ARGS`` in this process (a failing plugin leaves nothing registered)."""
    from avl_lab.__main__ import main

    rc = main(args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


BAD = {
    "boom.py": "import os\nraise RuntimeError('boom')\n",
    "syntax.py": "def f(:\n",
    "taken_policy.py": ("from dataclasses import dataclass\nfrom avl_lab.policies import Policy, "
                        "register\n@register('h2o')\n@dataclass\nclass Mine(Policy):\n    pass\n"),
    "taken_task.py": ("from avl_lab import data\n@data.register('synth-ocr', metric='anls', "
                      "splits=('eval',), kind='synthetic', description='x')\ndef f(s, l): pass\n"),
    "taken_metric.py": ("from avl_lab.metrics import register_metric\nfrom avl_lab.metrics._base "
                        "import MeanScoreMetric\n@register_metric('anls')\nclass M(MeanScoreMetric):"
                        "\n    pass\n"),
    "bad-name.py": "x = 1\n",
}


@pytest.mark.parametrize(("plugin", "texts"), [
    ("missing.py", ["`plugins`: no plugin file missing.py"]),
    ("no_such_module_xyz", ["`plugins`: no module 'no_such_module_xyz'"]),
    ("boom.py", ["plugin", "boom.py failed to import: RuntimeError: boom (boom.py, line 2)"]),
    ("syntax.py", ["syntax.py failed to import: SyntaxError"]),
    ("taken_policy.py", ["policy name 'h2o' is already registered by avl_lab.policies.h2o.H2O"]),
    ("taken_task.py", ["task name 'synth-ocr' is already registered by avl_lab.data"]),
    ("taken_metric.py", ["metric name 'anls' is already registered by avl_lab.metrics.anls.ANLS"]),
    ("bad-name.py", ["bad-name.py cannot be imported"]),
])
def test_a_bad_plugin_is_one_error_and_nothing_is_written(tmp_path, monkeypatch, capsys, plugin,
                                                          texts):
    if plugin in BAD:
        (tmp_path / plugin).write_text(BAD[plugin])
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _one_error(_in_process(["evaluate", f"plugins={plugin}", *FAST, f"out_dir={out}"], capsys),
               *texts)
    assert not out.exists()
    assert plugin.removesuffix(".py") not in sys.modules


@pytest.mark.parametrize("verb", [
    ["evaluate", "out_dir={out}"], ["sweep", "--study", "docvqa_pareto", "--out", "{out}"],
    ["figures", "fig9", "out_dir={out}"], ["analyze", "sparsity", "out_dir={out}"],
    ["train", "out_dir={out}", "max_steps=1"],
])
def test_every_verb_takes_plugins(tmp_path, monkeypatch, capsys, verb):
    """Every verb imports ``plugins=`` before anything else: a failing one is its one error."""
    (tmp_path / "boom.py").write_text(BAD["boom.py"])
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = [a.replace("{out}", str(out)) for a in verb]
    _one_error(_in_process([args[0], "--plugins", "boom.py", *args[1:]], capsys),
               "boom.py failed to import: RuntimeError: boom")
    assert not out.exists()


def test_a_broken_installed_entry_point_is_one_error(tmp_path, monkeypatch, capsys):
    """An installed package whose entry point fails: the error names it, its group and package."""
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[avl_lab.policies]\nbroken = broken_plugin_mod\n")
    (site / "broken_plugin_mod.py").write_text("import not_a_real_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_INSTALLED_DONE", False)
    res = _in_process(["evaluate", *FAST, "--check"], capsys)
    _one_error(res, "entry point 'broken' (avl_lab.policies, from broken-plugin 1.0) failed to import",
               "ModuleNotFoundError", "not_a_real_dependency_xyz")


def test_plugins_in_config_and_study_files_resolve_next_to_the_file(tmp_path, isolated, capsys):
    """A relative path in a YAML file is found next to that file, wherever the command runs."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "top_image.py").write_text(PLUGIN_FILE.read_text())
    (folder / "run.yaml").write_text("plugins: [top_image.py]\npolicy: {name: top_image, keep: 20}\n")
    _ok(_in_process(["evaluate", f"config={folder / 'run.yaml'}", *FAST, "--check"], capsys))
    study = (EXAMPLE / "study.yaml").read_text().replace("methods:", "plugins: [top_image.py]\nmethods:")
    (folder / "study.yaml").write_text(study)
    out = _ok(_in_process(["sweep", "--study", str(folder / "study.yaml"), *FAST, "--check"], capsys))
    assert out.startswith("ok:")
    (folder / "run.yaml").write_text("plugins: [nope.py]\n")
    _one_error(_in_process(["evaluate", f"config={folder / 'run.yaml'}", "--check"], capsys),
               f"config file {folder / 'run.yaml'}", "no plugin file nope.py")


def test_load_imports_a_file_once_and_records_it(tmp_path, monkeypatch, isolated):
    path = tmp_path / "counted_plugin_once.py"
    path.write_text("import builtins\nbuiltins.counted_plugin_loads = "
                    "getattr(builtins, 'counted_plugin_loads', 0) + 1\n")
    monkeypatch.chdir(tmp_path)
    import builtins

    first = plugins.load(["counted_plugin_once.py"])
    again = plugins.load([str(path)])  # the same file by another spelling
    assert first == again and builtins.counted_plugin_loads == 1
    assert any(p.source == str(path) for p in plugins.loaded())
    assert plugins.parse_specs("[a.py, b.c]") == ["a.py", "b.c"] and plugins.parse_specs("x") == ["x"]
    with pytest.raises(plugins.PluginError, match="a module name, a .py path or a list"):
        plugins.parse_specs(3)
    del builtins.counted_plugin_loads
