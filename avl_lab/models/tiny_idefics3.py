"""Small randomly initialised Idefics3 and SmolVLM models, built fully offline.

Both families share one layout: a SigLIP-style vision tower, a pixel-shuffle connector
(``scale_factor**2`` patches per token) and a Llama text model at ``model.model.text_model``.
Image splitting is on: the processor resizes the longest edge to ``split_factor * tile_size``,
cuts the image into ``tile_size`` tiles and appends a global view, so images of different
aspect ratios give different image-token counts (``image_seq_len`` tokens per tile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMProcessor,
    SmolVLMVisionConfig,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

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
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
VIDEO_TOKEN = "<video>"
IM_START = "<|im_start|>"
# The processors look tiles' "<row_i_col_j>" tags up as single tokens (grids up to 6 x 6).
ROW_COL_TOKENS = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
SPECIALS = (FAKE_TOKEN, GLOBAL_TOKEN, END_OF_UTTERANCE, VIDEO_TOKEN, IM_START) + ROW_COL_TOKENS

_CONTENT = (
    "{% if m['content'] is string %}: {{ m['content'] }}{% else %}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}<image>{% elif c['type'] == 'video' %}<video>{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n"
)
# Idefics3 ("<s>User:<image>Q<end_of_utterance>\nAssistant:") and SmolVLM (same after
# "<|im_start|>"), as the real checkpoints' templates render a user turn.
CHAT_TEMPLATES = {
    "idefics3": "{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}"
    + _CONTENT
    + "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}",
    "smolvlm": "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    + _CONTENT
    + "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}",
}

processors_without_torchvision()


@dataclass
class TinyIdefics3Config(DecoderSizes):
    """Sizes of a tiny random Idefics3 / SmolVLM; every field can be overridden by keyword."""

    tile_size: int = 32
    """Side in pixels of one vision-encoder tile (``max_image_size``)."""
    split_factor: int = 2
    """Images are resized to a longest edge of ``split_factor * tile_size`` and cut into tiles;
    ``1`` turns splitting off (one global view per image)."""
    patch_size: int = 8
    scale_factor: int = 2
    """Pixel-shuffle factor: ``(tile_size // patch_size / scale_factor) ** 2`` tokens per tile."""

    def __post_init__(self) -> None:
        patches = self.tile_size // self.patch_size
        if self.tile_size % self.patch_size or patches % self.scale_factor:
            raise ValueError(
                "`tile_size` must be a multiple of `patch_size` and `tile_size // patch_size` of "
                f"`scale_factor`, got {self.tile_size}, {self.patch_size}, {self.scale_factor}"
            )
        if not 1 <= self.split_factor <= 6:
            raise ValueError(f"`split_factor` must be in 1..6, got {self.split_factor}")
        super().__post_init__()

    @property
    def image_seq_len(self) -> int:
        return (self.tile_size // self.patch_size // self.scale_factor) ** 2


def _tokenizer(kind: str, cfg: TinyIdefics3Config) -> PreTrainedTokenizerFast:
    named = {
        "image_token": IMAGE_TOKEN,
        "fake_image_token": FAKE_TOKEN,
        "global_image_token": GLOBAL_TOKEN,
        "end_of_utterance_token": END_OF_UTTERANCE,
    }
    if kind == "smolvlm":
        named["video_token"] = VIDEO_TOKEN
    return tiny_tokenizer(cfg.vocab_size, extra_specials=SPECIALS, named_specials=named)


def _config(kind: str, cfg: TinyIdefics3Config, tok: PreTrainedTokenizerFast) -> Any:
    text = LlamaConfig(**text_kwargs(cfg, tok), head_dim=cfg.hidden_size // cfg.num_attention_heads)
    vision_cls, config_cls = (
        (Idefics3VisionConfig, Idefics3Config)
        if kind == "idefics3"
        else (SmolVLMVisionConfig, SmolVLMConfig)
    )
    vision = vision_cls(
        **vision_kwargs(cfg),
        image_size=cfg.tile_size,
        patch_size=cfg.patch_size,
    )
    config = config_cls(
        text_config=text,
        vision_config=vision,
        scale_factor=cfg.scale_factor,
        image_token_id=tok.image_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return config


def _processor(kind: str, cfg: TinyIdefics3Config, tok: PreTrainedTokenizerFast) -> ProcessorMixin:
    sizes = dict(
        size={"longest_edge": cfg.split_factor * cfg.tile_size},
        max_image_size={"longest_edge": cfg.tile_size},
        do_image_splitting=cfg.split_factor > 1,
        do_convert_rgb=True,
    )
    common = dict(
        tokenizer=tok, image_seq_len=cfg.image_seq_len, chat_template=CHAT_TEMPLATES[kind]
    )
    if kind == "idefics3":
        return Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**sizes), **common)
    # SmolVLMProcessor requires a video processor (and `num2words`); SmolVLMVideoProcessor
    # builds and saves without torchvision once allowed above (processing videos needs it).
    video = SmolVLMVideoProcessor(
        size={"longest_edge": cfg.tile_size}, max_image_size={"longest_edge": cfg.tile_size}
    )
    return SmolVLMProcessor(
        image_processor=SmolVLMImageProcessorPil(**sizes), video_processor=video, **common
    )


def _build(
    kind: str, seed: int, overrides: dict[str, Any]
) -> tuple[PreTrainedModel, ProcessorMixin]:
    cfg = with_overrides(TinyIdefics3Config, overrides, kind)
    tok = _tokenizer(kind, cfg)
    model_cls = (
        Idefics3ForConditionalGeneration if kind == "idefics3" else SmolVLMForConditionalGeneration
    )
    model = build_seeded(model_cls, _config(kind, cfg, tok), tok, seed)
    return model, _processor(kind, cfg, tok)


def build_idefics3(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a small random ``Idefics3ForConditionalGeneration`` and its ``Idefics3Processor``.

    ``seed`` seeds the weights; ``overrides`` are fields of :class:`TinyIdefics3Config`. Returns
    ``(model, processor)``:
        The model in eval mode (fp32, sdpa) and its processor (left padding). Pass images
        nested per prompt, ``images=[[img0], [img1]]``; a flat list is also split by the
        prompts' ``<image>`` counts.
    """
    return _build("idefics3", seed, overrides)


def build_smolvlm(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a small random ``SmolVLMForConditionalGeneration`` and its ``SmolVLMProcessor``.

    ``seed`` seeds the weights; ``overrides`` are fields of :class:`TinyIdefics3Config`. Returns
    ``(model, processor)``:
        The model in eval mode (fp32, sdpa) and its processor (left padding). Pass images
        nested per prompt, ``images=[[img0], [img1]]`` (a flat list is one prompt's images).
    """
    return _build("smolvlm", seed, overrides)


BUILDERS: dict[str, Callable[..., tuple[PreTrainedModel, ProcessorMixin]]] = {
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
}
