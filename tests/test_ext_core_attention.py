"""The compiled core_attention ops against their specification, ``core_attention_ref``.

CPU cases always run (the first one builds the C++ op, ~40 s once per machine; later runs
load it from the torch extensions cache). CUDA cases run when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

from avl_lab.ext import build, core_attention, core_attention_ref
from avl_lab.ext.build import toolchain_problem
from avl_lab.ext.op import CUDA_HEAD_DIMS

CPU = pytest.param(
    "cpu",
    marks=pytest.mark.skipif(
        toolchain_problem("cpu") is not None, reason=f"CPU op: {toolchain_problem('cpu')}"
    ),
)
CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
)
DEVICES = [CPU, CUDA]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-4},
    torch.bfloat16: {"atol": 1e-2, "rtol": 1.6e-2},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
}

# (B, Hq, Hkv, N, D, active): active is "rand:<n>" (random distinct rows, sorted),
# "pad:<n>" (random, later batch rows shorter and -1 padded), "full", "empty" (n = 0),
# "none:<n>" (all padding), "mixed:<n>" (batch row 0 all padding), "dup:<n>" (repeats).
SHAPES = [
    (1, 32, 32, 640, 128, "rand:237"),  # LLaVA-1.5-like
    (1, 32, 32, 2900, 128, "pad:884"),  # LLaVA-1.6-like
    (2, 8, 8, 300, 64, "rand:100"),
    (3, 8, 2, 300, 128, "pad:120"),  # GQA 4
    (2, 32, 8, 257, 128, "rand:77"),  # GQA 4, Llama-3 heads
    (4, 12, 4, 50, 64, "pad:31"),  # GQA 3
    (1, 8, 1, 3000, 64, "rand:2999"),  # MQA, one row left out
    (2, 16, 2, 3000, 128, "full"),
    (8, 4, 4, 64, 64, "pad:40"),
    (8, 4, 2, 1, 128, "full"),  # a single row
    (2, 4, 4, 7, 64, "empty"),
    (3, 4, 2, 9, 128, "none:5"),
    (3, 4, 4, 20, 64, "mixed:6"),
    (2, 4, 2, 16, 64, "dup:12"),
    (2, 8, 4, 100, 256, "pad:60"),
    (2, 6, 3, 33, 20, "pad:10"),  # head dim not a multiple of 8: scalar path (CPU only)
]


def make_active(spec: str, B: int, N: int, gen: torch.Generator) -> torch.Tensor:
    kind, _, num = spec.partition(":")
    n = int(num) if num else 0
    if kind == "full":
        return torch.arange(N).expand(B, N).contiguous()
    if kind == "empty":
        return torch.empty(B, 0, dtype=torch.long)
    if kind == "none":
        return torch.full((B, n), -1, dtype=torch.long)
    if kind == "dup":
        return torch.randint(0, N, (B, n), generator=gen)
    rows = torch.stack([torch.randperm(N, generator=gen)[:n].sort().values for _ in range(B)])
    if kind == "pad":
        for b in range(1, B):
            rows[b, n - (b * n) // (2 * B) :] = -1  # shorter rows later in the batch
    if kind == "mixed":
        rows[0] = -1
    return rows


def make_case(B, Hq, Hkv, N, D, spec, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, 1, D, generator=gen)
    k = torch.randn(B, Hkv, N, D, generator=gen)
    v = torch.randn(B, Hkv, N, D, generator=gen)
    a = make_active(spec, B, N, gen)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), a.to(device)


def assert_matches_ref(q, k, v, a, impl, scale=None, per_head_probs=False):
    out, probs = core_attention(q, k, v, a, scale, impl=impl, per_head_probs=per_head_probs)
    ref_out, ref_probs = core_attention_ref(q, k, v, a, scale, per_head_probs=per_head_probs)
    assert out.shape == ref_out.shape and out.dtype == q.dtype and out.device == q.device
    assert probs.shape == ref_probs.shape and probs.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, **TOL[q.dtype])
    torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-4)
    return out, probs


def token_major(t: torch.Tensor) -> torch.Tensor:
    """The same values stored ``[B, N, H, D]``, viewed as ``[B, H, N, D]``."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["head", "token"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_op_matches_reference(shape, dtype, layout, device):
    q, k, v, a = make_case(*shape, dtype, device)
    if layout == "token":
        k, v = token_major(k), token_major(v)
    if device == "cuda" and shape[4] not in CUDA_HEAD_DIMS:
        with pytest.raises(ValueError, match="head dims"):
            core_attention(q, k, v, a, impl="cuda")
        assert_matches_ref(q, k, v, a, impl="auto")  # auto falls back to the reference
        return
    assert_matches_ref(q, k, v, a, impl=device)
    _, probs = assert_matches_ref(q, k, v, a, impl=device, per_head_probs=True)
    assert probs.shape == (shape[0], shape[2], a.shape[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_treats_out_of_range_indices_as_padding():
    """The CUDA op does not validate index values (a host sync per call); it skips them."""
    q, k, v, a = make_case(2, 8, 4, 100, 128, "rand:30", torch.float32, "cuda")
    bad = a.clone()
    bad[:, 5] = 100  # == N
    out, probs = core_attention(q, k, v, bad, impl="cuda")
    a[:, 5] = -1
    ref_out, ref_probs = core_attention_ref(q, k, v, a)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
    torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_padding_semantics(device):
    q, k, v, a = make_case(3, 8, 4, 40, 64, "mixed:6", torch.float32, device)
    out, probs = assert_matches_ref(q, k, v, a, impl=device)
    assert torch.all(out[0] == 0) and torch.all(probs[0] == 0)  # no active rows -> zeros
    assert torch.allclose(probs[1:].sum(1), torch.ones(2, device=device))
    a[2, 3:] = -1
    _, probs = assert_matches_ref(q, k, v, a, impl=device)
    assert torch.all(probs[2, 3:] == 0)  # padding gets no probability


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_caches(dtype, device):
    """Slices of a larger buffer and token-major [B, N, H, D] views are read in place."""
    B, Hq, Hkv, N, D = 2, 8, 4, 300, 128
    q, k, v, a = make_case(B, Hq, Hkv, 2 * N, D, "pad:90", dtype, device)
    a = a.clamp(max=N - 1)  # indices into the first N rows (duplicates are fine)
    assert_matches_ref(q, k[:, :, :N], v[:, :, :N], a, impl=device)
    kt, vt = token_major(k)[:, :, :N], token_major(v)[:, :, :N]  # token-major, sliced
    assert not kt.is_contiguous()
    assert_matches_ref(q, kt, vt, a, impl=device)


@pytest.mark.parametrize("device", DEVICES)
def test_scale_and_auto(device):
    q, k, v, a = make_case(2, 8, 2, 100, 64, "pad:30", torch.float32, device)
    assert_matches_ref(q, k, v, a, impl=device, scale=0.3)
    assert_matches_ref(q, k, v, a, impl="auto")  # auto picks the op of q's device
    assert_matches_ref(q, k, v, a, impl="ref")


@pytest.mark.skipif(toolchain_problem("cpu") is not None, reason="no toolchain for the CPU op")
def test_noncontiguous_query_and_index():
    q, k, v, a = make_case(2, 8, 2, 100, 64, "rand:40", torch.float32, "cpu")
    q2 = torch.randn(2, 1, 8, 64).transpose(1, 2)  # [B, Hq, 1, D] as HF hands it over
    a2 = torch.cat([a, a], dim=1)[:, ::2]
    assert not a2.is_contiguous()
    assert_matches_ref(q2, k, v, a2, impl="cpu")


# --- per-head rows: active [B, Hkv, n] -------------------------------------------------------

# (B, Hkv, G, N, D, active): "heads:<n>" (every head its own sorted random rows, a different
# count per head, -1 padded at the end; the last head of the last batch row has none),
# "holes:<n>" (unsorted, -1 anywhere, repeats), "empty" (n = 0), "same:<n>" (one row set
# for all heads), "wide:<n>" (the engine's decode index over n slots: entry j is j or -1, about
# a third active, shared by the heads but for the first and last 8 slots, which each head holds
# or not on its own, as TextH2O's per-head text rows beside shared image rows: the op reads the
# union of the heads' slots, masking each head's others; the last head of the last batch row
# holds none), "scattered:<n>" (as wide, but every
# head drops or adds 5% of all slots: too many for the union, read head by head).
HEAD_SHAPES = [
    (1, 1, 1, 50, 64, "heads:20"),
    (1, 2, 4, 300, 128, "heads:90"),
    (3, 2, 1, 100, 64, "heads:40"),
    (3, 4, 7, 200, 128, "heads:64"),
    (1, 4, 4, 3000, 128, "heads:900"),  # long enough for several row splits
    (3, 4, 1, 64, 64, "holes:30"),
    (1, 2, 7, 80, 128, "holes:50"),
    (3, 1, 4, 33, 128, "heads:9"),
    (1, 32, 1, 640, 128, "heads:237"),  # LLaVA-1.5-like
    (3, 2, 4, 20, 64, "empty"),
    (3, 4, 1, 40, 128, "same:12"),
    (2, 8, 1, 700, 128, "wide:700"),  # row splits
    (1, 4, 7, 2100, 128, "wide:2100"),  # GQA
    (2, 8, 1, 700, 128, "scattered:700"),
    (1, 4, 7, 2100, 128, "scattered:2100"),
]


def make_head_active(spec: str, B: int, Hkv: int, N: int, gen: torch.Generator) -> torch.Tensor:
    kind, _, num = spec.partition(":")
    n = int(num) if num else 0
    if kind == "empty":
        return torch.empty(B, Hkv, 0, dtype=torch.long)
    if kind == "same":
        rows = torch.randperm(N, generator=gen)[:n].sort().values
        return rows.expand(B, Hkv, n).contiguous()
    if kind in ("wide", "scattered"):
        act = (torch.rand(B, 1, n, generator=gen) < 0.35).expand(B, Hkv, n).clone()
        if kind == "wide":
            own = torch.zeros(n, dtype=torch.bool)
            own[:8], own[-8:] = True, True
            act = torch.where(own, torch.rand(B, Hkv, n, generator=gen) < 0.5, act)
            act[-1, -1] = False  # a head holding none of the union's slots
        else:
            act ^= torch.rand(B, Hkv, n, generator=gen) < 0.05  # each head's own 5% of slots
        return torch.where(act, torch.arange(n), -1)
    if kind == "holes":
        a = torch.randint(0, N, (B, Hkv, n), generator=gen)
        return a.masked_fill(torch.rand(B, Hkv, n, generator=gen) < 0.3, -1)
    a = torch.full((B, Hkv, n), -1, dtype=torch.long)
    for b in range(B):
        for h in range(Hkv):
            count = n - ((b * Hkv + h) * n) // (2 * B * Hkv)  # fewer rows for later heads
            if (b, h) == (B - 1, Hkv - 1) and B * Hkv > 1:
                count = 0  # a head without active rows
            a[b, h, :count] = torch.randperm(N, generator=gen)[:count].sort().values
    return a


def make_head_case(B, Hkv, G, N, D, spec, dtype, device, layout="head", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hkv * G, 1, D, generator=gen)
    k = torch.randn(B, Hkv, N, D, generator=gen)
    v = torch.randn(B, Hkv, N, D, generator=gen)
    a = make_head_active(spec, B, Hkv, N, gen)
    q, k, v, a = q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), a.to(device)
    if layout == "token":
        k, v = token_major(k), token_major(v)
    return q, k, v, a


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["head", "token"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", HEAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_per_head_op_matches_reference(shape, dtype, layout, device):
    B, Hkv, G, _, _, _ = shape
    q, k, v, a = make_head_case(*shape, dtype, device, layout)
    for per_head_probs in (False, True):  # per-head rows always give per-head probs
        out, probs = assert_matches_ref(q, k, v, a, impl=device, per_head_probs=per_head_probs)
        assert probs.shape == (B, Hkv, a.shape[2])
    assert torch.all(probs[a < 0] == 0)  # padding gets no probability
    heads = probs.sum(-1)  # [B, Hkv]: 1 for a head with active rows, else 0
    torch.testing.assert_close(heads, (a >= 0).any(-1).float(), atol=1e-5, rtol=0)
    if device == "cpu" and shape[5].startswith(("wide", "scattered")):  # the same as a mask
        mask = build.load("cpu").core_attention(q, k, v, a >= 0, q.shape[3] ** -0.5, True)
        torch.testing.assert_close(mask[0], out, atol=0, rtol=0)
        torch.testing.assert_close(mask[1], probs, atol=0, rtol=0)
    if B * Hkv > 1 and shape[5].startswith(("heads", "wide")):  # the last head has no rows
        assert torch.all(out[-1, (Hkv - 1) * G :] == 0)


def test_per_head_reference_is_shared_reference_per_head():
    """The specification's per-head mode equals the shared mode run head by head: kv head h
    with its G query heads h * G .. h * G + G - 1 (GQA) and its own rows."""
    B, Hkv, G, N, D = 3, 4, 7, 60, 64
    q, k, v, a = make_head_case(B, Hkv, G, N, D, "heads:25", torch.float32, "cpu")
    out, probs = core_attention_ref(q, k, v, a, scale=0.2)
    for h in range(Hkv):
        qs = slice(h * G, (h + 1) * G)
        o_h, p_h = core_attention_ref(
            q[:, qs], k[:, h : h + 1], v[:, h : h + 1], a[:, h], scale=0.2
        )
        torch.testing.assert_close(out[:, qs], o_h, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(probs[:, h], p_h, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("impl", ["ref", CPU, CUDA])
@pytest.mark.parametrize("layout", ["head", "token"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_broadcast_per_head_rows_give_exactly_the_shared_result(dtype, layout, impl):
    device = "cpu" if impl == "ref" else impl
    for B, Hq, Hkv, N, D, spec in [
        (1, 32, 32, 640, 128, "rand:237"),
        (3, 8, 2, 300, 128, "pad:120"),
        (2, 28, 4, 257, 64, "rand:77"),
    ]:
        q, k, v, a = make_case(B, Hq, Hkv, N, D, spec, dtype, device)
        if layout == "token":
            k, v = token_major(k), token_major(v)
        out, probs = core_attention(q, k, v, a, impl=impl, per_head_probs=True)
        a_heads = a[:, None, :].expand(B, Hkv, a.shape[1]).contiguous()
        out_h, probs_h = core_attention(q, k, v, a_heads, impl=impl)
        assert torch.equal(out_h, out) and torch.equal(probs_h, probs)
        # Averaging the per-head probabilities over kv heads gives the all-heads average.
        _, mean_probs = core_attention(q, k, v, a, impl=impl)
        torch.testing.assert_close(probs.mean(1), mean_probs, atol=1e-6, rtol=1e-5)


# --- the CPU op's kernels: GQA groups, head dims, tails, the engine's wide index -------------

# (B, Hq, Hkv, N, D, n): GQA groups 1, 2, 7, 8 and 9 (more than one 8-head chunk), head dims
# 64, 80 and 128, row counts that leave partial batches and blocks (tails), and long cases run
# in parallel (split by kv heads, or by rows when the units are fewer than the threads).
KERNEL_SHAPES = [
    (1, 4, 4, 70, 64, "rand:37"),
    (2, 8, 4, 90, 80, "rand:45"),  # group 2, D = 80
    (1, 28, 4, 200, 128, "rand:61"),  # Qwen2.5-VL-like group 7
    (2, 16, 2, 120, 64, "rand:99"),  # group 8
    (1, 18, 2, 60, 128, "rand:23"),  # group 9: chunks 8 + 1
    (1, 14, 2, 3000, 80, "rand:1301"),  # group 7, D = 80, a unit per kv head
    (1, 8, 1, 3000, 64, "rand:2000"),  # MQA, one unit: rows split over the threads
]


def wide_index(B: int, N: int, gen: torch.Generator, heads: int | None = None) -> torch.Tensor:
    """The engine's decode index: as wide as the layer, row r where row r is active, -1
    elsewhere (``[B, N]``, or ``[B, heads, N]`` with its own rows per head)."""
    shape = (B, N) if heads is None else (B, heads, N)
    return torch.where(torch.rand(shape, generator=gen) < 0.4, torch.arange(N), -1)


@pytest.mark.skipif(toolchain_problem("cpu") is not None, reason="no toolchain for the CPU op")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["head", "token"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_kernels_match_reference(shape, dtype, layout, threads):
    B, Hq, Hkv, N, D, _ = shape
    q, k, v, a = make_case(*shape, dtype, "cpu")
    if layout == "token":
        k, v = token_major(k), token_major(v)
    gen = torch.Generator().manual_seed(1)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for active in (a, wide_index(B, N, gen), wide_index(B, N, gen, heads=Hkv)):
            for per_head_probs in (False, True):
                _, probs = assert_matches_ref(q, k, v, active, "cpu", per_head_probs=per_head_probs)
                if active.dim() == probs.dim():  # aligned with the index: 0 at -1 entries
                    assert torch.all(probs[active < 0] == 0)
                if active.shape[-1] == N:  # the same rows as a mask (the engine's decode step)
                    mask = build.load("cpu").core_attention(
                        q, k, v, active >= 0, D**-0.5, per_head_probs)
                    ref = core_attention_ref(q, k, v, active, D**-0.5, per_head_probs)
                    torch.testing.assert_close(mask[0], ref[0], **TOL[dtype])
                    torch.testing.assert_close(mask[1], ref[1], atol=1e-6, rtol=1e-4)
    finally:
        torch.set_num_threads(saved)
