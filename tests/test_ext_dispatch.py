"""core_attention's input checks, impl switch and build-failure fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter

import pytest
import torch

from avl_lab.ext import ExtensionBuildError, build, core_attention, core_attention_ref, op

needs_cpu_op = pytest.mark.skipif(
    build.toolchain_problem("cpu") is not None, reason="no toolchain for the CPU op"
)


def inputs(B=2, Hq=4, Hkv=2, N=10, D=16, n=4, dtype=torch.float32):
    q = torch.randn(B, Hq, 1, D, dtype=dtype)
    k = torch.randn(B, Hkv, N, D, dtype=dtype)
    v = torch.randn(B, Hkv, N, D, dtype=dtype)
    a = torch.stack([torch.randperm(N)[:n] for _ in range(B)])
    return q, k, v, a


BAD = [
    ("q", lambda q, k, v, a: (q[:, :, 0], k, v, a)),
    ("q", lambda q, k, v, a: (q.expand(-1, -1, 2, -1), k, v, a)),
    ("q", lambda q, k, v, a: (q.double(), k.double(), v.double(), a)),
    ("k", lambda q, k, v, a: (q, k.half(), v, a)),
    ("k", lambda q, k, v, a: (q, k[..., :8], v, a)),
    ("k", lambda q, k, v, a: (q, k[:1], v, a)),
    ("v", lambda q, k, v, a: (q, k, v[:, :, :5], a)),
    ("v", lambda q, k, v, a: (q, k, v.bfloat16(), a)),
    ("q", lambda q, k, v, a: (q[:, :3], k, v, a)),  # 3 heads over 2 kv heads
    ("active", lambda q, k, v, a: (q, k, v, a.int())),
    ("active", lambda q, k, v, a: (q, k, v, a[0])),
    ("active", lambda q, k, v, a: (q, k, v, a[:1])),
    ("active", lambda q, k, v, a: (q, k, v, a + 10)),  # index N
    ("active", lambda q, k, v, a: (q, k, v, a - 20)),  # below -1
    ("active", lambda q, k, v, a: (q, k, v, a[:, None].expand(-1, 3, -1))),  # 3 != Hkv heads
    ("active", lambda q, k, v, a: (q, k, v, a[:, None, None])),  # 4-D
    ("active", lambda q, k, v, a: (q, k, v, heads(a).int())),
    ("active", lambda q, k, v, a: (q, k, v, heads(a) + 10)),  # per-head index N
]


def heads(a: torch.Tensor, Hkv: int = 2) -> torch.Tensor:
    """Per-head rows ``[B, Hkv, n]``: head h gets the rows of ``a`` shifted by h (mod N=10)."""
    return torch.stack([(a + h) % 10 for h in range(Hkv)], dim=1)


@pytest.mark.parametrize("impl", ["ref", "cpu", "auto"])
@pytest.mark.parametrize("name,mutate", BAD, ids=[f"{n}{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_inputs_raise_value_error_naming_the_argument(name, mutate, impl):
    args = mutate(*inputs())
    with pytest.raises(ValueError, match=f"`{name}`"):
        core_attention(*args, impl=impl)


def test_bad_scale_and_impl():
    q, k, v, a = inputs()
    with pytest.raises(ValueError, match="`scale`"):
        core_attention(q, k, v, a, float("nan"))
    with pytest.raises(ValueError, match="`impl`"):
        core_attention(q, k, v, a, impl="gpu")
    with pytest.raises(ValueError, match="impl='cuda'"):
        core_attention(q, k, v, a, impl="cuda")  # CPU tensors
    with pytest.raises(ValueError, match="`per_head_probs`"):
        core_attention(q, k, v, a, per_head_probs=1)


@needs_cpu_op
def test_cpp_checks_reject_bad_inputs():
    """The C++ op checks its inputs itself (TORCH_CHECK), not only the Python wrapper."""
    mod = build.load("cpu")
    q, k, v, a = inputs()
    with pytest.raises(RuntimeError, match="active"):
        mod.core_attention(q, k, v, a.int(), 1.0)
    with pytest.raises(RuntimeError, match="outside"):
        mod.core_attention(q, k, v, a + 10, 1.0)
    with pytest.raises(RuntimeError, match="multiple"):
        mod.core_attention(q[:, :3].contiguous(), k, v, a, 1.0)
    with pytest.raises(RuntimeError, match="per-head active"):
        mod.core_attention(q, k, v, a[:, None].expand(-1, 3, -1).contiguous(), 1.0)
    with pytest.raises(RuntimeError, match="active"):
        mod.core_attention(q, k, v, a[:, None, None].contiguous(), 1.0)
    with pytest.raises(RuntimeError, match="outside"):
        mod.core_attention(q, k, v, heads(a) - 11, 1.0, True)
    wide = torch.ones(q.shape[0], k.shape[2] + 1, dtype=torch.bool)  # a mask names rows 0..n-1
    with pytest.raises(RuntimeError, match="mask of"):
        mod.core_attention(q, k, v, wide, 1.0)


@pytest.fixture
def broken_build(monkeypatch):
    """Make every build fail, restoring the loaded modules afterwards."""
    saved = (dict(build._modules), dict(build._errors), set(build._warned))
    build.reset()

    def fail(kind):
        raise RuntimeError(f"simulated {kind} compiler failure")

    monkeypatch.setattr(build, "_build", fail)
    monkeypatch.delenv("AVL_LAB_NO_EXT", raising=False)
    yield
    build.reset()
    build._modules.update(saved[0])
    build._errors.update(saved[1])
    build._warned.update(saved[2])


def test_failed_build_warns_once_and_falls_back(broken_build):
    q, k, v, a = inputs()
    with pytest.warns(RuntimeWarning, match="simulated cpu compiler failure"):
        out, probs = core_attention(q, k, v, a)
    ref_out, ref_probs = core_attention_ref(q, k, v, a)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(probs, ref_probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core_attention(q, k, v, a)  # no second warning
    with pytest.raises(ExtensionBuildError, match="simulated cpu compiler failure"):
        core_attention(q, k, v, a, impl="cpu")
    out, probs = core_attention(q, k, v, heads(a))  # per-head rows fall back too
    ref_out, ref_probs = core_attention_ref(q, k, v, heads(a))
    assert probs.shape == (2, 2, 4)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(probs, ref_probs)


@needs_cpu_op
def test_build_is_cached_per_process():
    assert build.load("cpu") is build.load("cpu")


@pytest.mark.slow
@pytest.mark.skipif(
    build.toolchain_problem("nvcc") is not None, reason=f"{build.toolchain_problem('nvcc')}"
)
def test_cuda_source_compiles_with_nvcc():
    """The CUDA op compiles (host, device and ptxas for sm_90) without a GPU; cached by source
    hash, so only a changed source takes the ~2 min compile again."""
    obj = build.nvcc_compile(arch="90")
    assert obj.exists() and obj.stat().st_size > 0


# --- impl="auto" on CUDA never falls back silently -------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch):
    """The op's one-time warnings as if none had been given yet in this process."""
    monkeypatch.setattr(op, "_warned", set())


