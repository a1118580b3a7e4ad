"""PyramidKV: SnapKV's selection with per-layer budgets that shrink with depth.

Paper: https://arxiv.org/abs/2406.02069; code: Zefan-Cai/KVCache-Factory (PyramidKV)
``pyramidkv_utils.py`` ``PyramidKVCluster.update_kv``. Followed, for a prompt budget C (rows per
KV head, the window included) and L layers: ``min = (C - w) // beta``,
``max = 2 (C - w) - min`` (if ``max >= q - w``: ``max = q - w``, ``min = 2 (C - w) - max``),
``step = (max - min) // (L - 1)``, and layer l keeps ``max - l * step`` earlier rows per head
plus the window, so the layers average about C; when the prompt is shorter than
``2 (C - w)`` every layer keeps ``C - w`` (SnapKV), and nothing is compressed below C.
Differences: C is a ``ratio`` of each row's prompt (or a fixed ``budget``), per batch row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avl_lab.policies.base import Context
from avl_lab.policies.registry import register
from avl_lab.policies.snapkv import SnapKV


@register("pyramidkv", example={"ratio": 0.5, "window": 8, "kernel": 5, "beta": 20})
@dataclass
class PyramidKV(SnapKV):
    """Parameters
    ----------
    ratio, budget, window, kernel, pooling
        As :class:`~avl_lab.policies.snapkv.SnapKV` (the budget is the layers' average).
    beta : int
        The top layer keeps ``(C - window) // beta`` earlier rows at the least.
    """

    beta: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.beta, bool) or not isinstance(self.beta, int) or self.beta < 1:
            raise ValueError(f"`beta` must be a positive integer, got {self.beta!r}")

    def layer_budget(self, total: Tensor, ctx: Context) -> Tensor:
        w = self.window
        span = (total - w).clamp(min=0)  # C - w
        q_rest = ctx.n_prompt - w  # q - w
        lo = span // self.beta
        hi = 2 * span - lo
        clipped = hi >= q_rest
        hi = torch.where(clipped, q_rest, hi)
        lo = torch.where(clipped, 2 * span - hi, lo)
        step = (hi - lo) // max(1, ctx.num_layers - 1)
        pyramid = (hi - ctx.layer_idx * step).clamp(min=0)
        return torch.where(ctx.n_prompt < 2 * span, span, pyramid)
