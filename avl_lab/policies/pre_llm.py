"""What the pre-LLM token methods share (VisionZip, VisPruner, DivPrune): a cut before layer 0,
its positions, per-image blocks of the prompt, and budgets counted per image or per crop.

The language model then runs on fewer tokens in every layer (:mod:`avl_lab.engine.stages`, a
stage from layer 0 on). The methods' reference code builds the input sequence from the kept
features, so the kept tokens are numbered 0, 1, ... (``positions=renumber``, their default);
``positions=keep`` keeps each token's original position (LightCompress's choice on
Qwen2.5-VL, and the only one on M-RoPE and Gemma 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avl_lab.engine.layout import Modality
from avl_lab.policies.base import Context, InputCut, Policy, Rows, check_percent
from avl_lab.policies.staged import check_positions

__all__ = ["PreLLM", "check_count", "check_tokens", "image_runs", "per_crop_budget", "slots_cut"]


def check_count(name: str, value: object, least: int = 1) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer ≥ ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"`{name}` must be an integer ≥ {least}, got {value!r}")


def check_tokens(keep: float, tokens: int | None, positions: str) -> None:
    """A budget as ``keep``% or a fixed number of ``tokens``, and a positions mode."""
    check_percent("keep", keep, allow_none=False)
    if tokens is not None:
        check_count("tokens", tokens)
    check_positions(positions)


def per_crop_budget(keep: float, tokens: int | None, n: int) -> int:
    """Tokens kept of ``n``: ``tokens``, or ``floor(keep% · n)`` (at least 1), as the
    references' ``int()`` rounds; ``ValueError`` when ``tokens`` exceeds ``n``."""
    if tokens is not None:
        if tokens > n:
            raise ValueError(f"`tokens` ({tokens}) exceeds the {n} tokens of an image (crop) of "
                             "this model; lower `tokens` or give `keep`")
        return tokens
    return max(1, min(n, int(n * keep / 100.0 + 1e-9)))


def image_runs(mod: Tensor) -> list[Tensor]:
    """The columns of each contiguous run of image tokens in one prompt row (``mod`` ``[P]``)."""
    cols = (mod == int(Modality.IMAGE)).nonzero()[:, 0]
    if cols.numel() == 0:
        return []
    breaks = (cols[1:] != cols[:-1] + 1).nonzero()[:, 0] + 1
    return list(torch.tensor_split(cols, breaks.tolist()))


def slots_cut(layer: Rows, ctx: Context, slots: Tensor, embeds: Tensor | None = None) -> Tensor | InputCut:
    """Keep every non-image column and the flat prompt indices ``slots`` (``b * P + column``);
    with ``embeds`` ``[len(slots), D]``, those columns carry them."""
    B, P = layer.valid.shape
    keep = torch.zeros(B * P, dtype=torch.bool, device=layer.valid.device)
    keep[slots] = True
    keep = keep.view(B, P) | ((layer.mod != int(Modality.IMAGE)) & layer.valid)
    if embeds is None:
        return keep
    hidden = ctx.hidden
    new = torch.zeros(B * P, hidden.shape[-1], dtype=embeds.dtype, device=hidden.device)
    new[slots] = embeds
    replace = torch.zeros(B * P, dtype=torch.bool, device=hidden.device)
    replace[slots] = True
    return InputCut(keep=keep, embeds=new.view(B, P, -1), replace=replace.view(B, P))


@dataclass
class PreLLM(Policy):
    """A cut before layer 0 with the given positions mode."""

    positions: str = "renumber"

    @property
    def prunes_input(self) -> bool:
        return True

    @property
    def prune_positions(self) -> str:
        return self.positions
