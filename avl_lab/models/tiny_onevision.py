"""A small randomly initialised LLaVA-OneVision (SigLIP + Qwen2), built fully offline.

AnyRes as in the real model: each image gives a base view plus a grid of tiles chosen from
``image_grid_pinpoints`` by aspect ratio, unpadded, with one newline token per feature row, so
images of different sizes give different image-token counts (36 for a square image, 52 for a
2:1 one with the defaults).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.llava_onevision.video_processing_llava_onevision import (
    LlavaOnevisionVideoProcessor,
)

from avl_lab.models.compat import processors_without_torchvision
from avl_lab.models.tiny_common import (
    DecoderSizes,
    build_seeded,
    text_kwargs,
    vision_kwargs,
    with_overrides,
)
from avl_lab.models.tokenizer import tiny_tokenizer

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIALS = (VIDEO_TOKEN, "<|im_start|>", "<|im_end|>")

# The real checkpoints' Qwen2 chat format; an image item renders as "<image>", which the
# processor expands to the row's AnyRes token count.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] if c['type'] == 'image' %}<image>{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'video' %}<video>{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}\n{{ c['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


processors_without_torchvision()


@dataclass
class TinyOnevisionConfig(DecoderSizes):
    """Sizes of a tiny random LLaVA-OneVision; every field can be overridden by keyword."""

    image_size: int = 16
    """Side in pixels of the base view and of each AnyRes tile."""
    patch_size: int = 4
    """SigLIP patch size; ``(image_size // patch_size) ** 2`` tokens per view."""
    max_tiles: int = 2
    """Grids up to ``max_tiles`` tiles in one direction (pinpoints 1x1, 1x2, 2x1, ...)."""
    vision_aspect_ratio: str = "anyres_max_9"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("`image_size` must be a multiple of `patch_size`")
        if self.max_tiles < 1:
            raise ValueError(f"`max_tiles` must be >= 1, got {self.max_tiles}")
        super().__post_init__()

    @property
    def pinpoints(self) -> list[list[int]]:
        """Tile grids as ``[height, width]`` in pixels: one row or one column of tiles."""
        side, n = self.image_size, self.max_tiles
        return (
            [[side, side]]
            + [[side, k * side] for k in range(2, n + 1)]
            + [[k * side, side] for k in range(2, n + 1)]
        )


def _tokenizer(cfg: TinyOnevisionConfig) -> PreTrainedTokenizerFast:
    named = {"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN}
    return tiny_tokenizer(cfg.vocab_size, extra_specials=SPECIALS, named_specials=named)


def _config(cfg: TinyOnevisionConfig, tok: PreTrainedTokenizerFast) -> LlavaOnevisionConfig:
    text = Qwen2Config(**text_kwargs(cfg, tok))
    vision = SiglipVisionConfig(
        **vision_kwargs(cfg),
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=cfg.pinpoints,
        vision_aspect_ratio=cfg.vision_aspect_ratio,
    )
    config._attn_implementation = "sdpa"
    return config


def _processor(cfg: TinyOnevisionConfig, tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    size = {"height": cfg.image_size, "width": cfg.image_size}
    image_processor = LlavaOnevisionImageProcessorPil(
        size=size, image_grid_pinpoints=cfg.pinpoints, do_convert_rgb=True
    )
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(cfg.image_size // cfg.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=cfg.vision_aspect_ratio,
        chat_template=CHAT_TEMPLATE,
    )


def build(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a small random ``LlavaOnevisionForConditionalGeneration`` and its processor.

    ``seed`` seeds the weights; ``overrides`` are fields of :class:`TinyOnevisionConfig`. Returns
    ``(model, processor)``:
        The model in eval mode (fp32, sdpa for text and vision) and its
        ``LlavaOnevisionProcessor`` (``LlavaOnevisionImageProcessorPil``, left padding). Pass one
        image per prompt as a flat list, ``images=[img0, img1]``, or nested, ``[[img0], [img1]]``.
    """
    cfg = with_overrides(TinyOnevisionConfig, overrides, "llava_onevision")
    tok = _tokenizer(cfg)
    model = build_seeded(LlavaOnevisionForConditionalGeneration, _config(cfg, tok), tok, seed)
    return model, _processor(cfg, tok)


BUILDERS: dict[str, Callable[..., tuple[PreTrainedModel, ProcessorMixin]]] = {
    "llava_onevision": build,
}
