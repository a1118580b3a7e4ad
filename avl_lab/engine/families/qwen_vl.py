"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

- Vision tokens: ``config.image_token_id`` (``<|image_pad|>``) and ``config.video_token_id``
  (``<|video_pad|>``); video frames are vision tokens for every policy.
- Positions: 3-D M-RoPE. ``generate`` forms ``position_ids`` ``[4, B, P]`` (text row + t/h/w)
  with ``get_rope_index`` and keeps ``rope_deltas`` on the model; decode positions are the
  text position + ``rope_deltas``. The decoder layers receive ``position_embeddings`` whose
  sequence axis is ``-2`` (``[3, B, P, D]`` for Qwen2/2.5, ``[B, P, D]`` for Qwen3) and the text
  ``position_ids`` ``[B, P]``; prefill pruning gathers both, so every kept token keeps its
  original (t, h, w) position.
- Qwen3-VL's DeepStack adds visual features to the hidden states after the first decoder
  layers (``Qwen3VLTextModel._deepstack_process`` with ``visual_pos_masks`` ``[B, P]`` and one
  ``[n_visual, D]`` tensor per layer). When prefill pruning cuts the hidden states before the
  last of those layers, the mask and the embeddings are cut to the kept tokens too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from avl_lab.engine.families.base import Family, register_family

if TYPE_CHECKING:
    from avl_lab.engine.generation import Run
    from avl_lab.engine.stages import PruneState


@register_family
class Qwen2VL(Family):
    name = "Qwen2-VL / Qwen2.5-VL"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    classes = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    vision_token_attrs = ("image_token_id", "video_token_id")
    renumbers_positions = False
    why_no_vision = "its ViT has no CLS token and merges 2×2 patches before the LLM"
    why_not_renumber = ("3-D M-RoPE: a token's (t, h, w) position is what places it in the "
                        "image; renumbering is not defined")


@register_family
class Qwen3VL(Qwen2VL):
    name = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    classes = ("Qwen3VLForConditionalGeneration",)

    def capture_extras(self, run: Run, text_kwargs: dict[str, Any]) -> None:
        embeds = text_kwargs.get("deepstack_visual_embeds")
        if embeds is not None:
            run.extras["deepstack"] = (text_kwargs["visual_pos_masks"], embeds)

    def gather_extras(self, run: Run, stage: PruneState) -> None:
        captured = run.extras.get("deepstack")
        if captured is None:
            return
        mask, embeds = captured  # [B, m_prev] bool, list of [n_visual, D]
        B, m_prev = mask.shape  # which of the previous stage's tokens this stage keeps:
        stays = torch.zeros(B, m_prev + 1, dtype=torch.bool, device=mask.device)
        stays.scatter_(1, stage.rel.masked_fill(~stage.valid, m_prev), True)
        stays = stays[:, :m_prev]
        kept_visual = stays[mask]  # [n_visual] in the row-major order of ``embeds``' rows
        for i, e in enumerate(embeds):  # the decoder loop indexes this very list
            embeds[i] = e[kept_visual]
        # The loop holds this tensor object: reshape it in place to the stage's tokens [B, m].
        mask.set_(mask.gather(1, stage.rel) & stage.valid)
