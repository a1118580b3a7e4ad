"""Prefill fast paths (``avl_lab.engine.prefill_scores``) against their plain specifications:
mask classification, attention against stock SDPA, column sums against ``colsum_ref``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from avl_lab.engine import prefill_scores as ps

DTYPES = {"fp32": (torch.float32, 2e-5), "bf16": (torch.bfloat16, 2e-2)}


class _Module(nn.Module):
    def __init__(self, groups: int, causal: bool = True) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = causal


def _qkv(B=2, Hq=4, Hkv=2, n=37, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv))
    return q, k, v


def _library_mask(starts: list[int], n: int) -> torch.Tensor:
    """``[B, 1, n, n]`` causal + left padding, as ``sdpa_mask`` builds it."""
    cols = torch.arange(n)
    valid = cols[None, :] >= torch.tensor(starts)[:, None]
    return (torch.ones(n, n, dtype=torch.bool).tril()[None] & valid[:, None, :])[:, None]


def _valid(starts: list[int], n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] >= torch.tensor(starts)[:, None]


def _visible(mask, valid, n):
    if mask is None:
        return torch.ones(n, n, dtype=torch.bool).tril()[None] & valid[:, None, :]
    return mask[:, 0] & valid[:, None, :]


# --- plan_mask ---------------------------------------------------------------------------------


def test_plan_no_mask_is_causal():
    assert ps.plan_mask(_Module(2), None, torch.ones(2, 9, dtype=torch.bool), 9) == ps.CAUSAL


def test_plan_left_padding_is_rows():
    starts = [0, 3, 5]
    plan = ps.plan_mask(_Module(2), _library_mask(starts, 9), _valid(starts, 9), 9)
    assert plan == ps.MaskPlan("rows", (0, 3, 5))


def test_plan_mask_equal_to_causal_is_causal():
    assert ps.plan_mask(_Module(2), _library_mask([0, 0], 9), _valid([0, 0], 9), 9) == ps.CAUSAL


def test_plan_filler_rows_attending_to_themselves_is_rows():
    """Prefill pruning's gathered mask: filler on the left attends to itself only."""
    starts = [2, 0]
    mask = _library_mask(starts, 7)
    mask[0, 0, :2, :2] = torch.eye(2, dtype=torch.bool)
    assert ps.plan_mask(_Module(1), mask, _valid(starts, 7), 7) == ps.MaskPlan("rows", (2, 0))


@pytest.mark.parametrize("case", ["window", "bidirectional", "valid_disagrees", "not_suffix"])
def test_plan_other_masks_are_masked(case):
    n, starts = 9, [0, 2]
    mask, valid = _library_mask(starts, n), _valid(starts, n)
    if case == "window":  # a sliding window of 4
        mask &= (torch.arange(n)[None, :] > torch.arange(n)[:, None] - 4)[None, None]
    elif case == "bidirectional":  # an image block 3..5 attends both ways
        mask[:, :, 3:6, 3:6] = True
        mask &= valid[:, None, None, :]
    elif case == "valid_disagrees":  # the layer lost a row the mask still shows
        valid = valid.clone()
        valid[0, 4] = False
    else:  # a hole in the middle of row 1
        mask[1, :, :, 4] = False
    assert ps.plan_mask(_Module(2), mask, valid, n) == ps.MASKED


def test_plan_non_causal_module_is_masked():
    assert ps.plan_mask(_Module(2, causal=False), None, torch.ones(1, 5, dtype=torch.bool), 5) == ps.MASKED


# --- attention ---------------------------------------------------------------------------------


