"""The evaluation runner: files, resume after a kill, DDP, batch invariance, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import avl_lab
from avl_lab.evaluation import load_config
from avl_lab.evaluation.summary import summarize
from avl_lab.metrics import anls

COMMON = ["model=tiny-random-llava", "data=synth-docvqa", "data.limit=6",
          "generation.max_new_tokens=6", "progress=false"]
BASE = [*COMMON, "policy=avl", "policy.S=45", "policy.C=30"]
ROOT = Path(__file__).resolve().parent.parent


def _cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avl_lab.evaluate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ})


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """An uninterrupted single-process CLI run."""
    out = tmp_path_factory.mktemp("baseline")
    res = _cli([*BASE, "batch_size=2", f"out_dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_cli_writes_samples_and_summary(baseline):
    summary = json.loads((baseline / "summary.json").read_text())
    lines = _lines(baseline)
    assert len(lines) == summary["n"] == 6 and summary["skipped"] == 0
    for rec in lines:
        assert {"id", "prompt", "prediction", "references", "score", "stored", "used",
                "latency_s"} <= set(rec)
        assert rec["score"] == pytest.approx(anls(rec["prediction"], rec["references"]))
    assert summary["score"] == pytest.approx(sum(r["score"] for r in lines) / len(lines))
    assert summary["stored"] == pytest.approx(sum(r["stored"] for r in lines) / len(lines))
    assert 0 < summary["used"] < summary["stored"] < 1
    for key in ("decode_tokens_per_s", "prefill_s", "decode_s", "peak_memory_mb", "config",
                "versions"):
        assert key in summary
    assert (baseline / "config.yaml").exists()


def test_killed_run_resumes_without_recomputing(baseline, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "avl_lab.evaluate", *BASE, "batch_size=1",
                             f"out_dir={out}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and len(samples.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _lines(out)
    assert 2 <= len(first) < 6, "the run must be killed part-way"
    res = _cli([*BASE, "batch_size=1", f"out_dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    final = _lines(out)
    assert final[: len(first)] == first  # the first N lines were kept as they were
    assert len(final) == 6 and len({r["id"] for r in final}) == 6  # nothing recomputed twice
    assert f"resuming: {len(first)} samples done" in res.stderr
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((baseline / "summary.json").read_text())
    assert a["metric"] == b["metric"]
    assert a["score"] == pytest.approx(b["score"]) and a["n"] == b["n"]
    assert a["stored"] == pytest.approx(b["stored"]) and a["used"] == pytest.approx(b["used"])
    preds = {r["id"]: r["prediction"] for r in _lines(baseline)}
    assert {r["id"]: r["prediction"] for r in final} == preds


def test_two_ddp_processes_equal_one(baseline, tmp_path):
    out = tmp_path / "ddp"
    res = _cli([*BASE, "batch_size=2", "accelerator=cpu", "devices=2", "strategy=ddp",
                f"out_dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((baseline / "summary.json").read_text())
    assert a["n"] == b["n"] and a["score"] == pytest.approx(b["score"])
    assert a["stored"] == pytest.approx(b["stored"]) and a["used"] == pytest.approx(b["used"])
    assert {r["id"]: r["prediction"] for r in _lines(out)} == {
        r["id"]: r["prediction"] for r in _lines(baseline)}


def test_batch_size_1_and_8_give_the_same_predictions(tmp_path):
    preds = {}
    for bs in (1, 8):
        cfg = load_config([*BASE, "data=synth-ocr", f"batch_size={bs}", f"out_dir={tmp_path / str(bs)}"])
        summary = avl_lab.evaluation.evaluate(cfg)
        assert summary.n == 6
        preds[bs] = {r["id"]: r["prediction"] for r in _lines(tmp_path / str(bs))}
    assert preds[1] == preds[8]


def test_full_policy_stores_and_uses_everything(tmp_path):
    summary = avl_lab.evaluation.evaluate([*COMMON, "policy=full", "data.limit=2", f"out_dir={tmp_path}"])
    assert summary.stored == pytest.approx(1.0) and summary.used == pytest.approx(1.0)


def test_summary_score_is_the_mean_of_sample_scores():
    recs = [{"id": str(i), "prediction": p, "references": refs, "score": anls(p, refs), "stored": 0.5,
             "used": 0.4, "batch": "b", "decode_s": 1.0, "prefill_s": 0.1, "new_tokens": 3}
            for i, (p, refs) in enumerate([("abc", ["abc"]), ("abd", ["abc"]), ("x", ["abc"])])]
    s = summarize(recs, "anls", 0, {}, 0.0)
    assert s.score == pytest.approx((1 + (1 - 1 / 3) + 0) / 3)
    assert s.decode_tokens_per_s == pytest.approx(9.0)


def test_corrupt_image_rows_are_skipped_and_counted(tmp_path):
    from tests.test_data_lmms import _docvqa

    ds = _docvqa(4)
    rows = ds.to_dict()
    rows["image"][1] = {"bytes": b"not an image", "path": None}
    from datasets import Dataset

    bad = Dataset.from_dict(rows, features=ds.features)
    (tmp_path / "DocVQA").mkdir()
    bad.to_parquet(str(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet"))
    with pytest.warns(UserWarning):
        summary = avl_lab.evaluation.evaluate(["model=tiny-random-llava", "data=docvqa", f"data.path={tmp_path}",
                                    "generation.max_new_tokens=2", "progress=false",
                                    f"out_dir={tmp_path / 'out'}"])
    assert summary.n == 3 and summary.skipped == 1
    assert summary.skipped_reasons == {"unreadable image": 1}


def test_prompts_beyond_the_context_are_skipped_with_their_reason(tmp_path):
    """tiny-random-llava has 4,096 positions: a row whose question alone is longer is skipped
    (warned, in skipped.jsonl and the summary with its reason); the others in its batch run."""
    from datasets import Dataset

    from tests.test_data_lmms import _docvqa

    ds = _docvqa(3)
    rows = ds.to_dict()
    rows["question"][1] = "date " * 5000
    (tmp_path / "DocVQA").mkdir()
    Dataset.from_dict(rows, features=ds.features).to_parquet(
        str(tmp_path / "DocVQA" / "validation-00000-of-00001.parquet"))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="exceeds the model's context of 4096 positions"):
        summary = avl_lab.evaluation.evaluate(["model=tiny-random-llava", "data=docvqa",
                                               f"data.path={tmp_path}", "batch_size=3",
                                               "generation.max_new_tokens=2", "progress=false",
                                               f"out_dir={out}"])
    assert summary.n == 2 and summary.skipped == 1
    (reason,) = summary.skipped_reasons
    assert "exceeds the model's context of 4096 positions" in reason
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [r["id"] for r in skipped] == [rows["questionId"][1]]
    assert json.loads((out / "summary.json").read_text())["skipped_reasons"] == {reason: 1}


class _FixedAnswers:
    """A processor whose decoded answers are fixed strings (everything else delegated)."""

    def __init__(self, processor, answers):
        self._processor, self._answers = processor, answers

    def __call__(self, *args, **kwargs):
        return self._processor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def batch_decode(self, ids, **kwargs):
        return [self._answers.pop(0) for _ in range(len(ids))]


def test_ocrbench_hme100k_rule_applies_through_evaluate(tmp_path, monkeypatch):
    """The row's meta reaches the scorer: records, summary and the progress-bar metric all
    compare HME100k answers case-sensitively (lower-cased, "X^{2}" would match "x^{2}")."""
    from datasets import Dataset, Features, Image, List, Value

    from avl_lab.evaluation import module as module_mod
    from avl_lab.evaluation import runner
    from tests.test_data_lmms import _img

    S = Value("string")
    feats = Features({"dataset": S, "question": S, "question_type": S, "answer": List(S),
                      "image": Image()})
    rows = {"dataset": ["IIIT5K", "HME100k"], "question": ["what is written?"] * 2,
            "question_type": ["Regular Text Recognition", "Handwritten Mathematical Expression"],
            "answer": [["word"], ["x^{2}"]], "image": [_img(0), _img(1)]}
    (tmp_path / "data").mkdir()
    Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    model, processor = runner._load_model(load_config(["model=tiny-random-llava"]))
    fixed = _FixedAnswers(processor, ["WORD", "X^{2}"])
    monkeypatch.setattr(runner, "_load_model", lambda cfg: (model, fixed))
    shown = []

    class Keep(module_mod.EvalModule):
        def log(self, name, value, *args, **kwargs):  # what the progress bar shows
            shown.append(float(value.compute()))
            return super().log(name, value, *args, **kwargs)

    monkeypatch.setattr(runner, "EvalModule", Keep)
    summary = avl_lab.evaluation.evaluate(["model=tiny-random-llava", "data=ocrbench", f"data.path={tmp_path}",
                                "generation.max_new_tokens=2", "progress=false", "batch_size=2",
                                f"out_dir={tmp_path / 'out'}"])
    scores = {r["prediction"]: r["score"] for r in _lines(tmp_path / "out")}
    assert scores == {"WORD": 1.0, "X^{2}": 0.0}
    assert summary.score == pytest.approx(0.5)
    assert shown == [pytest.approx(0.5)]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["model=/nonexistent/llava-checkpoint"], "/nonexistent/llava-checkpoint"),
        (["data=docvqa"], "DocVQA"),
        (["data.limt=3"], "data.limt"),
        (["policy=avl", "policy.S=10", "policy.C=20"], "`C`"),
    ],
)
def test_missing_or_bad_input_is_one_clear_line(args, needle, tmp_path):
    res = _cli([*BASE, *args, f"out_dir={tmp_path}"], timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    error_lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and needle in error_lines[0]


def test_help_lists_the_fields_with_their_docs():
    res = _cli(["--help"], timeout=60)
    assert res.returncode == 0
    assert "data.limit" in res.stdout and "Evaluate only the first N rows" in res.stdout
