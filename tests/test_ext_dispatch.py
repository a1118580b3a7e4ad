"""core_attention's input checks, impl switch and build-failure fallback."""

from __future__ import annotations

import warnings

import pytest
import torch

from avl_lab.ext import ExtensionBuildError, build, core_attention, core_attention_ref

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
