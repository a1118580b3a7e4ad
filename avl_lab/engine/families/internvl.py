"""InternVL (2.5 / 3, the transformers port): image tokens are ``config.image_token_id``
(``<IMG_CONTEXT>``, 4× fewer after pixel shuffle), video frames use the same token."""

from __future__ import annotations

from avl_lab.engine.families.base import Family, register_family


@register_family
class InternVL(Family):
    why_no_vision = ("InternViT's patches reach the LLM pixel-shuffled, four per token, so no "
                     "token has a CLS attention of its own")
    name = "InternVL"
    model_types = ("internvl",)
    classes = ("InternVLForConditionalGeneration",)
