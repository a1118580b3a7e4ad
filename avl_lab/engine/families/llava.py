"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: the default answers hold (1-D positions, image
tokens at ``config.image_token_id``, OneVision's video tokens at ``config.video_token_id``)."""

from __future__ import annotations

from avl_lab.engine.families.base import Family, register_family


@register_family
class Llava(Family):
    name = "LLaVA-1.5"
    model_types = ("llava",)
    classes = ("LlavaForConditionalGeneration",)


@register_family
class LlavaNext(Family):
    name = "LLaVA-NeXT"
    model_types = ("llava_next",)
    classes = ("LlavaNextForConditionalGeneration",)


@register_family
class LlavaOneVision(Family):
    name = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    classes = ("LlavaOnevisionForConditionalGeneration",)
    vision_token_attrs = ("image_token_id", "video_token_id")