@pytest.mark.parametrize("want_lse", [False, True])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_causal_attention_is_stock_sdpa_bit_for_bit(heads, dtype, want_lse):
    Hq, Hkv = heads
    q, k, v = _qkv(Hq=Hq, Hkv=Hkv, dtype=DTYPES[dtype][0])
    module = _Module(Hq // Hkv)
    ref, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.3)
    out, lse = ps.attention(module, q, k, v, None, 0.3, ps.CAUSAL, want_lse=want_lse)
    assert torch.equal(out, ref)
    if want_lse:
        s = (q.float() @ k.float().repeat_interleave(Hq // Hkv, 1).transpose(-1, -2)) * 0.3
        s = s.masked_fill(~torch.ones(37, 37, dtype=torch.bool).tril(), float("-inf"))
        torch.testing.assert_close(lse, torch.logsumexp(s, -1), atol=DTYPES[dtype][1] * 10, rtol=0)


@pytest.mark.parametrize("want_lse", [False, True])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_rows_attention_equals_masked_sdpa(dtype, want_lse):
    dt, tol = DTYPES[dtype]
    starts, n = [0, 5, 11], 37
    q, k, v = _qkv(B=3, dtype=dt)
    module, mask = _Module(2), _library_mask(starts, n)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    plan = ps.plan_mask(module, mask, _valid(starts, n), n)
    out, lse = ps.attention(module, q, k, v, mask, 0.25, plan, want_lse=want_lse)
    assert plan.kind == "rows"
    torch.testing.assert_close(out, ref, atol=tol, rtol=0)
    for b, s in enumerate(starts):
        assert not out[b, :s].any()  # stock SDPA gives zeros too
    assert torch.equal(out[0], ref[0])  # an unpadded row takes the very same kernel path
    if want_lse:
        assert torch.isinf(lse[1, :, :5]).all() and torch.isfinite(lse[1, :, 5:]).all()


# --- column sums -------------------------------------------------------------------------------


def _check_colsum(q, k, v, mask, valid, dtype, chunk, per_kv_head=False, with_lse=True):
    n = q.shape[2]
    module = _Module(q.shape[1] // k.shape[1])
    plan = ps.plan_mask(module, mask, valid, n)
    _, lse = ps.attention(module, q, k, v, mask, 0.25, plan, want_lse=with_lse)
    got = ps.colsum(q, k, 0.25, plan, mask, valid, lse, chunk=chunk, per_kv_head=per_kv_head)
    ref = ps.colsum_ref(q, k, _visible(mask, valid, n), 0.25)
    if per_kv_head:
        assert got.shape == k.shape[:3]
        got = got.mean(1)
    tol = DTYPES[dtype][1]
    torch.testing.assert_close(got, ref, atol=tol * max(1.0, float(ref.max())), rtol=0)
    return plan


@pytest.mark.parametrize("with_lse", [True, False])
@pytest.mark.parametrize("chunk", [1, 700, 1 << 22])  # one query per chunk, a few, all at once
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("starts", [[0, 0], [0, 6], [4, 9]], ids=["causal", "rows", "rows2"])
def test_colsum_equals_reference(starts, dtype, chunk, with_lse):
    n = 41
    q, k, v = _qkv(n=n, dtype=DTYPES[dtype][0])
    mask = None if starts == [0, 0] else _library_mask(starts, n)
    plan = _check_colsum(q, k, v, mask, _valid(starts, n), dtype, chunk, with_lse=with_lse)
    assert plan.kind == ("causal" if mask is None else "rows")


@pytest.mark.parametrize("case", ["window", "bidirectional", "filler"])
def test_colsum_masked_plans_equal_reference(case):
    n, starts = 29, [0, 3]
    q, k, v = _qkv(n=n, Hq=6, Hkv=3)
    mask, valid = _library_mask(starts, n), _valid(starts, n)
    if case == "window":
        mask &= (torch.arange(n)[None, :] > torch.arange(n)[:, None] - 5)[None, None]
    elif case == "bidirectional":
        mask[:, :, 8:14, 8:14] = True
        mask &= valid[:, None, None, :]
    else:  # filler attends to itself only, and a padded query row sees nothing
        mask[1, 0, :3, :3] = torch.eye(3, dtype=torch.bool)
        valid = valid.clone()
        valid[0, 10] = False  # an evicted-looking row: forces the masked plan
        mask &= valid[:, None, None, :]
    plan = _check_colsum(q, k, v, mask, valid, "fp32", 300, with_lse=False)
    assert plan == ps.MASKED


def test_colsum_per_kv_head_averages_each_group():
    n = 23
    q, k, v = _qkv(n=n, Hq=6, Hkv=2)
    _check_colsum(q, k, v, None, torch.ones(2, n, dtype=torch.bool), "fp32", 200, per_kv_head=True)


@pytest.fixture
def matmul_sizes(monkeypatch) -> list[int]:
    """The element counts of every ``torch.matmul`` result inside ``prefill_scores``."""
    seen: list[int] = []
    real = torch.matmul

    def spy(a, b):
        out = real(a, b)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(ps.torch, "matmul", spy)
    return seen


def test_colsum_memory_is_chunked(matmul_sizes):
    """No score block larger than the chunk budget (plus one row of keys) is ever built."""
    n, chunk = 97, 4 * 2 * 97 * 8
    q, k, v = _qkv(n=n)
    seen = matmul_sizes
    ps.colsum(q, k, 0.25, ps.CAUSAL, None, torch.ones(2, n, dtype=torch.bool), None, chunk=chunk)
    assert seen and max(seen) <= chunk + 2 * 4 * 16 * n


def test_colsum_skips_the_causal_half(matmul_sizes):
    """A causal pass multiplies each query chunk by the keys up to its end only, in chunks
    small enough (at most an eighth of the queries) that this skips most of the masked half,
    however large the chunk budget: under 0.6 of the whole square of scores is computed."""
    n = 256
    q, k, v = _qkv(n=n)
    seen = matmul_sizes
    ps.colsum(q, k, 0.25, ps.CAUSAL, None, torch.ones(2, n, dtype=torch.bool), None, chunk=1 << 30)
    square = q.shape[0] * q.shape[1] * n * n
    assert len(seen) > 1 and sum(seen) < 0.6 * square
