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


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_causal_attention_is_stock_sdpa_bit_for_bit(heads, dtype):
    Hq, Hkv = heads
    q, k, v = _qkv(Hq=Hq, Hkv=Hkv, dtype=DTYPES[dtype][0])
    module = _Module(Hq // Hkv)
    ref, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.3)
    assert torch.equal(ps.attention(module, q, k, v, None, 0.3, ps.CAUSAL), ref)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_rows_attention_equals_masked_sdpa(dtype):
    dt, tol = DTYPES[dtype]
    starts, n = [0, 5, 11], 37
    q, k, v = _qkv(B=3, dtype=dt)
    module, mask = _Module(2), _library_mask(starts, n)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    plan = ps.plan_mask(module, mask, _valid(starts, n), n)
    out = ps.attention(module, q, k, v, mask, 0.25, plan)
    assert plan.kind == "rows"
    torch.testing.assert_close(out, ref, atol=tol, rtol=0)
    for b, s in enumerate(starts):
        assert not out[b, :s].any()  # stock SDPA gives zeros too
    assert torch.equal(out[0], ref[0])  # an unpadded row takes the very same kernel path


# --- column sums -------------------------------------------------------------------------------


def _check_colsum(q, k, v, mask, valid, dtype, chunk, per_kv_head=False):
    """Both ways to the column sums (:func:`colsum` alone, and :func:`attention_colsum` with
    the attention output) against ``colsum_ref``; the output against masked stock SDPA."""
    n = q.shape[2]
    module = _Module(q.shape[1] // k.shape[1])
    plan = ps.plan_mask(module, mask, valid, n)
    tol = DTYPES[dtype][1]
    ref = ps.colsum_ref(q, k, _visible(mask, valid, n), 0.25)
    got = ps.colsum(q, k, 0.25, plan, mask, valid, chunk=chunk, per_kv_head=per_kv_head)
    out, head_sums = ps.attention_colsum(module, q, k, v, mask, 0.25, plan, valid, chunk=chunk)
    assert head_sums.shape == k.shape[:3]
    if per_kv_head:
        assert got.shape == k.shape[:3]
        torch.testing.assert_close(got, head_sums, atol=tol * max(1.0, float(ref.max())), rtol=0)
        got = got.mean(1)
    for sums in (got, head_sums.mean(1)):
        torch.testing.assert_close(sums, ref, atol=tol * max(1.0, float(ref.max())), rtol=0)
    sdpa_mask = _visible(mask, valid, n)[:, None] if mask is not None or not valid.all() else None
    out_ref, _ = sdpa_attention_forward(module, q, k, v, sdpa_mask, scaling=0.25)
    sees = _visible(mask, valid, n).any(-1)  # queries that see nothing: SDPA's output is 0 or nan
    torch.testing.assert_close(out[sees], out_ref[sees], atol=tol * 2, rtol=0)
    return plan


@pytest.mark.parametrize("chunk", [1, 700, 1 << 22])  # one query per chunk, a few, all at once
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("starts", [[0, 0], [0, 6], [4, 9]], ids=["causal", "rows", "rows2"])
def test_colsum_equals_reference(starts, dtype, chunk):
    n = 41
    q, k, v = _qkv(n=n, dtype=DTYPES[dtype][0])
    mask = None if starts == [0, 0] else _library_mask(starts, n)
    plan = _check_colsum(q, k, v, mask, _valid(starts, n), dtype, chunk)
    assert plan.kind == ("causal" if mask is None else "rows")


def test_attention_colsum_padded_queries_get_zeros():
    """Queries on left padding get a zero output, as stock SDPA gives them."""
    starts, n = [0, 7], 30
    q, k, v = _qkv(n=n)
    module, mask, valid = _Module(2), _library_mask(starts, n), _valid(starts, n)
    out, sums = ps.attention_colsum(module, q, k, v, mask, 0.25, ps.plan_mask(module, mask, valid, n), valid)
    assert not out[1, :7].any() and out[1, 7:].abs().sum(-1).all()
    assert not sums[1, :, :7].any()


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
    plan = _check_colsum(q, k, v, mask, valid, "fp32", 300)
    assert plan == ps.MASKED


def test_colsum_per_kv_head_averages_each_group():
    n = 23
    q, k, v = _qkv(n=n, Hq=6, Hkv=2)
    _check_colsum(q, k, v, None, torch.ones(2, n, dtype=torch.bool), "fp32", 200, per_kv_head=True)


@pytest.fixture
def matmul_sizes(monkeypatch) -> list[tuple[int, int]]:
    """``(contracted size, result elements)`` of every ``torch.matmul`` inside ``prefill_scores``
    (a contracted size of ``D`` marks a ``q·kᵀ`` block)."""
    seen: list[tuple[int, int]] = []
    real = torch.matmul

    def spy(a, b):
        out = real(a, b)
        seen.append((a.shape[-1], out.numel()))
        return out

    monkeypatch.setattr(ps.torch, "matmul", spy)
    return seen


def _both_passes(q, k, v, chunk):
    """Column sums through each entry point, causal plan."""
    valid = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool)
    module = _Module(q.shape[1] // k.shape[1])
    yield lambda: ps.colsum(q, k, 0.25, ps.CAUSAL, None, valid, chunk=chunk)
    yield lambda: ps.attention_colsum(module, q, k, v, None, 0.25, ps.CAUSAL, valid, chunk=chunk)


def test_colsum_memory_is_chunked(matmul_sizes):
    """No score block larger than the chunk budget (plus one row of keys) is ever built."""
    n, chunk = 97, 4 * 2 * 97 * 8
    q, k, v = _qkv(n=n)
    for run in _both_passes(q, k, v, chunk):
        matmul_sizes.clear()
        run()
        assert matmul_sizes and max(x for _, x in matmul_sizes) <= chunk + 2 * 4 * 16 * n


def test_colsum_skips_the_causal_half(matmul_sizes):
    """A causal pass multiplies each query chunk by the keys up to its end only, in chunks
    small enough (at most an eighth of the queries) that this skips most of the masked half,
    however large the chunk budget: under 0.6 of the whole square of scores is computed."""
    n = 256
    q, k, v = _qkv(n=n)
    square = q.shape[0] * q.shape[1] * n * n
    for run in _both_passes(q, k, v, 1 << 30):
        matmul_sizes.clear()
        run()
        scores = [x for d, x in matmul_sizes if d == q.shape[-1]]  # the q·kᵀ blocks
        assert len(scores) > 1 and sum(scores) < 0.6 * square
