"""DART: keep the image tokens least similar to a few pivots — duplication, not attention.

Paper: https://arxiv.org/abs/2502.11494; code: ZichenWen1/DART @5a19452 (read through the fork
xqy1111111/DART, whose LLaVA file is upstream's), ``llava/model/language_model/
modeling_llama_self.py`` (``DART.forward`` l.231-395, pruning l.331-359,
``get_retained_image_token`` l.397-449) and ``llava/eval/model_vqa_loader.py`` (defaults
l.170-178: ``--pruned_layer 2 --max_num_trunction 128 --pivot_image_token 4
--pivot_text_token 4``). Followed:

- Before layer K = 2 (0-based), from layer K-1's outputs: the key L1 norm (RoPE applied, all
  heads; l.419-425) picks 4 image pivots and 4 text pivots (tokens after the image) with the
  largest norms (l.427-429); the similarity space is layer K-1's output through the model's
  final norm (l.337-340).
- Each pivot in turn takes the ``TOPK = budget // 8`` remaining image tokens *least* cosine-
  similar to it, without replacement (l.431-443); the text pivots are then removed (l.445):
  ``4 + 8·TOPK`` image tokens stay (132 for the 128-token setting), in their original order;
  text and the system prompt are never dropped; layers 0..K-1 keep every row they computed.
- Positions: kept tokens keep their original position ids (``position_ids = keep``).

Differences: the pivots take their turns image pivots first, then text pivots, each by
descending key norm (the reference iterates a Python ``set`` of indices, an order that only
matters when two pivots would pick the same token); the budget is ``keep``% of each row's own
image tokens (22.2% ≈ 128 of LLaVA-1.5's 576) or a fixed ``tokens``; GQA keys are not repeated
per query head (the L1 ranking is the same); batch > 1 with left padding (the reference asserts
batch 1). LightCompress (``dart.py``) agrees on the signal and the selection, but prunes before
layer 5 by default and computes TOPK = int(N·(1 − r)/8) (124 tokens where the reference keeps 132).
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
    check_percent,
    count_of,
    is_image,
    rows_to_index,
    top_rows,
)
from avl_lab.policies.decode_tiering import WithTiering
from avl_lab.policies.registry import register
from avl_lab.policies.sparsevlm import after_image


def pivot_order(score: Tensor, chosen: Tensor) -> Tensor:
    """``[B, n]`` the ``chosen`` rows by descending ``score`` (``-1`` after a row's count)."""
    idx = rows_to_index(chosen)  # [B, n] in row order
    at = idx.clamp(min=0)
    s = score.gather(1, at).masked_fill(idx < 0, float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


@dataclass
class DARTSelect(Policy):
    """The method: before ``layer``, pivots and the tokens least similar to them."""

    layer: int = 2
    keep: float = 22.2
    tokens: int | None = None
    pivot_image: int = 4
    pivot_text: int = 4
    needs_prev_keys = True

    @property
    def prune_before_layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def setup(self, cache, ctx: Context) -> None:
        if self.layer >= ctx.num_layers:
            raise ValueError(f"`layer` {self.layer} is not a layer of this model (it has "
                             f"{ctx.num_layers}: 0..{ctx.num_layers - 1})")

    def prune_before(self, layer: Rows, ctx: Context) -> Tensor:
        keys, hidden = ctx.prev_keys, ctx.hidden
        if keys is None or hidden is None or keys.shape[2] != layer.valid.shape[1]:
            raise RuntimeError("dart needs the previous layer's keys over the same tokens (no "
                               "other stage may start at its layer)")
        img = is_image(layer)
        text = after_image(layer.valid, img)
        norm = keys.float().abs().sum(dim=(1, 3))  # [B, R] L1 over heads and channels
        pivots_img = top_rows(norm, img, self.pivot_image)
        pivots = torch.cat([pivot_order(norm, pivots_img),
                            pivot_order(norm, top_rows(norm, text, self.pivot_text))], 1)
        budget = (count_of(self.keep, ctx.n_image) if self.tokens is None
                  else torch.full_like(ctx.n_image, self.tokens))
        topk = budget // (self.pivot_image + self.pivot_text)  # [B]
        z = F.normalize(ctx.final_norm(hidden).float(), dim=-1)  # [B, R, D]
        free, picked = img & ~pivots_img, torch.zeros_like(img)
        for i in range(pivots.shape[1]):
            p = pivots[:, i]  # [B], -1 where the row has fewer pivots
            anchor = z.gather(1, p.clamp(min=0)[:, None, None].expand(-1, 1, z.shape[-1]))
            sim = (z * anchor).sum(-1)  # [B, R] cosine to the pivot
            take = top_rows(-sim, free, torch.where(p >= 0, topk, 0))
            picked, free = picked | take, free & ~take
        return ~img | pivots_img | picked


@register("dart", example={"layer": 2, "keep": 25.0})
@dataclass
class DART(WithTiering):
    """Parameters
    ----------
    layer : int
        Prune before this layer (≥ 1; pivots from layer - 1). Reference: 2.
    keep : float
        Image-token budget as % of each row's image tokens (22.2 ≈ 128 of 576).
    tokens : int, optional
        A fixed budget instead (the reference's ``max_num_trunction``).
    pivot_image, pivot_text : int
        Pivots among the image tokens and among the tokens after the image (reference 4, 4).
    S, C, K, T
        A-VL's decode tiering after the prefill method (each off when omitted).
    """

    layer: int = 2
    keep: float = 22.2
    tokens: int | None = None
    pivot_image: int = 4
    pivot_text: int = 4

    def method(self) -> Policy:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"`layer` must be an integer ≥ 1 (pivots come from layer - 1), "
                             f"got {self.layer!r}")
        check_percent("keep", self.keep, allow_none=False)
        checks = [("pivot_image", 1), ("pivot_text", 0)] + ([("tokens", 1)] if self.tokens is not None
                                                             else [])
        for name, least in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"`{name}` must be an integer ≥ {least}, got {value!r}")
        return DARTSelect(self.layer, self.keep, self.tokens, self.pivot_image, self.pivot_text)
