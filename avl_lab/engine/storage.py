"""The two layouts of an :class:`~avl_lab.engine.cache.AVLLayer`'s K/V buffers: allocation,
``[B, Hkv, n, D]`` views, and the selection of kept rows.

Storage: shared rows are stored token-major, ``[B, R, Hkv, D]``: one selected row is one
contiguous run of ``Hkv * D`` values for all heads, which the core-attention op streams at
close to bandwidth (a head-major row is a short random read per head). Rows per KV head whose
heads differ in more than a few rows are packed per head at their first compaction and stored
head-major, ``[B, Hkv, R, D]`` (heads that differ in a few rows keep shared, token-major slots
with per-head holes: ``AVLLayer.compact``): a head's kept rows are one run, so a head that computes over what it keeps (per-head budgets: H2O, SnapKV, AdaKV…)
streams it, where token-major storage would leave the slots of heads that keep fewer rows as
holes in every token's run (benchmarks/README.md, "Per-head rows"). ``keys``/``values`` are
``[B, Hkv, R, D]`` views of either, the layout transformers and the op's API use; the private
buffers are always indexed ``[B, slot, Hkv, D]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_head_major(buf: Tensor) -> bool:
    """Whether a storage buffer ``[B, cap, H, D]`` holds each head's slots as one run."""
    return buf.shape[2] > 1 and buf.stride(1) == buf.shape[3]


def rows_view(buf: Tensor, start: int, n: int) -> Tensor:
    """Slots ``start .. start + n`` of a storage buffer ``[B, cap, H, D]`` (either layout) as a
    ``[B, H, n, D]`` view: one ``as_strided``, not a slice and a transpose (a decode step takes
    three such views per layer)."""
    B, _, H, D = buf.shape
    s0, s1, s2, s3 = buf.stride()
    return buf.as_strided((B, H, n, D), (s0, s2, s1, s3), buf.storage_offset() + start * s1)


def alloc(like: Tensor, B: int, cap: int, H: int, D: int, head_major: bool) -> Tensor:
    """An empty ``[B, cap, H, D]`` buffer, stored token-major or head-major (``[B, H, cap, D]``
    memory, each head's slots one run)."""
    if head_major:
        return like.new_empty(B, H, cap, D).transpose(1, 2)
    return like.new_empty(B, cap, H, D)


def take(t: Tensor, order: Tensor) -> Tensor:
    """Rows ``order`` of a whole storage buffer ``t`` (``[B, cap, H, D]``, either layout) as
    ``[B, m, H, D]``: per head (``order`` ``[B, H, m]``) with head-major strides, else
    (``[B, m]``, token-major ``t``) token-major. One ``index_select`` over ``D``-runs (per
    head) or ``H * D``-runs (shared), several times faster than ``gather`` with an expanded
    ``[B, m, H, D]`` index."""
    B, cap, H, D = t.shape
    s0, s1, s2, _ = t.stride()
    b = torch.arange(B, device=order.device)
    m = order.shape[-1]
    if order.dim() == 3:
        h = torch.arange(H, device=order.device)
        rows = (b[:, None, None] * s0 + order * s1 + h[None, :, None] * s2) // D  # [B, H, m]
        flat = torch.as_strided(t, (t.numel() // D, D), (D, 1))
        return flat.index_select(0, rows.reshape(-1)).view(B, H, m, D).transpose(1, 2)
    if s2 != D or s1 != H * D:  # shared rows of head-major storage: a run per head
        return take(t, order[:, None].expand(B, H, m)).contiguous()
    flat = torch.as_strided(t, (t.numel() // (H * D), H * D), (H * D, 1))
    rows = (b[:, None] * (s0 // (H * D)) + order).reshape(-1)
    return flat.index_select(0, rows).view(B, m, H, D)
