"""Idefics3 and SmolVLM: the text decoder sits at ``model.model.text_model`` (not
``language_model``); image tokens at ``config.image_token_id``."""

from __future__ import annotations

from avl_lab.engine.families.base import Family, register_family


@register_family
class Idefics3(Family):
    name = "Idefics3 / SmolVLM"
    model_types = ("idefics3", "smolvlm")
    classes = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    text_model_attr = "text_model"
