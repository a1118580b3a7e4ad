"""SnapKV: each KV head keeps the prompt rows its observation window attended to most.

Paper: https://arxiv.org/abs/2404.14469; code: FasterDecoding/SnapKV ``snapkv_utils.py``
(``SnapKVCluster.update_kv``) and Zefan-Cai/KVCache-Factory (``pyramidkv_utils.py``). Followed:
in prefill, the last ``window`` prompt queries' attention to the earlier rows, summed over those
queries, per head (GQA: averaged over each KV head's group of query heads, as KVCache-Factory
does), smoothed along the rows with a 1-D ``avgpool`` / ``maxpool`` of width ``kernel``
(zero padding ``kernel // 2``, the pooling's own boundary); each KV head keeps its top
``budget - window`` earlier rows plus the window; no compression when the prompt fits the budget;
decode keeps every new row. Differences: the budget is a ``ratio`` of each row's prompt (or a
fixed ``budget``), rounded down; left padding and batch > 1 work (the window is each row's own
last ``window`` prompt tokens); the selected rows really leave memory, per (row, KV head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avl_lab.policies.base import (
    Context,
    Policy,
    Rows,
    budget_rows,
    check_budget,
    heads,
    newest_rows,
    top_rows,
)
from avl_lab.policies.registry import register

POOLINGS = ("avgpool", "maxpool")


def window_scores(layer: Rows, ctx: Context, window: int, kernel: int, pooling: str) -> Tensor:
    """``[B, Hkv, R]`` SnapKV's score: attention from the last ``window`` prompt queries to each
    earlier row, summed over the window, per KV head, pooled along the rows (0 elsewhere)."""
    win = newest_rows(layer.valid, window)  # [B, R]
    probs = ctx.query_probs(win, per_head=True)  # [B, Hkv, m, R]
    earlier = layer.valid & ~win
    score = probs.sum(2).masked_fill(~earlier[:, None], 0.0)  # [B, Hkv, R]
    B, H, R = score.shape
    flat = score.reshape(B * H, 1, R)
    pool = F.avg_pool1d if pooling == "avgpool" else F.max_pool1d
    pooled = pool(flat, kernel_size=kernel, stride=1, padding=kernel // 2)[..., :R]
    return pooled.reshape(B, H, R).masked_fill(~earlier[:, None], 0.0)


@register("snapkv", example={"ratio": 0.5, "window": 8, "kernel": 5})
@dataclass
class SnapKV(Policy):
    """Parameters
    ----------
    ratio : float, optional
        Rows per KV head kept of each prompt, as a fraction (0, 1] (default 0.5 when ``budget``
        is unset); the window counts.
    budget : int, optional
        Rows per KV head kept of each prompt (SnapKV's ``max_capacity_prompt``).
    window : int
        Observation window: the last prompt tokens whose attention scores the others (kept).
    kernel : int
        Pooling width (odd).
    pooling : str
        ``"avgpool"`` or ``"maxpool"``.
    """

    ratio: float | None = None
    budget: int | None = None
    window: int = 32
    kernel: int = 5
    pooling: str = "avgpool"

    def __post_init__(self) -> None:
        if self.ratio is None and self.budget is None:
            self.ratio = 0.5
        check_budget(self.ratio, self.budget)
        for name in ("window", "kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"`kernel` must be odd (same-length pooling), got {self.kernel}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}, got {self.pooling!r}")
        if self.budget is not None and self.budget <= self.window:
            raise ValueError(f"`budget` ({self.budget}) must exceed `window` ({self.window})")

    def layer_budget(self, total: Tensor, ctx: Context) -> Tensor:
        """``[B]`` earlier rows each KV head keeps in this layer (the window not counted)."""
        return (total - self.window).clamp(min=0)

    def allot(self, score: Tensor, candidates: Tensor, n: Tensor) -> Tensor:
        """``[B, Hkv, R]`` the rows each head keeps among ``candidates``: its own top ``n``."""
        return top_rows(score, candidates, n)

    def prefill_keep(self, layer: Rows, ctx: Context) -> Tensor | None:
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)  # [B] incl. the window
        valid = layer.valid
        if not bool((valid.sum(-1) > total).any()):
            return None
        score = window_scores(layer, ctx, self.window, self.kernel, self.pooling)
        win = newest_rows(valid, self.window)
        n = torch.where(valid.sum(-1) > total, self.layer_budget(total, ctx), valid.sum(-1))
        return heads(win, score) | self.allot(score, heads(valid & ~win, score), n)
