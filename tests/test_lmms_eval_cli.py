"""lmms-eval's own command line with the ``avl_lab`` model (entry point) on ``avl-tiny``, against
``avl_lab.evaluation.evaluate`` on the same rows and policy: scores, predictions and per-sample
stored / used equal, and their means in lmms-eval's results file.

lmms-eval's CLI exits 0 even when the evaluation raised, so everything is read from the files
it wrote. lmms-eval comes with ``make test`` (the ``lmms`` extra); without it this module fails
with the install command, never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import lmms_eval  # noqa: F401
except ImportError as err:  # a failure, not a skip: `make test` installs it
    raise ImportError("lmms-eval is not installed: pip install -e '.[dev,lmms]' "
                      "(or `make install`)") from err

from avl_lab.evaluation import evaluate
from avl_lab.harness import TASKS_DIR

ROOT = Path(__file__).resolve().parent.parent
#: The paper's A-VL setting (P and T included, so every part of the policy runs).
POLICY = {"S": 45, "C": 30, "K": 3, "P": 90, "T": 50}
LIMIT, BATCH = 6, 3
TASKS = {"avl_synth_docvqa": ("synth-docvqa", "anls"), "avl_synth_ocr": ("synth-ocr", "ocrbench")}


def _lmms_eval(out: Path, tmp: Path) -> subprocess.CompletedProcess:
    args = ",".join(["pretrained=avl-tiny", "policy=avl", *(f"{k}={v}" for k, v in POLICY.items())])
    cmd = [str(Path(sys.executable).parent / "lmms-eval"), "--model", "avl_lab",
           "--model_args", args, "--tasks", ",".join(TASKS), "--include_path", str(TASKS_DIR),
           "--limit", str(LIMIT), "--batch_size", str(BATCH), "--device", "cpu",
           "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def lmms_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("lmms")
    res = _lmms_eval(tmp / "out", tmp)
    log = (res.stdout + res.stderr)[-4000:]
    found = sorted((tmp / "out").rglob("*_results.json"))
    assert res.returncode == 0 and found, f"lmms-eval wrote no results file:\n{log}"
    results = json.loads(found[-1].read_text())
    samples = {}
    for task in TASKS:
        files = sorted((tmp / "out").rglob(f"*_samples_{task}.jsonl"))
        assert files, f"no sample log for {task}:\n{log}"
        samples[task] = [json.loads(line) for line in files[-1].read_text().splitlines()]
    return {"results": results, "samples": samples, "log": log}


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict:
    runs = {}
    for task, (name, _) in TASKS.items():
        out = tmp_path_factory.mktemp(task)
        summary = evaluate(["model=avl-tiny", f"data={name}", f"data.limit={LIMIT}",
                            f"batch_size={BATCH}", "policy=avl", "progress=false",
                            *(f"policy.{k}={v}" for k, v in POLICY.items()), f"out_dir={out}"])
        records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        runs[task] = {"summary": summary, "records": {r["id"]: r for r in records}}
    return runs


@pytest.mark.parametrize("task", list(TASKS))
def test_scores_equal_evaluate(lmms_run, ours, task):
    metric = TASKS[task][1]
    got = lmms_run["results"]["results"][task]
    summary = ours[task]["summary"]
    assert summary.n == LIMIT
    assert got[f"{metric},none"] == pytest.approx(summary.score, abs=1e-12)
    assert got["stored,none"] == pytest.approx(summary.stored, abs=1e-12)
    assert got["used,none"] == pytest.approx(summary.used, abs=1e-12)
    assert 0.0 < got["used,none"] < got["stored,none"] < 1.0  # the policy saved something


@pytest.mark.parametrize("task", list(TASKS))
def test_samples_equal_evaluate(lmms_run, ours, task):
    """Per sample: prediction, score, stored and used as ``samples.jsonl`` has them."""
    from avl_lab.harness.export import rows

    metric = TASKS[task][1]
    ids = rows(task)["id"]
    logged = lmms_run["samples"][task]
    assert sorted(s["doc_id"] for s in logged) == list(range(LIMIT))
    for s in logged:
        ref = ours[task]["records"][ids[s["doc_id"]]]
        assert s["filtered_resps"] in (ref["prediction"], [ref["prediction"]])
        assert s[metric] == pytest.approx(ref["score"], abs=1e-12)
        assert s["stored"] == pytest.approx(ref["stored"], abs=1e-12)
        assert s["used"] == pytest.approx(ref["used"], abs=1e-12)
        counts = s["token_counts"][0]  # every task's log carries them, not only ours
        assert (counts["stored"], counts["used"]) == (s["stored"], s["used"])
        assert counts["output_tokens"] == ref["new_tokens"]
        assert s["input"] == ref["prompt"]


def test_run_means_in_throughput(lmms_run, ours):
    """The means over the whole run (every task) in the results' throughput block."""
    thr = lmms_run["results"]["throughput"]
    records = [r for run in ours.values() for r in run["records"].values()]
    assert thr["avg_avl_stored"] == pytest.approx(
        sum(r["stored"] for r in records) / len(records), abs=1e-12)
    assert thr["avg_avl_used"] == pytest.approx(
        sum(r["used"] for r in records) / len(records), abs=1e-12)
    for task in TASKS:
        assert thr[f"avg_avl_used_{task}"] == pytest.approx(ours[task]["summary"].used, abs=1e-12)
