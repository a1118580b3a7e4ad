"""One ranking for every layer of a decode step: :func:`~avl_lab.policies.base.top_rows` over
the layers' rows stacked, instead of one call per layer.

A policy that ranks rows after every layer's attention (H2O's heavy hitters, the tiering's
core set on update steps) adds each layer's scores in :meth:`Policy.decode_keep` and resolves
them all in :meth:`Policy.end_step`: the sort and the rank's dozen small ops run once per step,
so a 32-layer model's step pays them once, not 32 times. The rows a step ranks do not change
between a layer's attention and the step's end (a decode decision leaves memory only at the
next step's start), so the result is each layer's own ranking (``tests/test_step_ranking.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from avl_lab.policies.base import Context, heads, top_rows


@dataclass
class StepRanking:
    """The step's pending rankings: :meth:`add` one per layer, :meth:`resolve` once."""

    _pending: list[tuple[Any, Tensor, Tensor, Tensor]] = field(default_factory=list)
    _of: tuple[Tensor, int] | None = None  # the run (its n_prompt tensor) and step of _pending

    @staticmethod
    def of(policy: object) -> StepRanking:
        """The policy's own (one per policy object, made on first use)."""
        return policy.__dict__.setdefault("_step_ranking", StepRanking())

    def add(self, key: Any, score: Tensor, candidates: Tensor, k: Tensor, *,
            ctx: Context | None = None) -> None:
        """Rank ``score`` among ``candidates`` (``[B, (Hkv,) R]``; a ``[B, R]`` score goes to
        every head) and keep the top ``k`` (``[B]`` or ``[B, Hkv]``), as ``top_rows`` would;
        ``key`` (a layer) names the result. With ``ctx``, rankings left by another run or step
        (a call that failed before its step's end) are dropped first."""
        if ctx is not None:
            of = self._of
            if of is None or of[0] is not ctx.n_prompt or of[1] != ctx.step:
                self._pending.clear()
                self._of = (ctx.n_prompt, ctx.step)
        score, candidates = heads(score, candidates), heads(candidates, score)
        self._pending.append((key, score.expand_as(candidates), candidates, k))

    def resolve(self) -> list[tuple[Any, Tensor]]:
        """``[(key, mask)]`` in the order added, each mask its layer's ``top_rows``; empties the
        step. Layers of one shape are sorted together, right-padded to the widest with rows
        that are no candidate."""
        pending, self._pending = self._pending, []
        groups: dict[tuple, list[int]] = {}
        for i, (_, score, cand, k) in enumerate(pending):
            groups.setdefault((tuple(cand.shape[:-1]), score.dtype, k.dim()), []).append(i)
        out: list[Tensor | None] = [None] * len(pending)
        for members in groups.values():
            items = [pending[i] for i in members]
            width = max(c.shape[-1] for _, _, c, _ in items)
            score = torch.stack([pad_last(s, width, -math.inf) for _, s, _, _ in items])
            cand = torch.stack([pad_last(c, width, False) for _, _, c, _ in items])
            ks = [k for *_, k in items]
            k = ks[0][None] if all(x is ks[0] for x in ks) else torch.stack(ks)  # [1 or L, B...]
            top = top_rows(score, cand, k)  # [L, B, (Hkv,) width]
            for j, i in enumerate(members):
                out[i] = top[j, ..., : pending[i][2].shape[-1]]
        return [(p[0], mask) for p, mask in zip(pending, out, strict=True)]


def pad_last(t: Tensor, width: int, fill: float | bool, left: bool = False) -> Tensor:
    """``t`` padded along its last dim to ``width`` with ``fill``, on the right (or the left)."""
    n = t.shape[-1]
    if n == width:
        return t
    return F.pad(t, (width - n, 0) if left else (0, width - n), value=fill)
