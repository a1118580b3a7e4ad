"""Small randomly initialised LLaVA / LLaVA-NeXT models, built fully offline."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Protocol

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from avl_lab.models.tiny_common import (
    DecoderSizes,
    build_seeded,
    text_kwargs,
    vision_kwargs,
    with_overrides,
)
from avl_lab.models.tokenizer import tiny_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %} {% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}"
    "{% endfor %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class TinyConfig(DecoderSizes):
    """Sizes of a tiny random LLaVA; every field can be overridden by keyword."""

    image_seq_length: int = 64
    """Image tokens per image (LLaVA) or per base tile (LLaVA-NeXT); a square number."""
    patch_size: int = 4
    """ViT patch size in pixels; image side = sqrt(image_seq_length) * patch_size."""

    def __post_init__(self) -> None:
        side = math.isqrt(self.image_seq_length)
        if self.image_seq_length <= 0 or side * side != self.image_seq_length:
            raise ValueError(
                f"`image_seq_length` must be a positive square number, got {self.image_seq_length}"
            )
        super().__post_init__()

    @property
    def image_size(self) -> int:
        return math.isqrt(self.image_seq_length) * self.patch_size


class LlavaSizes(Protocol):
    """What the LLaVA builders read of a config (:class:`TinyConfig`, ``AvlTinyConfig``)."""

    image_size: int
    patch_size: int
    image_seq_length: int
    vision_hidden_size: int


def llava_config(kind: str, cfg: LlavaSizes, tok: Any) -> LlavaConfig | LlavaNextConfig:
    """The LLaVA (``kind="llava"``) or LLaVA-NeXT config of ``cfg``'s sizes: a CLIP ViT, the
    two-layer projector, a Llama decoder; sdpa attention."""
    common = dict(
        vision_config=CLIPVisionConfig(**vision_kwargs(cfg), image_size=cfg.image_size,
                                       patch_size=cfg.patch_size,
                                       projection_dim=cfg.vision_hidden_size),
        text_config=LlamaConfig(**text_kwargs(cfg, tok)),
        image_token_id=tok.image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    if kind == "llava":
        config = LlavaConfig(image_seq_length=cfg.image_seq_length, **common)
    else:
        config = LlavaNextConfig(image_grid_pinpoints=_pinpoints(cfg.image_size), **common)
    config._attn_implementation = "sdpa"
    return config


def llava_processor(kind: str, cfg: LlavaSizes, tok: Any) -> ProcessorMixin:
    """The torchvision-free LLaVA (or LLaVA-NeXT) processor with the chat template."""
    side = cfg.image_size
    common = dict(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        do_convert_rgb=True,
    )
    if kind == "llava":
        image_processor, cls = CLIPImageProcessorPil(**common), LlavaProcessor
    else:
        image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=_pinpoints(side), **common)
        cls = LlavaNextProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def _pinpoints(side: int) -> list[list[int]]:
    return [[side, 2 * side], [2 * side, side], [2 * side, 2 * side]]


#: Modules with a ``BUILDERS`` dict for the other families, imported on first use.
_FAMILY_MODULES = {
    "llava_onevision": "tiny_onevision",
    "qwen2_vl": "tiny_qwen",
    "qwen2_5_vl": "tiny_qwen",
    "qwen3_vl": "tiny_qwen",
    "gemma3": "tiny_gemma3",
    "idefics3": "tiny_idefics3",
    "smolvlm": "tiny_idefics3",
    "internvl": "tiny_internvl",
}
KINDS: tuple[str, ...] = ("llava", "llava_next", *_FAMILY_MODULES)


def tiny_random(
    kind: str = "llava", seed: int = 0, **overrides: Any
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a small random model of one supported family, fully offline.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`: ``"llava"``, ``"llava_next"``, ``"llava_onevision"``,
        ``"qwen2_vl"``, ``"qwen2_5_vl"``, ``"qwen3_vl"``, ``"gemma3"``, ``"idefics3"``,
        ``"smolvlm"``, ``"internvl"``.
    seed : int
        Seeds the weights; the same seed gives the same model.
    **overrides
        For LLaVA / LLaVA-NeXT, fields of :class:`TinyConfig`, e.g. ``image_seq_length=576``
        for LLaVA-1.5's layout; for the other families, the fields of their builder's config.

    Returns
    -------
    (model, processor)
        The model in eval mode (fp32, sdpa) and its processor (left padding, a chat template).
    """
    if kind in _FAMILY_MODULES:
        module = importlib.import_module(f"avl_lab.models.{_FAMILY_MODULES[kind]}")
        return module.BUILDERS[kind](seed=seed, **overrides)
    if kind not in ("llava", "llava_next"):
        raise ValueError(f"`kind` must be one of {', '.join(KINDS)}; got {kind!r}")
    cfg = with_overrides(TinyConfig, overrides, "tiny_random")
    tok = tiny_tokenizer(cfg.vocab_size)
    model_cls = LlavaForConditionalGeneration if kind == "llava" else LlavaNextForConditionalGeneration
    return build_seeded(model_cls, llava_config(kind, cfg, tok), tok, seed), llava_processor(kind, cfg, tok)
