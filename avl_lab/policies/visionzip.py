"""VisionZip: per crop, the dominant tokens by CLS attention plus a few contextual tokens merged
from the rest, before the projector.

Paper: https://arxiv.org/abs/2412.04467; code: dvlab-research/VisionZip @3151f6d,
``visionzip/clip_encoder.py`` (``CLIPVisionTower_VisionZip.forward`` l.42-85),
``visionzip/utils.py`` (``CLIPAttention_forward``: the metric is the raw keys averaged over
heads, l.22 and l.93) and ``visionzip/main.py`` (``visionzip(model, dominant=191,
contextual=30)``, which passes ``dominant - 1`` patches). Followed, per crop, in the layer whose
output LLaVA reads:

- Dominant: the CLS token plus the ``dominant - 1`` patches with the largest CLS attention summed
  over heads (l.50-53), in their original order (``masked_select``, l.57).
- Contextual: the other M patches' keys, L2-normalised (l.60-64); ``contextual`` targets at
  ``0, step, 2·step, ...`` with ``step = max(1, M // contextual)`` (l.67-68); every other patch
  goes to its most cosine-similar target (l.71-74); a contextual token is the target's feature
  plus the mean of its assigned features (``target + aggregated``, l.75-80).
- The crop's tokens are ``[CLS, dominant..., contextual...]`` (l.83), through the projector.
  The LLM sees them in that order, numbered 0, 1, ... (``positions=renumber``). With
  ``positions=keep`` each dominant token stays at its own column (its own position), each
  contextual token takes its target's, and the CLS token the crop's first other column.

Differences: the attention is recomputed by a hook on the stock CLIP layer (no patched
``CLIPAttention``); ties in the ranking go to the earlier patch (``topk`` leaves them open);
the budget may be ``keep``% of each crop's patches with a contextual share (defaults: 38.4% with
13.6% contextual = the code's 191 + 30 of 576; the README's 54 + 10 of 576 is ``tokens=64,
contextual_share=15.6``); on LLaVA-NeXT each crop's tokens stay together, crop after crop, in
the first columns of the image's block (the reference puts the sub-crops' dominant tokens in
their full-grid order without newline tokens, then all their CLS tokens, then all contextual
tokens). LightCompress (``visionzip.py``) passes ``dominant`` patches, not ``dominant - 1``, so
it keeps one token more than the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avl_lab.policies.base import Context, InputCut, Policy, Rows, check_percent
from avl_lab.policies.decode_tiering import WithTiering
from avl_lab.policies.pre_llm import PreLLM, check_count, check_tokens, per_crop_budget, slots_cut
from avl_lab.policies.registry import register


def dominant_and_contextual(cls_attn: Tensor, keys: Tensor, features: Tensor, dominant: int,
                            contextual: int) -> tuple[Tensor, Tensor, Tensor]:
    """One crop: ``(dominant patch indices [d-1] in order, the contextual tokens' target patches
    [c], tokens [d + c, Dv])`` from ``cls_attn`` ``[H, N]``, ``keys`` ``[N, Dh]`` and
    ``features`` ``[1 + N, Dv]`` (CLS first); ``dominant`` counts the CLS token."""
    n = cls_attn.shape[-1]
    score = cls_attn.float().sum(0)
    top = torch.sort(score, descending=True, stable=True).indices[:dominant - 1]
    is_dom = torch.zeros(n, dtype=torch.bool, device=score.device)
    is_dom[top] = True
    dom = is_dom.nonzero()[:, 0]
    rest = (~is_dom).nonzero()[:, 0]
    m = rest.numel()
    c = min(contextual, m)
    patches = features[1:]
    tokens = [features[:1], patches[dom]]
    targets = torch.arange(0, m, max(1, m // c), device=score.device)[:c] if c else rest[:0]
    if c:
        metric = F.normalize(keys[rest].float(), dim=-1)
        others = torch.ones(m, dtype=torch.bool, device=score.device)
        others[targets] = False
        assign = (metric[others] @ metric[targets].T).argmax(1)  # [m - c] target of each
        one_hot = F.one_hot(assign, c).to(patches.dtype)  # [m - c, c]
        counts = one_hot.sum(0).clamp(min=1)[:, None]
        merged = one_hot.T @ patches[rest[others]] / counts
        tokens.append(patches[rest[targets]] + merged)
    return dom, rest[targets], torch.cat(tokens)


@dataclass
class VisionZipSelect(PreLLM):
    """The method, per crop, written into the first columns of each image's block."""

    keep: float = 38.4
    tokens: int | None = None
    contextual_share: float = 13.6
    needs_vision = True

    def counts(self, n: int) -> tuple[int, int]:
        """``(dominant incl. CLS, contextual)`` for a crop of ``n`` patches."""
        total = per_crop_budget(self.keep, self.tokens, n)
        contextual = min(total - 1, round(total * self.contextual_share / 100.0))
        return total - contextual, contextual

    def prune_input(self, layer: Rows, ctx: Context) -> InputCut:
        v = ctx.vision
        dominant, contextual = self.counts(v.cls_attn.shape[-1])
        if self.positions == "keep":
            return self._at_own_columns(layer, ctx, dominant, contextual)
        slots, embeds = [], []
        for cols, crops in zip(v.image_slots, v.image_crops, strict=True):
            seq = torch.cat([dominant_and_contextual(v.cls_attn[i], v.keys[i], v.features[i],
                                                     dominant, contextual)[2] for i in crops.tolist()])
            if seq.shape[0] > cols.numel():
                raise ValueError(f"visionzip keeps {seq.shape[0]} tokens of an image whose block "
                                 f"holds {cols.numel()}; lower `keep` / `tokens`")
            slots.append(cols[:seq.shape[0]])
            embeds.append(v.project(seq))
        return slots_cut(layer, ctx, torch.cat(slots), torch.cat(embeds))

    def _at_own_columns(self, layer: Rows, ctx: Context, dominant: int, contextual: int) -> InputCut:
        """``positions=keep``: each dominant patch at its own column, each contextual token at its
        target's, the CLS token at the crop's first other column (a patch LLaVA-NeXT's unpadding
        cut has no column and is dropped)."""
        v = ctx.vision
        slots, embeds = [], []
        for i in range(v.cls_attn.shape[0]):
            dom, targets, tokens = dominant_and_contextual(v.cls_attn[i], v.keys[i], v.features[i],
                                                           dominant, contextual)
            taken = torch.zeros(v.slot.shape[1], dtype=torch.bool, device=dom.device)
            taken[dom], taken[targets] = True, True
            free = (~taken & (v.slot[i] >= 0)).nonzero()[:1, 0]  # the CLS token's column
            where = torch.cat([v.slot[i, free], v.slot[i, dom], v.slot[i, targets]])
            rows = torch.cat([torch.arange(min(1, free.numel()), device=dom.device),
                              1 + torch.arange(dom.numel() + targets.numel(), device=dom.device)])
            placed = where >= 0
            slots.append(where[placed])
            embeds.append(v.project(tokens[rows[placed]]))
        return slots_cut(layer, ctx, torch.cat(slots), torch.cat(embeds))


@register("visionzip", example={"keep": 25.0, "positions": "keep"})
@dataclass
class VisionZip(WithTiering):
    """Parameters
    ----------
    keep : float
        % of each crop's patches kept as tokens (38.4: the code's 191 + 30 of 576).
    tokens : int, optional
        A fixed number of tokens per crop instead (README: 64, 128, 192).
    contextual_share : float
        % of those tokens that are contextual (13.6: 30 of 221; the README's 10 of 64: 15.6).
    positions : str
        ``renumber`` (reference) or ``keep``.
    S, C, K, T
        A-VL's decode tiering after the prefill method (each off when omitted).
    """

    keep: float = 38.4
    tokens: int | None = None
    contextual_share: float = 13.6
    positions: str = "renumber"

    def method(self) -> Policy:
        check_tokens(self.keep, self.tokens, self.positions)
        if self.tokens is not None:
            check_count("tokens", self.tokens, least=2)
        if self.contextual_share != 0:
            check_percent("contextual_share", self.contextual_share)
        return VisionZipSelect(positions=self.positions, keep=self.keep, tokens=self.tokens,
                               contextual_share=self.contextual_share)
