"""Idefics3 and SmolVLM: the text decoder sits at ``model.model.text_model`` (not
``language_model``); image tokens at ``config.image_token_id``."""

from __future__ import annotations

from avl_lab.engine.families.base import Family, register_family


@register_family
class Idefics3(Family):
    why_no_vision = "its SigLIP tower has no CLS token (and its patches are pixel-shuffled)"
    name = "Idefics3 / SmolVLM"
    model_types = ("idefics3", "smolvlm")
    classes = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    text_model_attr = "text_model"
