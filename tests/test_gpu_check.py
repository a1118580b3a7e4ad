"""``benchmarks/gpu_check.sh --dry-run``: every step of the GPU check runs on the CPU with tiny
sizes and leaves its tables and a JSON summary (the script the GPU machine runs is this one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "build_op", "cuda_tests", "core_attention", "decode_step", "engine_generate",
         "decode_crossover"]
# The CUDA tests the GPU run must reach (issue 33): each collected, and skipped in a dry run.
NEW_CUDA_TESTS = [
    "test_ext_cuda.py::test_cuda_paths_match_reference[tiles_per_split-torch.float32]",
    "test_ext_cuda.py::test_cuda_paths_match_reference[one_split_n_gt_64-torch.float32]",
    "test_ext_cuda.py::test_cuda_paths_match_reference[head_tiles_2-torch.bfloat16]",
    "test_ext_cuda.py::test_cuda_paths_match_reference[head_tiles_4-torch.float32]",
    "test_ext_cuda.py::test_cuda_paths_match_reference[D256_GT4-torch.bfloat16]",
    "test_ext_cuda.py::test_cuda_storage_offset_and_odd_strides",
    "test_ext_cuda.py::test_cuda_runs_on_the_current_stream",
    "test_ext_cuda.py::test_cuda_batch_beyond_the_grid",
    "test_ext_cuda.py::test_engine_decode_through_the_op_equals_masked_reference[cuda-fp32-avl]",
    "test_ext_cuda.py::test_engine_decode_through_the_op_equals_masked_reference[cuda-bf16-h2o]",
    "test_ext_dispatch.py::test_cuda_auto_warns_once_for_a_head_dim_the_kernel_lacks",
    "test_ext_dispatch.py::test_cuda_bad_inputs_raise_value_error_naming_the_argument[q0]",
    "test_ext_dispatch.py::test_cuda_failed_build_warns_once_and_falls_back",
]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_writes_tables_and_summary(tmp_path):
    # The benchmarks time the compiled CPU op (built once and cached; the build is not a GPU step).
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "x")}
    env.pop("AVL_LAB_NO_EXT", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and summary["ok"]
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["exit"] == 0 and "--device cuda" not in s["command"] for s in summary["steps"])
    # Per step: whether the kernel (here the CPU op) ran, not the reference.
    kernel_lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("kernel:")]
    assert len(kernel_lines) == len(STEPS), proc.stdout
    ops = {s["step"]: s["ops"] for s in summary["steps"]}
    assert ops["core_attention"]["cpu"] > 0 and ops["decode_step"]["cpu"] > 0
    assert ops["engine_generate"]["cpu"] > 0 and "fallback" not in ops["engine_generate"]
    assert f"kernel: cpu op ran {ops['engine_generate']['cpu']} calls" in proc.stdout
    assert ops["cuda_tests"] == {} and "kernel: not called" in proc.stdout  # all skipped
    # The CUDA tests: collected (by -m cuda) and skipped, each with its reason.
    listing = (tmp_path / "cuda_tests.md").read_text()
    for test in NEW_CUDA_TESTS:
        assert f"tests/{test} SKIPPED (needs a CUDA device)" in listing, test
    assert " passed" not in listing.splitlines()[-1] and " skipped" in listing.splitlines()[-1]
    (table,) = summary["engine_generate"]["tables"]
    assert set(table["rows"]) == {"stock", "full", "avl", "avl P T", "fastv", "h2o"}
    assert table["rows"]["full"]["prefill_x"] > 0 and table["rows"]["avl"]["stored"] < 1
    report = (tmp_path / "gpu_check.md").read_text()
    for step in STEPS:
        assert f"## {step}" in report
    assert "| variant | prefill ms" in report and "| B | full (SDPA) ms" in report
    assert "| rows | variant | step ms" in report and (tmp_path / "decode_crossover.png").exists()
    crossover = json.loads((tmp_path / "decode_crossover.json").read_text())
    assert {r["variant"] for r in crossover} == {"stock", "full", "avl", "h2o", "snapkv"}
    assert all(r["used"] < 1 for r in crossover if r["variant"] == "avl")
    assert not (tmp_path / "x").exists()  # an explicit directory wins over $OUT


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_uses_the_projects_virtual_environment(tmp_path):
    """Without PYTHON the steps run the checkout's ``.venv`` interpreter (where ``make install``
    puts torch), else ``python`` from PATH; PYTHON wins over both."""
    script = ROOT / "benchmarks" / "gpu_check.sh"
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}

    def which(**extra) -> str:
        return subprocess.run(["bash", str(script), "--which-python", str(tmp_path)],
                              env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.strip()

    venv = ROOT / ".venv" / "bin" / "python"
    assert which() == (str(venv) if venv.exists() else "python")
    assert which(PYTHON="/opt/py/bin/python3") == "/opt/py/bin/python3"


def test_crossover_targets_are_judged_as_the_issue_says():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_crossover import targets

    def row(R, variant, x_full, floor=0.5, model=0.6, ms=100.0, p10=95.0, p90=105.0):
        return dict(rows=R, variant=variant, x_full=x_full, floor_x_full=floor,
                    model_x_full=model, ms=ms, p10=p10, p90=p90)

    lines = targets([row(1024, "full", 1.0, floor=0.9), row(1024, "avl", 1.04, floor=0.9),
                     row(8192, "full", 1.0, p10=90.0, p90=110.0), row(8192, "avl", 0.64),
                     row(16384, "full", 1.0), row(16384, "avl", 0.70)])
    assert "noise ±0.05: not slower than full met" in lines[0] and "model" not in lines[0]
    assert "≤ model 0.60 + 0.05 met" in lines[1] and "attention 0.50" in lines[1]
    assert "+ 0.05 **missed**" in lines[2]
    assert "**missed**" in targets([row(1, "full", 1.0), row(1, "avl", 1.06)])[0]


def test_crossover_targets_judge_process_cpu_time_where_measured():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decode_crossover import targets

    def row(variant, x_full, cpu_x_full, floor=0.5, cpu_floor=0.5):
        return dict(rows=32768, variant=variant, x_full=x_full, floor_x_full=floor,
                    model_x_full=0.63, ms=100.0, p10=95.0, p90=105.0, cpu_ms=150.0,
                    cpu_p10=120.0, cpu_p90=180.0, cpu_x_full=cpu_x_full,
                    cpu_floor_x_full=cpu_floor)

    # wall 0.76 misses 0.63 + 0.05; CPU 0.66 meets it: judged on CPU time, wall shown beside
    (line,) = targets([row("full", 1.0, 1.0), row("avl", 0.76, 0.66)])
    assert line.startswith("- 32,768 rows (CPU time): avl ×full 0.66 (wall 0.76)")
    assert "≤ model 0.63 + 0.05 met" in line
    (line,) = targets([row("full", 1.0, 1.0), row("avl", 0.66, 0.76)])
    assert "≤ model 0.63 + 0.05 **missed**" in line
    # the noise is CPU time's own spread (±0.20 here), the attention share its floor's (0.2
    # here, so no model check; on wall time it would be 0.5)
    (line,) = targets([row("full", 1.0, 1.0, cpu_floor=0.8), row("avl", 1.30, 1.15)])
    assert "noise ±0.20: not slower than full met" in line and "model" not in line
