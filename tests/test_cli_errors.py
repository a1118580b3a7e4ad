"""Every bad input is one ``error:`` line, exit code 2, no traceback, nothing written or damaged.

The commands run in-process (``python -m avl_lab``'s ``main(argv)``) from an empty working
directory; the inputs (datasets, checkpoints, study files, an earlier run) are snapshotted
before and after each case.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

import avl_lab
from avl_lab.__main__ import main
from avl_lab.errors import USER_ERRORS

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model=tiny-random-llava", "data.limit=1", "generation.max_new_tokens=2", "progress=false"]


def _parquet(ds, folder: Path) -> None:
    (folder / "DocVQA").mkdir(parents=True)
    ds.to_parquet(str(folder / "DocVQA" / "validation-00000-of-00001.parquet"))


def _study(root: Path, name: str, **changes) -> None:
    spec = yaml.safe_load((ROOT / "sweeps" / "docvqa_pareto.yaml").read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = spec
        for p in path:
            node = node[p]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def _checkpoints(root: Path) -> None:
    import torch
    from safetensors.torch import save_file

    llava = json.dumps({"model_type": "llava"})
    for name, files in {
        "ckpt_bert": {"config.json": json.dumps({"model_type": "bert"}), "model.safetensors": b""},
        "ckpt_noweights": {"config.json": llava, "tokenizer.json": "{}"},
        "ckpt_badjson": {"config.json": '{"model_type": "llava",'},
        "ckpt_truncated": {"config.json": llava, "model.safetensors": b"\x08\x00\x00",
                           "tokenizer.json": "{}"},
        "ckpt_notok": {"config.json": llava},
    }.items():
        (root / name).mkdir()
        for fname, content in files.items():
            path = root / name / fname
            path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    save_file({"w": torch.zeros(2)}, str(root / "ckpt_notok" / "model.safetensors"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from tests.test_data_lmms import _docvqa

    root = tmp_path_factory.mktemp("inputs")
    (root / "a_file").write_text("not a directory\n")
    _parquet(_docvqa(0), root / "empty")
    _parquet(_docvqa(2).remove_columns("answers"), root / "no_answers")
    unreadable = _docvqa(2).to_dict()
    unreadable["image"] = [{"bytes": b"not an image", "path": None}] * 2
    _parquet(type(_docvqa(0)).from_dict(unreadable, features=_docvqa(0).features), root / "unreadable")
    dupes = _docvqa(3).to_dict()
    dupes["questionId"] = ["7", "7", "8"]
    _parquet(type(_docvqa(0)).from_dict(dupes, features=_docvqa(0).features), root / "dupes")
    (root / "garbage" / "DocVQA").mkdir(parents=True)
    (root / "garbage" / "DocVQA" / "validation-00000-of-00001.parquet").write_bytes(b"no parquet")
    _checkpoints(root)
    studies = root / "studies"
    studies.mkdir()
    (studies / "malformed.yaml").write_text("name: x\nspace: {S: {low: 10, high: 50\n")
    (studies / "empty.yaml").write_text("")
    (studies / "list.yaml").write_text("- a\n- b\n")
    _study(studies, "c200", space__C=None, fixed={"C": 200})
    _study(studies, "c60", space__C=None, space__S={"low": 10, "high": 50}, fixed={"C": 60})
    _study(studies, "space_z", space__Z={"low": 1, "high": 5})
    _study(studies, "sampler_nam", sampler__nam="tpe")
    _study(studies, "eval_policy", eval__policy={"name": "h2o"})
    _study(studies, "eval_limit", eval__data__limit="abc")
    _study(studies, "objectives", objectives=["used"])
    _study(studies, "n_trials", n_trials=0)
    _study(studies, "heartbeat", heartbeat_interval=10, grace_period=5)
    _study(studies, "low_high", space__S={"low": 60, "high": 20})
    _study(studies, "space_list", space=["S", "C"])
    configs = root / "configs"  # config=FILE
    configs.mkdir()
    for name, text in {
        "malformed": "data: {limit: 2\n", "list": "- a\n", "empty": "",
        "unknown_key": "data: {limt: 2}\n", "bad_type": "batch_size: abc\n",
        "bad_value": "generation: {num_beams: 0}\n", "nested": "config: other.yaml\n",
        "ok": "data: {limit: 1}\n", "sweep_policy": "study: docvqa_pareto\npolicy: h2o\n",
        "sweep_ntrials": "study: docvqa_pareto\nn_trials: 0\n",
        "figures_grid": "grid: {S: [0, 500]}\n", "analyze_bad": "analysis: bogus\n",
        "train_lr": "lr: abc\n", "train_unknown": "foo: 1\n",
    }.items():
        (configs / f"{name}.yaml").write_text(text)
    prev = root / "prev_run"  # an earlier run whose samples.jsonl has a corrupt line
    prev.mkdir()
    rec = {"id": "a", "prediction": "x", "references": ["x"], "score": 1.0}
    (prev / "samples.jsonl").write_text(json.dumps(rec) + "\n" + '{"id": "b", "predic\n')
    other = root / "other_run"  # results of another configuration
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"result_key": "0123456789ab"}) + "\n")
    (other / "samples.jsonl").write_text(json.dumps(rec) + "\n")
    return root


# (argv, text the error line must contain); {in} = the inputs folder, {out} = a fresh folder.
CASES = [
    # evaluate: keys and values
    (["evaluate", *TINY, "generation.num_beams=0"], "generation.num_beams"),
    (["evaluate", *TINY, "data.split=bogus"], "data.split"),
    (["evaluate", *TINY, "data.path={in}"], "data.path"),
    (["evaluate", *TINY, "data.limit=0"], "data.limit"),
    (["evaluate", *TINY, "data.limt=3"], "did you mean `data.limit`"),
    (["evaluate", *TINY, "data=bogus"], "data.name"),
    (["evaluate", *TINY, "batch_size=0"], "batch_size"),
    (["evaluate", *TINY, "generation.max_new_tokens=0"], "generation.max_new_tokens"),
    (["evaluate", *TINY, "model.dtype=float64"], "model.dtype"),
    (["evaluate", *TINY, "seed=abc"], "`seed` must be an integer"),
    (["evaluate", *TINY, "progress=maybe"], "progress"),
    (["evaluate", *TINY, "accelerator=tpu"], "accelerator"),
    (["evaluate", *TINY, "devices=abc"], "devices"),
    (["evaluate", *TINY, "devices=0"], "devices"),
    (["evaluate", *TINY, "strategy=bogus"], "strategy"),
    (["evaluate", *TINY, "out_dir={in}/a_file"], "is a file"),
    (["evaluate", *TINY, "out_dir={in}/a_file/sub"], "a_file is a file"),
    (["evaluate", *TINY, "foo"], "'foo'"),
    (["evaluate", *TINY, "--bogus", "1"], "bogus"),
    (["evaluate", *TINY, "-x"], "unknown option"),
    # evaluate: policies
    (["evaluate", *TINY, "policy=bogus"], "policy.name"),
    (["evaluate", *TINY, "policy=h2o", "policy.ratio=abc"], "`policy.ratio` must be a number"),
    (["evaluate", *TINY, "policy=random", "policy.seed=1.5"], "`policy.seed` must be an integer"),
    (["evaluate", *TINY, "policy=random", "policy.seed=abc"], "`policy.seed` must be an integer"),
    (["evaluate", *TINY, "policy=avl", "policy.S=10", "policy.C=20"], "`C`"),
    (["evaluate", *TINY, "policy=avl", "policy.Q=1"], "policy.Q"),
    (["evaluate", *TINY, "policy=streaming", "policy.budget=3", "policy.sinks=4"], "budget"),
    (["evaluate", *TINY, "policy=fastv", "policy.layer=40"], "`policy.layer` 40"),
    (["evaluate", *TINY, "policy=streaming", "policy.ratio=0.01", "out_dir={out}"], "sinks"),
    # evaluate: models and checkpoints
    (["evaluate", *TINY, "model=/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["evaluate", *TINY, "model={in}/ckpt_bert"], "'bert'"),
    (["evaluate", *TINY, "model={in}/ckpt_noweights"], "no weights"),
    (["evaluate", *TINY, "model={in}/ckpt_badjson"], "not valid JSON"),
    (["evaluate", *TINY, "model={in}/ckpt_truncated"], "safetensors"),
    (["evaluate", *TINY, "model={in}/ckpt_notok"], "tokenizer"),
    # evaluate: datasets and earlier results
    (["evaluate", *TINY, "data=docvqa"], "docvqa"),
    (["evaluate", *TINY, "data=docvqa", "data.path={in}/nope"], "data.path"),
    (["evaluate", *TINY, "data=docvqa", "data.path={in}/empty"], "0 rows"),
    (["evaluate", *TINY, "data=docvqa", "data.path={in}/no_answers"], "answers"),
    (["evaluate", *TINY, "data=docvqa", "data.path={in}/garbage"], "cannot read"),
    (["evaluate", *TINY, "data=docvqa", "data.path={in}/unreadable"], "could be scored"),
    (["evaluate", *TINY, "data=docvqa", "data.path={in}/unreadable", "--check"], "none of its 1 rows has reference answers and an image that decodes"),
    (["evaluate", *TINY, "data=docvqa", "data.path={in}/dupes", "data.limit=3"], "duplicate sample id"),
    (["evaluate", *TINY, "out_dir={in}/prev_run"], "line 2 is not valid JSON"),
    (["evaluate", *TINY, "out_dir={in}/other_run"], "holds results of another configuration"),
    (["evaluate", *TINY, "out_dir={in}/other_run", "--check"], "holds results of another"),
    # sweep: flags, overrides, storage
    (["sweep", "--study", "docvqa_pareto", "--n-trials", "0"], "n_trials"),
    (["sweep", "--study", "docvqa_pareto", "--n-trials", "abc"], "n_trials"),
    (["sweep", "--study", "docvqa_pareto", "--report", "--out", "{out}"], "no study"),
    (["sweep", "--study", "docvqa_pareto", "--storage", "notaurl"], "storage"),
    (["sweep", "--study", "docvqa_pareto", "--storage", "foo://x/y"], "unknown database"),
    (["sweep", "--study", "docvqa_pareto", "--storage", "sqlite:///{in}/nodir/x.db"], "folder"),
    (["sweep", "--study", "docvqa_pareto", "policy=h2o"], "`policy`"),
    (["sweep", "--study", "docvqa_pareto", "data.limit=abc"], "data.limit"),
    (["sweep", "--study", "docvqa_pareto", "--out", "{in}/a_file"], "is a file"),
    (["sweep", "--study", "docvqa_pareto", "model={in}/ckpt_bert", "--out", "{out}"], "'bert'"),
    (["sweep", "--study", "docvqa_pareto", "data=docvqa", "--out", "{out}"], "docvqa"),
    (["sweep", "--study", "nope"], "unknown study"),
    (["sweep", "--n-trials", "2"], "`study` is required"),
    # sweep: study files
    (["sweep", "--study", "{in}/studies/malformed.yaml"], "not valid YAML"),
    (["sweep", "--study", "{in}/studies/empty.yaml"], "is empty"),
    (["sweep", "--study", "{in}/studies/list.yaml"], "mapping"),
    (["sweep", "--study", "{in}/studies/c200.yaml"], "`fixed.C` is invalid for policy 'avl': `C` must be a percentage"),
    (["sweep", "--study", "{in}/studies/c60.yaml"], "`fixed.C` is 60"),
    (["sweep", "--study", "{in}/studies/space_z.yaml"], "space.Z"),
    (["sweep", "--study", "{in}/studies/sampler_nam.yaml"], "sampler.nam"),
    (["sweep", "--study", "{in}/studies/eval_policy.yaml"], "eval.policy"),
    (["sweep", "--study", "{in}/studies/eval_limit.yaml"], "data.limit"),
    (["sweep", "--study", "{in}/studies/objectives.yaml"], "objectives"),
    (["sweep", "--study", "{in}/studies/n_trials.yaml"], "n_trials"),
    (["sweep", "--study", "{in}/studies/heartbeat.yaml"], "grace_period"),
    (["sweep", "--study", "{in}/studies/space_list.yaml"], "`space` must be a mapping, not a list"),
    (["sweep", "--study", "{in}/studies/space_list.yaml", "--check"], "`space` must be a mapping"),
    (["evaluate", *TINY, "out_dir=/proc/avl_lab_x"], "`out_dir` /proc/avl_lab_x cannot be created"),
    (["evaluate", *TINY, "out_dir=/proc/avl_lab_x", "--check"], "`out_dir` /proc/avl_lab_x cannot be"),
    (["train", "lrr=1"], "did you mean `lr`?"),
    (["sweep", "--study", "{in}/studies/low_high.yaml"], "space.S"),
    # figures
    (["figures", "fig9", "grid.S=[0,500]"], "grid.S"),
    (["figures", "fig9", "grid.S=[]"], "grid.S"),
    (["figures", "fig9", "grid.Q=[1]"], "grid.Q"),
    (["figures", "fig9", "grid.C=[60]"], "grid.S_core"),
    (["figures", "fig9", "grid.S=[1,"], "grid.S"),
    (["figures", "fig9", "policy=h2o"], "`policy`"),
    (["figures", "fig9", "tasks=[synth-ocr]"], "tasks"),
    (["figures", "fig11"], "fig11"),
    (["figures", "fig10", "model=/nonexistent/ckpt", "out_dir={out}"], "/nonexistent/ckpt"),
    (["figures"], "`figure` is required"),
    (["figures", "table", "data=synth-ocr"], "`data`"),
    (["figures", "table", "tasks=[bogus]"], "bogus"),
    # analyze
    (["analyze", "step-ppci", "generation.max_new_tokens=1"], "generation.max_new_tokens"),
    (["analyze", "bogus"], "bogus"),
    (["analyze", "all", "policy=avl"], "`policy`"),
    (["analyze", "all", "data.split=bogus"], "data.split"),
    # train
    (["train", "foo=1"], "unknown key `foo` (49 valid keys: `--help` lists them)"),
    (["train", "lr=abc"], "`lr` must be a number"),
    (["train", "lr=2"], "`lr`"),
    (["train", "model.patch_size=0"], "patch_size"),
    (["train", "max_minutes=soon"], "max_minutes"),
    (["train", "init_from={in}/nope"], "init_from"),
    (["train", "export_only=true", "out_dir={out}"], "export_only"),
    # config=FILE: the file's errors name the file and the key; the command line's do not
    (["evaluate", *TINY, "config={in}/configs/nope.yaml"], "nope.yaml does not exist"),
    (["evaluate", *TINY, "config={in}/configs/malformed.yaml"], "malformed.yaml is not valid YAML"),
    (["evaluate", *TINY, "config={in}/configs/list.yaml"], "list.yaml must hold a mapping"),
    (["evaluate", *TINY, "config={in}/configs/empty.yaml"], "empty.yaml is empty"),
    (["evaluate", *TINY, "config={in}/configs/unknown_key.yaml"],
     "unknown_key.yaml: unknown key `data.limt`"),
    (["evaluate", *TINY, "config={in}/configs/bad_type.yaml"],
     "bad_type.yaml: `batch_size` must be an integer"),
    (["evaluate", *TINY, "--config", "{in}/configs/bad_value.yaml"],
     "bad_value.yaml: `generation.num_beams`"),
    (["evaluate", *TINY, "config={in}/configs/nested.yaml"], "nested.yaml: `config` cannot"),
    (["evaluate", *TINY, "config={in}/configs/ok.yaml", "config={in}/configs/ok.yaml"],
     "given 2 times"),
    (["evaluate", *TINY, "config="], "`config` needs a file name"),
    (["evaluate", *TINY, "--config"], "`--config` needs a value"),
    (["evaluate", *TINY, "config={in}/configs/ok.yaml", "generation.num_beams=0"],
     "error: `generation.num_beams`"),
    (["sweep", "config={in}/configs/sweep_policy.yaml"], "sweep_policy.yaml: `policy`"),
    (["sweep", "config={in}/configs/sweep_ntrials.yaml"], "sweep_ntrials.yaml: `n_trials`"),
    (["sweep", "--study", "docvqa_pareto", "config={in}/configs/bad_value.yaml"],
     "bad_value.yaml: `generation.num_beams`"),
    (["sweep", "--study", "docvqa_pareto", "config={in}/configs/malformed.yaml"],
     "malformed.yaml is not valid YAML"),
    (["figures", "fig9", "config={in}/configs/figures_grid.yaml"], "figures_grid.yaml: `grid.S`"),
    (["figures", "table", "config={in}/configs/unknown_key.yaml"],
     "unknown_key.yaml: unknown key `data.limt`"),
    (["analyze", "config={in}/configs/analyze_bad.yaml"], "analyze_bad.yaml: `analysis`"),
    (["analyze", "all", "config={in}/configs/bad_type.yaml"], "bad_type.yaml: `batch_size`"),
    (["train", "config={in}/configs/train_lr.yaml"], "train_lr.yaml: `lr` must be a number"),
    (["train", "config={in}/configs/train_unknown.yaml"], "train_unknown.yaml: unknown key `foo`"),
    (["train", "config={in}/configs/nope.yaml"], "nope.yaml does not exist"),
    # the front door
    (["bogusverb"], "bogusverb"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _case_id(case) -> str:
    argv, _ = case
    return " ".join(a.replace("{in}/", "").replace("{out}", "OUT") for a in argv
                    if a not in TINY)[:60]


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({_case_id(c) for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "needle"), CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(argv, needle, inputs, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AVL_LAB_CACHE", str(inputs.parent / "avl-cache"))
    before_inputs, before_here = _snapshot(inputs), _snapshot(tmp_path)
    args = [a.replace("{in}", str(inputs)).replace("{out}", str(tmp_path / "out")) for a in argv]
    rc = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert _snapshot(inputs) == before_inputs, "an input was damaged"
    assert _snapshot(tmp_path) == before_here, "a result file was written"


API_CASES = [
    (lambda out: avl_lab.evaluation.evaluate(123), "a config must be"),
    (lambda out: avl_lab.evaluation.evaluate({"bogus": 1, "out_dir": out}), "unknown key `bogus`"),
    (lambda out: avl_lab.evaluation.evaluate("/nonexistent/run.yaml"), "/nonexistent/run.yaml"),
    (lambda out: avl_lab.evaluation.evaluate("data.limit=3"), "list"),
    (lambda out: avl_lab.evaluation.evaluate([*TINY, "policy=random", "policy.seed=abc", f"out_dir={out}"]),
     "policy.seed"),
    (lambda out: avl_lab.evaluation.evaluate(TINY, data__limit="abc", out_dir=out), "data.limit"),
    (lambda out: avl_lab.evaluation.evaluate({"policy": {"name": "h2o", "ratio": "abc"}, "out_dir": out}),
     "policy.ratio"),
]


@pytest.mark.parametrize(("call", "needle"), API_CASES)
def test_bad_input_through_the_api_is_a_clear_error(call, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(USER_ERRORS) as info:
        call(str(tmp_path / "out"))
    assert needle in str(info.value).splitlines()[0]
    assert not any(tmp_path.iterdir())
