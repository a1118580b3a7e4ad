"""Token layout of each prompt row: which positions are system, image or instruction tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor


class Modality(IntEnum):
    """What a cache row holds. ``PAD`` marks padding and filler rows."""

    PAD = -1
    SYSTEM = 0
    IMAGE = 1
    INSTRUCTION = 2
    GENERATED = 3


@dataclass
class Layout:
    """Per-row token layout of a left-padded prompt batch.

    Attributes
    ----------
    modality : Tensor
        ``[B, P]`` int8 :class:`Modality` codes.
    valid : Tensor
        ``[B, P]`` bool, False on padding.
    pos : Tensor
        ``[B, P]`` int64 logical (RoPE) positions, as ``generate`` computes them.
    """

    modality: Tensor
    valid: Tensor
    pos: Tensor

    @property
    def batch_size(self) -> int:
        return self.modality.shape[0]

    @property
    def length(self) -> int:
        return self.modality.shape[1]

    @property
    def n_image(self) -> Tensor:
        """``[B]`` image tokens per row."""
        return (self.modality == Modality.IMAGE).sum(1)

    @property
    def n_prompt(self) -> Tensor:
        """``[B]`` valid (non-padding) prompt tokens per row."""
        return self.valid.sum(1)

    def repeat_interleave(self, repeats: int) -> Layout:
        """The layout of a batch whose rows were each repeated ``repeats`` times."""
        if repeats == 1:
            return self
        return Layout(*(t.repeat_interleave(repeats, dim=0) for t in (self.modality, self.valid, self.pos)))


def token_layout(
    input_ids: Tensor, attention_mask: Tensor | None, image_token_id: int | Sequence[int]
) -> Layout:
    """Split each row of ``input_ids`` into system / image / instruction spans.

    System = valid tokens before the first image token, instruction = valid tokens after it
    that are not image tokens; a row without image tokens is all instruction. "Image" means
    any vision placeholder: video tokens count as image tokens.

    Parameters
    ----------
    input_ids : Tensor
        ``[B, P]`` token ids with the image placeholder expanded (as LLaVA processors do).
    attention_mask : Tensor or None
        ``[B, P]`` 1 for real tokens, 0 for padding (None = no padding).
    image_token_id : int or sequence of int
        The id(s) of the vision placeholder tokens (image, video).
    """
    valid = (
        torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.to(torch.bool)
    )
    ids = torch.as_tensor(image_token_id, device=input_ids.device).reshape(-1)
    is_image = torch.isin(input_ids, ids) & valid
    seen_image = is_image.cumsum(1) > 0  # at or after the first image token
    modality = torch.full_like(input_ids, int(Modality.INSTRUCTION), dtype=torch.int8)
    has_image = is_image.any(1, keepdim=True)
    modality[~seen_image & has_image] = int(Modality.SYSTEM)
    modality[is_image] = int(Modality.IMAGE)
    modality[~valid] = int(Modality.PAD)
    # Same positions as GenerationMixin: cumsum of the mask - 1, padding set to 1.
    pos = valid.long().cumsum(1) - 1
    pos = pos.masked_fill(~valid, 1)
    return Layout(modality=modality, valid=valid, pos=pos)
