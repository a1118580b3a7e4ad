"""VisionTiering (S, C): per layer, keep the top S% image tokens, compute over the top C%.

After each layer's prefill attention, that layer's image rows are ranked by the last prompt
token's attention (head-averaged). The top C% of N_img are *core*, the top S% *secondary*
(core ⊂ secondary); the rest are *minor* and leave that layer's cache at once. In decode only
core image rows take part in attention; on an update step (see ``UpdateSchedule``) every
secondary row does, and the core set is re-chosen from that step's attention.

The ranking signal (``signal``) is a choice; per KV head, then averaged over heads unless
``per_head``:

- ``last_token`` (default, the paper's Eq. 1 and the official code): the last prompt token's
  attention. No extra cost (the engine computes it for every layer).
- ``window``: the last ``window`` prompt tokens' attention, summed and pooled along the rows as
  SnapKV does (``snapkv.window_scores``, avgpool of width 5; SnapKV, arXiv 2404.14469). Cost:
  those queries' attention over the layer's rows, once per layer in prefill.
- ``colsum``: the attention each row received from every prompt query (H2O's accumulated
  score; arXiv 2306.14048). Cost: the column sums of the whole prefill attention.
- ``attn_vnorm``: the last token's attention × the row's value norm per head (VATP, "Attention
  Score is not All You Need for Token Importance", arXiv 2406.12335): a row attended to but
  adding little to the output ranks lower. Cost: one norm over the layer's values in prefill
  and, on update steps, over the stored values (with per-head probabilities).
- ``key_norm``: attention-free, the lowest key norms first ("A Simple and Effective L2
  Norm-Based Strategy for KV Cache Compression", arXiv 2406.11430). Cost: one norm over the
  keys in prefill; keys do not change, so update steps keep the core set (no re-ranking).

In decode, update steps re-rank with that step's attention (one query: ``last_token``,
``window`` and ``colsum`` alike), × the value norms for ``attn_vnorm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avl_lab.policies.base import (
    Context,
    Policy,
    check_percent,
    count_of,
    is_image,
    token_mean,
    top_rows,
)
from avl_lab.policies.registry import register
from avl_lab.policies.snapkv import window_scores
from avl_lab.policies.step_ranking import StepRanking

SIGNALS = ("last_token", "window", "colsum", "attn_vnorm", "key_norm")


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
    signal : str
        What ranks the image rows: ``last_token`` (the paper), ``window``, ``colsum``,
        ``attn_vnorm`` or ``key_norm`` (see the module doc).
    window : int
        The observation window of ``signal="window"`` (the last prompt tokens).
    """

    S: float = 45.0
    C: float | None = None
    per_head: bool = False
    signal: str = "last_token"
    window: int = 8

    @property
    def needs_probs(self) -> bool:  # type: ignore[override]
        return not self.per_head

    @property
    def needs_head_probs(self) -> bool:  # type: ignore[override]
        return self.per_head or self.signal == "attn_vnorm"

    @property
    def needs_colsum(self) -> bool:  # type: ignore[override]
        return self.signal == "colsum"

    @property
    def needs_kv_norms(self) -> bool:  # type: ignore[override]
        return self.signal in ("attn_vnorm", "key_norm")

    def __post_init__(self) -> None:
        if not isinstance(self.per_head, bool):
            raise ValueError(f"`per_head` must be true or false, got {self.per_head!r}")
        if self.signal not in SIGNALS:
            raise ValueError(f"`signal` must be one of {SIGNALS}, got {self.signal!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"`window` must be a positive integer, got {self.window!r}")
        check_percent("S", self.S, allow_none=False)
        check_percent("C", self.C)
        if self.C is not None and self.C > self.S:
            raise ValueError(f"`C` ({self.C}) must not exceed `S` ({self.S}): core ⊂ secondary")

    def probs_at(self, update: bool) -> bool:
        # the core set is re-chosen on update steps only (never by key norms: keys do not change)
        return update and self.C is not None and self.signal != "key_norm"

    def keeps_at(self, update: bool) -> bool:
        return self.probs_at(update)  # decode_keep re-chooses the core set from the probabilities

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
        """Ranks the layer's image rows by ``score`` for its core set, decided with the step's
        other layers (:meth:`end_step`; prefill: :meth:`_decide` at once)."""
        img = is_image(layer)
        StepRanking.of(self).add(lambda core: layer.set_state("core", ~img | core),
                                 score, img, self._core_count(ctx), ctx=ctx)

    def _choose_core_tokens(self, layer, ctx: Context, by_token=None) -> None:
        """:meth:`_choose_core` from this step's attention when another part gave the layer rows
        per KV head: the top image tokens by their average over all heads (paper Eq. 1), ranked
        once over the tokens instead of once per head over its rows; each head's rows of those
        tokens are core. (The same rows as ranking every head's rows by ``ctx.probs`` wherever
        the heads hold the same image tokens, as beside TextH2O, which evicts text rows only.)"""
        img, tok = is_image(layer), layer.tok
        by_token = ctx.token_probs if by_token is None else by_token
        T = by_token.shape[1]
        at = tok.masked_fill(~img, T).flatten(1)  # [B, Hkv * R], T = a dump column
        held = torch.zeros(tok.shape[0], T + 1, dtype=torch.uint8, device=tok.device)
        held = held.scatter_(1, at, 1)[:, :T].bool()  # tokens some head holds an image row of

        def apply(core):  # [B, T] → each head's rows of the core tokens
            core = torch.cat([core, core.new_zeros(core.shape[0], 1)], 1)
            layer.set_state("core", ~img | core.gather(1, at).view_as(img))

        StepRanking.of(self).add(apply, by_token, held, self._core_count(ctx), ctx=ctx)

    def _decide(self) -> None:
        for apply, core in StepRanking.of(self).resolve():
            apply(core)

    def end_step(self, ctx: Context) -> dict:
        """The step's core sets, every layer's ranked at once; nothing leaves the cache."""
        self._decide()
        return {}

    def prefill_score(self, layer, ctx: Context):
        """``[B, R]`` (``[B, Hkv, R]`` per head) the signal of each row after the prefill."""
        if self.signal == "last_token":
            return ctx.head_scores if self.per_head else ctx.scores  # scores = their head mean
        if self.signal == "colsum":
            return ctx.head_colsum if self.per_head else ctx.colsum
        if self.signal == "window":
            score = window_scores(layer, ctx, self.window, 5, "avgpool")
        elif self.signal == "attn_vnorm":
            score = ctx.head_scores * ctx.value_norms
        else:  # key_norm: the smallest norms rank first
            score = -ctx.key_norms
        return score if self.per_head else score.mean(1)

    def prefill_keep(self, layer, ctx: Context):
        score = self.prefill_score(layer, ctx)
        if self.per_head:
            layer.split_heads()
        img = is_image(layer)
        self._choose_core(layer, score, ctx)
        self._decide()
        return ~img | top_rows(score, img, count_of(self.S, ctx.n_image))

    def decode_active(self, layer, ctx: Context):
        return None if ctx.update or self.C is None else layer.state("core")

    def decode_keep(self, layer, ctx: Context):
        if ctx.update and self.C is not None and self.signal == "attn_vnorm":
            # this step's attention per head × the rows' value norms, then as for the probabilities
            score = ctx.head_probs * layer.values.float().norm(dim=-1)  # [B, Hkv, R]
            if self.per_head:
                self._choose_core(layer, score, ctx)
            elif layer.per_head:
                self._choose_core_tokens(layer, ctx, token_mean(score, layer, ctx.token_probs.shape[1]))
            else:
                self._choose_core(layer, score.mean(1), ctx)
        elif ctx.update and self.C is not None and self.signal != "key_norm":
            if self.per_head:
                self._choose_core(layer, ctx.head_probs, ctx)
            elif ctx.token_probs is not None:  # rows per KV head: rank the tokens once
                self._choose_core_tokens(layer, ctx)
            else:
                self._choose_core(layer, ctx.probs, ctx)
        return None
