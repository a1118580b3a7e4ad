"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision: the default answers hold (1-D positions, image
tokens at ``config.image_token_id``, OneVision's video tokens at ``config.video_token_id``).
LLaVA-1.5 and LLaVA-NeXT read a CLIP tower, whose CLS attention pre-LLM policies may read
(:mod:`avl_lab.engine.vision`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from avl_lab.engine.families.base import Family, register_family
from avl_lab.engine.vision import VisionTap


def _feature_layer(model: nn.Module) -> nn.Module:
    """The CLIP encoder layer whose output the model reads (``vision_feature_layer``)."""
    cfg = model.config
    layer, strategy = cfg.vision_feature_layer, cfg.vision_feature_select_strategy
    if not isinstance(layer, int) or layer == 0:
        raise ValueError(f"pre-LLM policies need one vision_feature_layer ≠ 0, got {layer!r}")
    if strategy != "default":
        raise ValueError(f"pre-LLM policies need vision_feature_select_strategy='default' (CLS "
                         f"not an image token), got {strategy!r}")
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    # hidden_states[i] is layer i-1's output (hidden_states[0]: the embeddings).
    return layers[layer if layer < 0 else layer - 1]


@register_family
class Llava(Family):
    name = "LLaVA-1.5"
    model_types = ("llava",)
    classes = ("LlavaForConditionalGeneration",)
    why_no_vision = ""

    def vision_tap(self, model: nn.Module) -> VisionTap:
        def pack(ids: Tensor, info: Any) -> list[Tensor]:
            return list(ids)  # one crop per image, its patches in order

        return VisionTap(_feature_layer(model), model.model.multi_modal_projector, pack)


@register_family
class LlavaNext(Family):
    name = "LLaVA-NeXT"
    model_types = ("llava_next",)
    classes = ("LlavaNextForConditionalGeneration",)
    why_no_vision = ""

    def vision_tap(self, model: nn.Module) -> VisionTap:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = model.config

        def pack(ids: Tensor, image_sizes: Any) -> list[Tensor]:
            """The stock packing (base crop, unpadded grid, newline tokens) applied to patch ids."""
            if image_sizes is None:
                raise RuntimeError("avl_lab: LLaVA-NeXT's pre-LLM policies need `image_sizes`")
            counts = [image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                                patch_size=cfg.vision_config.image_size)
                      for s in image_sizes]
            per_image = torch.split(ids, counts)
            packed, _ = model.model.pack_image_features(
                list(per_image), image_sizes, cfg.vision_feature_select_strategy,
                image_newline=torch.tensor([-1.0], device=ids.device))
            return list(packed)

        return VisionTap(_feature_layer(model), model.model.multi_modal_projector, pack)


@register_family
class LlavaOneVision(Family):
    name = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    classes = ("LlavaOnevisionForConditionalGeneration",)
    vision_token_attrs = ("image_token_id", "video_token_id")
    why_no_vision = "its SigLIP tower has no CLS token"
