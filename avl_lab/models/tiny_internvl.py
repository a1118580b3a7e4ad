"""A small randomly initialised InternVL (InternViT + Qwen2), built fully offline.

Dynamic tiling as in the real model: the GOT-OCR2 image processor cuts each image into a grid of
tiles whose aspect ratio is closest to the image's (up to ``max_patches`` tiles, plus a thumbnail
when there is more than one), and each tile becomes ``image_seq_length`` tokens after the 2x2
pixel shuffle, wrapped in ``<img>`` ... ``</img>``: 16 tokens for a square image and 48 for a
wide one with the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Config,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.video_processing_utils import BaseVideoProcessor

from avl_lab.models.compat import internvl_video_processor, processors_without_torchvision
from avl_lab.models.tiny_common import (
    DecoderSizes,
    build_seeded,
    text_kwargs,
    vision_kwargs,
    with_overrides,
)
from avl_lab.models.tokenizer import tiny_tokenizer

START_IMAGE = "<img>"
END_IMAGE = "</img>"
CONTEXT_IMAGE = "<IMG_CONTEXT>"
VIDEO_TOKEN = "<video>"
SPECIALS = (START_IMAGE, END_IMAGE, CONTEXT_IMAGE, VIDEO_TOKEN, "<|im_start|>", "<|im_end|>")

# The InternVL-hf chat format: an image item renders as "<IMG_CONTEXT>\n", which the processor
# expands to "<img>" + tiles * image_seq_length * "<IMG_CONTEXT>" + "</img>".
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% elif c['type'] == 'video' %}<video>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

processors_without_torchvision()


@dataclass
class TinyInternVLConfig(DecoderSizes):
    """Sizes of a tiny random InternVL; every field can be overridden by keyword."""

    image_size: int = 32
    """Side in pixels of one tile."""
    patch_size: int = 4
    """ViT patch size; ``(image_size // patch_size // 2) ** 2`` tokens per tile after the
    pixel shuffle."""
    max_patches: int = 2
    """Most tiles per image (a thumbnail is added when there is more than one)."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or (self.image_size // self.patch_size) % 2:
            raise ValueError(
                "`image_size // patch_size` must be an even whole number, got "
                f"{self.image_size} / {self.patch_size}"
            )
        if self.max_patches < 1:
            raise ValueError(f"`max_patches` must be >= 1, got {self.max_patches}")
        super().__post_init__()

    @property
    def image_seq_length(self) -> int:
        return (self.image_size // self.patch_size // 2) ** 2


def _tokenizer(cfg: TinyInternVLConfig) -> PreTrainedTokenizerFast:
    named = {
        "start_image_token": START_IMAGE,
        "end_image_token": END_IMAGE,
        "context_image_token": CONTEXT_IMAGE,
        "video_token": VIDEO_TOKEN,
    }
    return tiny_tokenizer(cfg.vocab_size, extra_specials=SPECIALS, named_specials=named)


def _config(cfg: TinyInternVLConfig, tok: PreTrainedTokenizerFast) -> InternVLConfig:
    text = Qwen2Config(**text_kwargs(cfg, tok))
    vision = InternVLVisionConfig(
        **vision_kwargs(cfg),
        image_size=[cfg.image_size, cfg.image_size],
        patch_size=[cfg.patch_size, cfg.patch_size],
    )
    config = InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.context_image_token_id,
        image_seq_length=cfg.image_seq_length,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        # Real InternVL ties the LM head to the embeddings; a random tied model just repeats its
        # last token, which makes greedy outputs useless as a test signal.
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def _processor(cfg: TinyInternVLConfig, tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    size = {"height": cfg.image_size, "width": cfg.image_size}
    image_processor = GotOcr2ImageProcessorPil(
        size=size, crop_to_patches=True, min_patches=1, max_patches=cfg.max_patches
    )
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=_video_processor(size),
        image_seq_length=cfg.image_seq_length,
        chat_template=CHAT_TEMPLATE,
    )


def _video_processor(size: dict[str, int]) -> BaseVideoProcessor:
    cls = internvl_video_processor()
    if cls is not BaseVideoProcessor:
        return cls(size=size)
    return BaseVideoProcessor(
        size=size,
        resample=PILImageResampling.BICUBIC,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def build(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a small random ``InternVLForConditionalGeneration`` and its ``InternVLProcessor``.

    ``seed`` seeds the weights; ``overrides`` are fields of :class:`TinyInternVLConfig`. Returns
    ``(model, processor)``:
        The model in eval mode (fp32, sdpa for text and vision) and its processor
        (``GotOcr2ImageProcessorPil``, left padding). Pass one image per prompt as a flat list,
        ``images=[img0, img1]`` (nested ``[[img0], [img1]]`` works too).
    """
    cfg = with_overrides(TinyInternVLConfig, overrides, "internvl")
    tok = _tokenizer(cfg)
    model = build_seeded(InternVLForConditionalGeneration, _config(cfg, tok), tok, seed)
    return model, _processor(cfg, tok)


BUILDERS: dict[str, Callable[..., tuple[PreTrainedModel, ProcessorMixin]]] = {"internvl": build}
