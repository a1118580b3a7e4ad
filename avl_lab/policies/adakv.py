"""AdaKV: SnapKV's scores, with the layer's budget allotted across KV heads by score.

Paper: https://arxiv.org/abs/2407.11550; code: FFY0/AdaKV (``adaptive_snapkv``). Followed: the
layer holds ``Hkv × (C - w)`` earlier rows in all; each head first gets its own top
``floor(alpha × (C - w))`` (the safeguard, ``floor_alpha``), and the rest of the layer's budget
goes to the highest-scored (row, head) pairs over all heads, so heads that spread their attention
keep more rows and focused heads fewer; the window is kept by every head. Differences: the
budget is a ``ratio`` of each row's prompt (or a fixed ``budget``); heads' different counts are
held padded to the largest (invalid filler), the pairs themselves leave memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avl_lab.policies.base import top_rows
from avl_lab.policies.registry import register
from avl_lab.policies.snapkv import SnapKV


@register("adakv", example={"ratio": 0.5, "window": 8, "kernel": 5, "alpha": 0.2})
@dataclass
class AdaKV(SnapKV):
    """Parameters
    ----------
    ratio, budget, window, kernel, pooling
        As :class:`~avl_lab.policies.snapkv.SnapKV` (the budget is the heads' average).
    alpha : float
        Share of each head's average budget it keeps whatever the others score (AdaKV's
        ``floor_alpha``), in [0, 1].
    """

    alpha: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not 0 <= self.alpha <= 1:
            raise ValueError(f"`alpha` must be a fraction in [0, 1], got {self.alpha!r}")

    def allot(self, score: Tensor, candidates: Tensor, n: Tensor) -> Tensor:
        B, H, R = score.shape
        floor = torch.floor(n.to(torch.float64) * self.alpha + 1e-9).long()
        own = top_rows(score, candidates, floor)  # [B, Hkv, R] each head's safeguard
        rest = (n - floor) * H  # [B] pairs allotted over all heads
        pool = (candidates & ~own).reshape(B, 1, H * R)
        shared = top_rows(score.reshape(B, 1, H * R), pool, rest)
        return own | shared.reshape(B, H, R)
