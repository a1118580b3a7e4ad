"""VisPruner: per crop, the important tokens by CLS attention, then diverse ones by removing
duplicates, before the projector.

Paper: https://arxiv.org/abs/2412.01818; code: Theia-4869/VisPruner @aefa01a,
``llava/model/llava_arch.py`` (``encode_images`` l.141-186),
``llava/model/multimodal_encoder/clip_encoder.py`` (``feature_select`` l.36-52) and
``llava/eval/model_vqa_loader.py`` (``--visual_token_num 576 --important_ratio 0.5``; the
scripts' settings are 64, 128 and 192 tokens). Followed, per crop:

- Important: ``int(T · r)`` patches with the largest CLS attention of the select layer,
  averaged over heads (l.148-156).
- Diverse: the rest, in descending attention order, are thinned until ``T − int(T·r)`` remain:
  each round splits them into even and odd places, scores each even one by its largest cosine
  similarity (of the select layer's features) to an odd one, and drops the ``r = min(8, R −
  T_div)`` most similar even ones (l.159-175).
- The kept patches stay in their original order (an index mask, l.177-183); LLaVA-NeXT's
  newline tokens stay; the sequence is rebuilt from the kept tokens (``positions=renumber``).

Differences: ties in the ranking go to the earlier patch (``argsort`` leaves them open); an odd
R splits into ceil(R/2) even and floor(R/2) odd places (the reference's indexing fails there;
LightCompress instead adds one important token to make N − T_imp even); the budget may be
``keep``% of each crop's patches. LightCompress (``vispruner.py``) agrees otherwise on LLaVA
and, on Qwen2.5-VL (no CLS), ranks by the mean attention each token receives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avl_lab.policies.base import Context, Policy, Rows, check_percent
from avl_lab.policies.decode_tiering import WithTiering
from avl_lab.policies.pre_llm import PreLLM, check_tokens, per_crop_budget, slots_cut
from avl_lab.policies.registry import register


def important_then_diverse(attn: Tensor, features: Tensor, total: int, important: int) -> Tensor:
    """One crop: the kept patch indices (important first, then diverse) from ``attn`` ``[N]`` and
    the patch ``features`` ``[N, C]``."""
    order = torch.sort(attn.float(), descending=True, stable=True).indices
    keep, rest = order[:important], order[important:]
    diverse = total - important
    unit = F.normalize(features.float(), dim=-1)
    while diverse > 0:
        r = min(8, rest.numel() - diverse)
        if r <= 0:
            break
        a, b = rest[0::2], rest[1::2]
        score = (unit[a] @ unit[b].T).max(-1).values
        a = a[torch.sort(score, descending=True, stable=True).indices[r:]]
        rest = torch.cat([a, b])
    return torch.cat([keep, rest]) if diverse > 0 else keep


@dataclass
class VisPrunerSelect(PreLLM):
    """The method, per crop; the kept patches' tokens stay at their columns."""

    keep: float = 22.2
    tokens: int | None = None
    important: float = 50.0
    needs_vision = True

    def prune_input(self, layer: Rows, ctx: Context) -> Tensor:
        v = ctx.vision
        n = v.cls_attn.shape[-1]
        total = per_crop_budget(self.keep, self.tokens, n)
        important = int(total * self.important / 100.0 + 1e-9)
        attn = v.cls_attn.float().mean(1)  # [crops, N]
        patches = v.features[:, 1:]
        picked = [v.slot[i, important_then_diverse(attn[i], patches[i], total, important)]
                  for i in range(attn.shape[0])]
        slots = torch.cat(picked)
        mapped = torch.zeros(layer.valid.numel(), dtype=torch.bool, device=slots.device)
        mapped[v.slot[v.slot >= 0]] = True  # columns that hold a patch (not a newline)
        newline = torch.cat(v.image_slots)
        newline = newline[~mapped[newline]]
        return slots_cut(layer, ctx, torch.cat([slots[slots >= 0], newline]))


@register("vispruner", example={"keep": 25.0, "positions": "keep"})
@dataclass
class VisPruner(WithTiering):
    """Parameters
    ----------
    keep : float
        % of each crop's patches kept (22.2 ≈ the scripts' 128 of 576).
    tokens : int, optional
        A fixed number per crop instead (``--visual_token_num``).
    important : float
        % of them chosen by attention, the rest by diversity (``--important_ratio`` 0.5: 50).
    positions : str
        ``renumber`` (reference) or ``keep``.
    S, C, K, T
        A-VL's decode tiering after the prefill method (each off when omitted).
    """

    keep: float = 22.2
    tokens: int | None = None
    important: float = 50.0
    positions: str = "renumber"

    def method(self) -> Policy:
        check_tokens(self.keep, self.tokens, self.positions)
        check_percent("important", self.important, allow_none=False)
        return VisPrunerSelect(positions=self.positions, keep=self.keep, tokens=self.tokens,
                               important=self.important)
