"""A small randomly initialised Gemma 3 (SigLIP + Gemma 3 text), built fully offline.

The text decoder mixes sliding-window and global layers like the real model (default
``layer_types`` sliding, sliding, full, sliding with a 16-token window, far shorter than a
prompt with one 16-token image), and keeps stock Gemma 3's bidirectional attention inside each
image block (the processor returns ``token_type_ids``; pass them to ``generate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from avl_lab.models.tiny_common import (
    DecoderWidths,
    build_seeded,
    text_kwargs,
    vision_kwargs,
    with_overrides,
)
from avl_lab.models.tokenizer import tiny_tokenizer

BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
IMAGE_TOKEN = "<image_soft_token>"
SPECIALS = (BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN, "<start_of_turn>", "<end_of_turn>")

# Gemma 3's turn format; an image item renders as the boi token, which the processor expands
# to "\n\n<start_of_image>" + mm_tokens_per_image * "<image_soft_token>" + "<end_of_image>\n\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _default_layer_types() -> list[str]:
    return ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


@dataclass
class TinyGemma3Config(DecoderWidths):
    """Sizes of a tiny random Gemma 3; every field can be overridden by keyword.

    The decoder and vision sizes are those of :class:`~avl_lab.models.tiny_common.DecoderWidths`;
    the decoder's layer count is ``len(layer_types)``.
    """

    mm_tokens_per_image: int = 16
    """Image tokens per image (a square number); the vision patches are average-pooled to it."""
    image_size: int = 32
    patch_size: int = 4
    head_dim: int = 16
    layer_types: list[str] = field(default_factory=_default_layer_types)
    """One entry per decoder layer, ``"sliding_attention"`` or ``"full_attention"``."""
    sliding_window: int = 16

    def __post_init__(self) -> None:
        side = math.isqrt(self.mm_tokens_per_image)
        patches = self.image_size // self.patch_size
        if side * side != self.mm_tokens_per_image or side <= 0 or patches % side:
            raise ValueError(
                "`mm_tokens_per_image` must be a square whose side divides image_size // "
                f"patch_size = {patches}, got {self.mm_tokens_per_image}"
            )
        if not set(self.layer_types) <= {"sliding_attention", "full_attention"}:
            raise ValueError(f"unknown layer types in {self.layer_types}")
        super().__post_init__()

    @property
    def num_hidden_layers(self) -> int:
        """Decoder layers: one per ``layer_types`` entry."""
        return len(self.layer_types)


def _tokenizer(cfg: TinyGemma3Config) -> PreTrainedTokenizerFast:
    named = {"image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN}
    return tiny_tokenizer(cfg.vocab_size, extra_specials=SPECIALS, named_specials=named)


def _config(cfg: TinyGemma3Config, tok: PreTrainedTokenizerFast) -> Gemma3Config:
    text = Gemma3TextConfig(
        **text_kwargs(cfg, tok),
        head_dim=cfg.head_dim,
        query_pre_attn_scalar=cfg.head_dim,
        layer_types=list(cfg.layer_types),
        sliding_window=cfg.sliding_window,
    )
    vision = SiglipVisionConfig(
        **vision_kwargs(cfg),
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=cfg.mm_tokens_per_image,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    config._attn_implementation = "sdpa"
    return config


def _processor(cfg: TinyGemma3Config, tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    image_processor = Gemma3ImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size}, do_convert_rgb=True
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=cfg.mm_tokens_per_image,
        chat_template=CHAT_TEMPLATE,
    )


def build(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a small random ``Gemma3ForConditionalGeneration`` and its ``Gemma3Processor``.

    ``seed`` seeds the weights; ``overrides`` are fields of :class:`TinyGemma3Config`. Returns
    ``(model, processor)``:
        The model in eval mode (fp32, sdpa for text and vision) and its processor (left
        padding; 16 image tokens per image whatever its size).
    """
    cfg = with_overrides(TinyGemma3Config, overrides, "gemma3")
    tok = _tokenizer(cfg)
    model = build_seeded(
        Gemma3ForConditionalGeneration, _config(cfg, tok), tok, seed, _init_projection
    )
    return model, _processor(cfg, tok)


def _init_projection(model: Gemma3ForConditionalGeneration) -> None:
    """Stock init zeroes the image projection, which would make every image token the same."""
    proj = model.model.multi_modal_projector.mm_input_projection_weight
    torch.nn.init.normal_(proj, std=model.config.initializer_range)


BUILDERS: dict[str, Callable[..., tuple[PreTrainedModel, ProcessorMixin]]] = {"gemma3": build}