@pytest.fixture
def simulated_cuda(monkeypatch, fresh_warnings):
    """Dispatch believes CPU tensors are CUDA tensors (no CUDA op is ever loaded for them)."""
    monkeypatch.setattr(op, "_device_type", lambda t: "cuda")


@pytest.mark.parametrize("D", [80, 96, 16])
def test_auto_warns_once_naming_a_head_dim_the_kernel_lacks(simulated_cuda, D):
    q, k, v, a = inputs(D=D)
    with pytest.warns(RuntimeWarning, match=f"head dim {D}.*runs core_attention_ref"):
        out, probs = op.dispatch(q, k, v, a, D**-0.5, False)
    ref_out, ref_probs = core_attention_ref(q, k, v, a, D**-0.5)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(probs, ref_probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op.dispatch(q, k, v, a, D**-0.5, False)  # once per head dim
    with pytest.raises(ValueError, match=f"impl='cuda'.*head dim {D}"):
        op.dispatch(q, k, v, a, D**-0.5, False, impl="cuda")


def test_cuda_refuses_grids_beyond_the_limit_with_one_message(simulated_cuda):
    """Hkv x query-head tiles > 65535 is refused (the batch has no limit: chunked launches)."""
    q, k = torch.zeros(1, 65536, 1, 64), torch.zeros(1, 65536, 1, 64)
    a = torch.zeros(1, 1, dtype=torch.long)
    assert "grid.y" in op.cuda_unsupported(q, k, a)
    assert op.cuda_unsupported(torch.zeros(70000, 2, 1, 64), torch.zeros(70000, 1, 1, 64), a) is None


def test_unaligned_cache_is_copied_with_one_warning_naming_the_cause(fresh_warnings):
    buf = torch.zeros(2 + 2 * 2 * 10 * 64)
    k = buf[1:-1].view(2, 2, 10, 64)  # storage offset 1: not a multiple of D/32 = 2 elements
    with pytest.warns(RuntimeWarning, match=r"strides \(1280, 640, 64, 1\) and storage offset 1"):
        copy = op._aligned(k, 2)
    assert copy.is_contiguous() and copy.data_ptr() != k.data_ptr() and torch.equal(copy, k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op._aligned(k, 2)  # once per process
        assert op._aligned(buf[2:].view(2, 2, 10, 64), 2).data_ptr() == buf[2:].data_ptr()


@pytest.mark.parametrize("impl", ["ref", pytest.param("cpu", marks=needs_cpu_op), "auto"])
def test_want_probs_false_returns_no_probabilities(impl):
    q, k, v, a = inputs(D=64)
    for active, per_head_probs in ((a, False), (a, True), (heads(a), False)):
        out, probs = core_attention(q, k, v, active, impl=impl, per_head_probs=per_head_probs,
                                    want_probs=False)
        assert probs is None
        torch.testing.assert_close(out, core_attention_ref(q, k, v, active)[0])
    with pytest.raises(ValueError, match="`want_probs`"):
        core_attention(q, k, v, a, want_probs=0)


@pytest.mark.parametrize("impl", ["ref", pytest.param("cpu", marks=needs_cpu_op), "auto"])
def test_dispatch_reads_a_mask_as_its_index(impl):
    """``dispatch`` with a bool mask (the engine's decode step) answers as with the index
    ``where(mask, j, -1)``, shared and per head, narrower than the cache too."""
    q, k, v, _ = inputs(D=64)
    gen = torch.Generator().manual_seed(3)
    B, Hkv, N = k.shape[:3]
    for shape in ((B, N), (B, Hkv, N), (B, Hkv, N - 3)):
        mask = torch.rand(shape, generator=gen) < 0.5
        index = torch.where(mask, torch.arange(shape[-1]), -1)
        for per_head_probs in (False, True):
            out, probs = op.dispatch(q, k, v, mask, 0.3, per_head_probs, impl=impl)
            ref_out, ref_probs = core_attention_ref(q, k, v, index, 0.3, per_head_probs)
            torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-4)


def test_ran_counts_which_implementation_ran(monkeypatch):
    monkeypatch.setattr(op, "_ran", Counter())
    q, k, v, a = inputs()
    core_attention(q, k, v, a, impl="ref")
    assert op.ran() == {"ref": 1}


def test_op_log_is_written_at_exit(tmp_path):
    """``AVL_LAB_OP_LOG``: the process's counts, merged into the file (gpu_check.sh reads it)."""
    log = tmp_path / "ops.json"
    code = ("import torch; from avl_lab.ext import core_attention as c; "
            "q = torch.randn(1, 2, 1, 16); k = torch.randn(1, 1, 5, 16); "
            "c(q, k, k, torch.arange(5)[None], impl='ref')")
    env = {**os.environ, "AVL_LAB_OP_LOG": str(log)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert json.loads(log.read_text()) == {"ref": 2}


# --- a failed build names the compiler's errors ----------------------------------------------


@needs_cpu_op
def test_failed_build_reports_the_first_compiler_errors_and_the_log(tmp_path):
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "core_attention_cpu.cpp").write_text(
        "int first() { return undeclared_first; }\nint second() { return undeclared_second; }\n"
    )
    with pytest.raises(ExtensionBuildError) as info:
        build._build("cpu", csrc=src, build_dir=tmp_path / "build")
    msg = str(info.value)
    assert "error:" in msg and "undeclared_first" in msg
    assert not msg.rstrip(")").endswith("subcommand failed.")  # not ninja's last lines
    log = tmp_path / "build" / build.ERROR_LOG
    assert f"full log: {log}" in msg
    assert "undeclared_second" in log.read_text() and "ninja: build stopped" in log.read_text()


def test_first_errors_skips_ninja_noise():
    log = ("[1/2] c++ -c x.cpp\nFAILED: x.o\nx.cpp:1:14: error: 'a' was not declared\n"
           "x.cu(3): error: identifier \"b\" is undefined\n2 errors detected\n"
           "ninja: build stopped: subcommand failed.\n")
    assert build.first_errors(log) == (
        "x.cpp:1:14: error: 'a' was not declared | x.cu(3): error: identifier \"b\" is undefined"
    )
    assert build.first_errors("RuntimeError: boom\nninja: build stopped") == "RuntimeError: boom"


# --- the same dispatch on a GPU ---------------------------------------------------------------

# Marked `cuda` (so that `pytest -m cuda` and gpu_check.sh run them), skipped without a GPU.
on_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@on_cuda
def test_cuda_auto_warns_once_for_a_head_dim_the_kernel_lacks(fresh_warnings):
    q, k, v, a = (t.cuda() for t in inputs(D=16))
    with pytest.warns(RuntimeWarning, match="head dim 16"):
        out, probs = core_attention(q, k, v, a)
    ref_out, ref_probs = core_attention_ref(q, k, v, a)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(probs, ref_probs)
    with pytest.raises(ValueError, match="head dim 16"):
        core_attention(q, k, v, a, impl="cuda")


SHAPE_BAD = [b for i, b in enumerate(BAD) if i not in (12, 13, 17)]  # index values: CPU only


@pytest.mark.cuda
@on_cuda
@pytest.mark.parametrize("name,mutate", SHAPE_BAD, ids=[f"{n}{i}" for i, (n, _) in enumerate(SHAPE_BAD)])
def test_cuda_bad_inputs_raise_value_error_naming_the_argument(name, mutate):
    args = mutate(*(t.cuda() for t in inputs(D=64)))
    with pytest.raises(ValueError, match=f"`{name}`"):
        core_attention(*args)


@pytest.mark.cuda
@on_cuda
def test_cuda_failed_build_warns_once_and_falls_back(broken_build):
    q, k, v, a = (t.cuda() for t in inputs(D=64))
    with pytest.warns(RuntimeWarning, match="simulated cuda compiler failure"):
        out, probs = core_attention(q, k, v, a)
    torch.testing.assert_close(out, core_attention_ref(q, k, v, a)[0])
    with pytest.raises(ExtensionBuildError, match="simulated cuda compiler failure"):
        core_attention(q, k, v, a, impl="cuda")
