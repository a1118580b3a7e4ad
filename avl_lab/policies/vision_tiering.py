"""VisionTiering (S, C): per layer, keep the top S% image tokens, compute over the top C%.

After each layer's prefill attention, that layer's image rows are ranked by the last prompt
token's attention (head-averaged). The top C% of N_img are *core*, the top S% *secondary*
(core ⊂ secondary); the rest are *minor* and leave that layer's cache at once. In decode only
core image rows take part in attention; on an update step (see ``UpdateSchedule``) every
secondary row does, and the core set is re-chosen from that step's attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avl_lab.policies.base import Context, Policy, check_percent, count_of, is_image, top_rows
from avl_lab.policies.registry import register


@register("vision_tiering", example={"S": 45, "C": 30})
@dataclass
class VisionTiering(Policy):
    """Tiered image cache.

    Parameters
    ----------
    S : float
        Secondary share: % of N_img (before any pruning) stored per layer.
    C : float, optional
        Core share: % of N_img computed over in decode; ``None`` means C = S (no core tier).
    per_head : bool
        Rank per KV head (each head keeps and computes over its own top image rows, by its own
        attention) instead of by the head-averaged attention (paper Eq. 1, the default).
    """

    S: float = 45.0
    C: float | None = None
    per_head: bool = False

    @property
    def needs_probs(self) -> bool:  # type: ignore[override]
        return not self.per_head

    @property
    def needs_head_probs(self) -> bool:  # type: ignore[override]
        return self.per_head

    def __post_init__(self) -> None:
        if not isinstance(self.per_head, bool):
            raise ValueError(f"`per_head` must be true or false, got {self.per_head!r}")
        check_percent("S", self.S, allow_none=False)
        check_percent("C", self.C)
        if self.C is not None and self.C > self.S:
            raise ValueError(f"`C` ({self.C}) must not exceed `S` ({self.S}): core ⊂ secondary")

    def probs_at(self, update: bool) -> bool:
        return update and self.C is not None  # the core set is re-chosen on update steps only

    def setup(self, cache, ctx: Context) -> None:
        cache.register_state("core", True, torch.bool)

    def _core_count(self, ctx: Context):
        """``[B]`` core rows, computed once per run (``ctx.n_image`` is the run's tensor)."""
        memo = self.__dict__.get("_core_memo")
        if memo is None or memo[0] is not ctx.n_image:
            memo = (ctx.n_image, count_of(self.C if self.C is not None else self.S, ctx.n_image))
            self.__dict__["_core_memo"] = memo
        return memo[1]

    def _choose_core(self, layer, score, ctx: Context) -> None:
        img = is_image(layer)
        layer.set_state("core", ~img | top_rows(score, img, self._core_count(ctx)))

    def _choose_core_tokens(self, layer, ctx: Context) -> None:
        """:meth:`_choose_core` from this step's attention when another part gave the layer rows
        per KV head: the top image tokens by their average over all heads (paper Eq. 1), ranked
        once over the tokens instead of once per head over its rows; each head's rows of those
        tokens are core. (The same rows as ranking every head's rows by ``ctx.probs`` wherever
        the heads hold the same image tokens, as beside TextH2O, which evicts text rows only.)"""
        img, tok = is_image(layer), layer.tok
        T = ctx.token_probs.shape[1]
        at = tok.masked_fill(~img, T).flatten(1)  # [B, Hkv * R], T = a dump column
        held = torch.zeros(tok.shape[0], T + 1, dtype=torch.uint8, device=tok.device)
        held = held.scatter_(1, at, 1)[:, :T].bool()  # tokens some head holds an image row of
        core = top_rows(ctx.token_probs, held, self._core_count(ctx))  # [B, T]
        core = torch.cat([core, core.new_zeros(core.shape[0], 1)], 1)
        layer.set_state("core", ~img | core.gather(1, at).view_as(img))

    def prefill_keep(self, layer, ctx: Context):
        score = ctx.scores
        if self.per_head:
            layer.split_heads()
            score = ctx.head_scores
        img = is_image(layer)
        self._choose_core(layer, score, ctx)
        return ~img | top_rows(score, img, count_of(self.S, ctx.n_image))

    def decode_active(self, layer, ctx: Context):
        return None if ctx.update or self.C is None else layer.state("core")

    def decode_keep(self, layer, ctx: Context):
        if ctx.update and self.C is not None:
            if self.per_head:
                self._choose_core(layer, ctx.head_probs, ctx)
            elif ctx.token_probs is not None:  # rows per KV head: rank the tokens once
                self._choose_core_tokens(layer, ctx)
            else:
                self._choose_core(layer, ctx.probs, ctx)
        return None
