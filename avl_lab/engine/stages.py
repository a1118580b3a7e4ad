"""Stages of prefill pruning: from a stage's first layer on, the decoder sees only its kept tokens.

A policy may prune the prompt several times in one forward (PyramidDrop's stages, SparseVLM's,
A-VL's P beside FastV): each stage keeps a subset of the previous stage's tokens. A stage is
decided either inside a layer's attention (``prune_tokens``, after that layer: the stage starts
at the next layer) or in a layer's forward pre-hook (``prune_before``: the stage starts at that
layer). Kept tokens stay in prompt order, right-aligned; rows that keep fewer tokens than the
longest hold filler on the left, which attends only to itself and is never attended to.

Positions: a stage either keeps each token's original position (the gathered RoPE embeddings,
1-D or M-RoPE) or renumbers the kept tokens 0, 1, ... as PyramidDrop's and SparseVLM's
reference code do; then decode positions of the stage's layers move down by the number of
tokens the stage dropped (each layer continues its own compact numbering).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from avl_lab.engine.layout import Layout

__all__ = ["PruneState", "TokenRows", "make_stage"]

POSITIONS = ("keep", "renumber")


@dataclass
class PruneState:
    """One stage: layers ``first`` and later see only the kept tokens.

    Attributes
    ----------
    first : the first decoder layer that sees the cut.
    keep : ``[B, P]`` bool, the prompt tokens that stay.
    index : ``[B, m]`` their prompt columns (right-aligned, in order; filler gathers column 0).
    valid : ``[B, m]`` False on filler.
    rel : ``[B, m]`` where each kept token sits on the previous stage's token axis (the hidden
        states of the layer before ``first`` are gathered with it).
    pos_index : ``[B, m]`` the prompt columns whose position embeddings the tokens take (their
        own, or those of the renumbered positions).
    position_ids : ``[B, m]`` renumbered stages: the tokens' new 1-D position ids (None: the
        layers' own ``position_ids`` are gathered with ``index``).
    shift : ``[B]`` renumbered stages: how far decode positions move down in this stage's
        layers (None when positions are kept).
    """

    first: int
    keep: Tensor
    index: Tensor
    valid: Tensor
    rel: Tensor
    pos_index: Tensor
    position_ids: Tensor | None = None
    shift: Tensor | None = None
    layer_kwargs: dict = field(default_factory=dict)  # gathered decoder-layer kwargs, per input set
    decode_kwargs: dict = field(default_factory=dict)  # decode step's shifted position embeddings


@dataclass
class TokenRows:
    """The rows a layer is about to hold in prefill (the current stage's tokens), as a policy
    sees them in :meth:`~avl_lab.policies.base.Policy.prune_before` (bookkeeping only)."""

    layer_idx: int
    valid: Tensor
    mod: Tensor
    pos: Tensor
    tok: Tensor
    per_head: bool = False

    def state(self, name: str) -> Tensor:
        raise RuntimeError(f"policy state {name!r} is not available before a layer runs")


def _right_aligned(keep_tok: Tensor) -> tuple[Tensor, Tensor]:
    """``(index [B, m], valid [B, m])`` of the True columns of ``keep_tok``, right-aligned."""
    P = keep_tok.shape[1]
    counts = keep_tok.sum(1)
    m = int(counts.max())
    # Ascending stable sort: dropped first, kept last in order; take the last m (kept right-aligned).
    index = torch.sort(keep_tok.to(torch.int8), dim=1, stable=True).indices[:, P - m :]
    valid = torch.arange(m, device=keep_tok.device)[None, :] >= (m - counts)[:, None]
    return index.masked_fill(~valid, 0), valid


def make_stage(layout: Layout, prev: PruneState | None, keep_rows: Tensor, tok: Tensor,
               first: int, positions: str = "keep") -> PruneState:
    """The stage that keeps the rows ``keep_rows`` ``[B, R]`` (prompt columns ``tok``) of a
    layer, intersected with ``prev``'s tokens (the last prompt token always stays: it produces
    the next-token logits), from layer ``first`` on."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    B, P = layout.valid.shape
    keep_tok = torch.zeros(B, P, dtype=torch.bool, device=keep_rows.device)
    keep_tok.scatter_(1, tok, keep_rows)
    keep_tok &= layout.valid
    if prev is not None:
        keep_tok = keep_tok & prev.keep
    keep_tok[:, -1] = True
    index, valid = _right_aligned(keep_tok)
    if prev is None:
        rel = index
    else:  # each kept column's place on the previous stage's axis
        where = torch.zeros(B, P, dtype=torch.long, device=index.device)
        slots = torch.arange(prev.index.shape[1], device=index.device).expand_as(prev.index)
        where.scatter_(1, prev.index.masked_fill(~prev.valid, P - 1), slots.masked_fill(~prev.valid, 0))
        where[:, -1] = prev.index.shape[1] - 1  # the last prompt token is the last slot of every stage
        rel = where.gather(1, index).masked_fill(~valid, 0)
    if positions == "keep":
        return PruneState(first, keep_tok, index, valid, rel, pos_index=index)
    rank = (valid.long().cumsum(1) - 1).clamp(min=0)  # renumbered 0, 1, ... over the kept tokens
    first_col = (~layout.valid).sum(1, keepdim=True)  # left padding: the first real column
    pos_index = (first_col + rank).clamp(max=P - 1).masked_fill(~valid, 0)
    shift = layout.valid.sum(1) - valid.sum(1)
    return PruneState(first, keep_tok, index, valid, rel, pos_index=pos_index,
                      position_ids=rank.masked_fill(~valid, 1), shift=shift)
