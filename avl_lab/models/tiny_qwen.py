"""Small randomly initialised Qwen2-VL / Qwen2.5-VL / Qwen3-VL models, built fully offline.

Each builder in :data:`BUILDERS` returns ``(model, processor)``: the model in eval mode (fp32,
sdpa for text and vision, random weights seeded), grouped-query attention, M-RoPE; Qwen3-VL with
DeepStack (visual features added to the first decoder layers' hidden states). The processor
pads left, turns an image of a few tens of pixels into 4-30 merged image tokens (more pixels,
more tokens) and has a Qwen-style chat template.

Videos: Qwen's video processors need torchvision, which the lab does not install, so the
processors here are image-only subclasses (``TinyQwen2VLProcessor``, ...) and
:func:`video_inputs` / :func:`video_batch` build video inputs by hand, exactly in the layout
the Qwen processors produce (``pixel_values_videos``, ``video_grid_thw``, the expanded video
placeholder, ``mm_token_type_ids``; ``second_per_grid_ts`` for Qwen2.5-VL, frame timestamps
for Qwen3-VL). The subclasses are registered with ``AutoProcessor`` under private keys, so
``AutoProcessor.from_pretrained(dir)`` reloads a saved processor once this module is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    BatchFeature,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLVisionConfig,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import (
    Qwen2VLTextConfig,
    Qwen2VLVisionConfig,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.configuration_qwen3_vl import (
    Qwen3VLTextConfig,
    Qwen3VLVisionConfig,
)

from avl_lab.models.tiny_common import DecoderSizes, build_seeded, text_kwargs, with_overrides
from avl_lab.models.tokenizer import tiny_tokenizer

KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIALS = (IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
NAMED_SPECIALS = {
    "image_token": IMAGE_PAD,
    "video_token": VIDEO_PAD,
    "vision_start_token": VISION_START,
    "vision_end_token": VISION_END,
}
DEFAULT_FPS = 24.0
"""Frame rate the Qwen processors assume for frames passed without metadata."""

# Qwen's format (no default system turn, as Qwen3-VL): each image / video is
# <|vision_start|><|image_pad|><|vision_end|> / <|vision_start|><|video_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyQwenConfig(DecoderSizes):
    """Sizes of a tiny random Qwen VL model; every field can be overridden by keyword.

    The decoder and vision sizes are those of :class:`~avl_lab.models.tiny_common.DecoderSizes`;
    ``hidden_size`` must equal ``num_attention_heads * head_dim``.
    """

    head_dim: int = 16
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    """Rotary frequencies for (temporal, height, width); sums to ``head_dim // 2``."""
    patch_size: int = 8
    """ViT patch side in pixels; one merged token covers ``(patch_size * spatial_merge_size)**2``."""
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    min_image_tokens: int = 4
    """Merged tokens of the smallest image after resizing (smaller images are upscaled)."""
    max_image_tokens: int = 30
    """Merged tokens of the largest image after resizing (larger images are downscaled)."""
    deepstack_visual_indexes: tuple[int, ...] = (0, 1)
    """Qwen3-VL: vision layers whose merged features are added after decoder layers 0, 1, ..."""
    num_position_embeddings: int = 64
    """Qwen3-VL: learned vision position grid (a square number), resampled to each image."""

    def __post_init__(self) -> None:
        self.mrope_section = tuple(self.mrope_section)
        self.deepstack_visual_indexes = tuple(self.deepstack_visual_indexes)
        super().__post_init__()
        checks = [
            (self.hidden_size == self.num_attention_heads * self.head_dim,
             "`hidden_size` must equal `num_attention_heads * head_dim`"),
            (len(self.mrope_section) == 3 and 2 * sum(self.mrope_section) == self.head_dim,
             "`mrope_section` must be 3 numbers summing to `head_dim // 2`"),
            (self.vision_hidden_size % self.vision_heads == 0,
             "`vision_hidden_size` must be a multiple of `vision_heads`"),
            (1 <= self.min_image_tokens <= self.max_image_tokens,
             "need 1 <= `min_image_tokens` <= `max_image_tokens`"),
            (all(0 <= i < self.vision_layers for i in self.deepstack_visual_indexes),
             "`deepstack_visual_indexes` must index vision layers"),
            (len(self.deepstack_visual_indexes) <= self.num_hidden_layers,
             "more `deepstack_visual_indexes` than decoder layers"),
            (math.isqrt(self.num_position_embeddings) ** 2 == self.num_position_embeddings,
             "`num_position_embeddings` must be a square number"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self}")

    @property
    def token_side(self) -> int:
        """Pixels per side of one merged image token."""
        return self.patch_size * self.spatial_merge_size


class _ImageOnlyProcessor:
    """Mixin: a Qwen processor without its video processor (which needs torchvision).

    ``ProcessorMixin`` reads the sub-processors from ``__init__``'s signature, so this one has
    an image processor and a tokenizer only; save / load / ``__call__`` with images work as in
    the parent class. Build video inputs with :func:`video_batch`.
    """

    def __init__(
        self,
        image_processor: Qwen2VLImageProcessorPil | None = None,
        tokenizer: PreTrainedTokenizerFast | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class TinyQwen2VLProcessor(_ImageOnlyProcessor, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor."""


class TinyQwen2_5_VLProcessor(_ImageOnlyProcessor, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor."""


class TinyQwen3VLProcessor(_ImageOnlyProcessor, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor."""


# Private string keys: ``AutoProcessor`` finds these classes by the name saved in
# processor_config.json; the real Qwen configs keep their own processors.
for _cls in (TinyQwen2VLProcessor, TinyQwen2_5_VLProcessor, TinyQwen3VLProcessor):
    AutoProcessor.register(f"avl_lab.{_cls.__name__}", _cls, exist_ok=True)


@dataclass(frozen=True)
class _Family:
    config: type[PreTrainedConfig]
    model: type[PreTrainedModel]
    processor: type[ProcessorMixin]
    rope_theta: float


_FAMILIES = {
    "qwen2_vl": _Family(Qwen2VLConfig, Qwen2VLForConditionalGeneration, TinyQwen2VLProcessor, 1e6),
    "qwen2_5_vl": _Family(
        Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, TinyQwen2_5_VLProcessor, 1e6
    ),
    "qwen3_vl": _Family(Qwen3VLConfig, Qwen3VLForConditionalGeneration, TinyQwen3VLProcessor, 5e5),
}


def qwen_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The lab's offline tokenizer with Qwen's chat and vision special tokens (one id each)."""
    return tiny_tokenizer(vocab_size, extra_specials=SPECIALS, named_specials=NAMED_SPECIALS)


def _text_config(kind: str, cfg: TinyQwenConfig, tok: PreTrainedTokenizerFast) -> PreTrainedConfig:
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": _FAMILIES[kind].rope_theta,
        "mrope_section": list(cfg.mrope_section),
    }
    if kind == "qwen3_vl":
        rope["mrope_interleaved"] = True
        return Qwen3VLTextConfig(
            head_dim=cfg.head_dim, rope_parameters=rope, **text_kwargs(cfg, tok, bos_eos=False)
        )
    # Qwen2(.5)-VL text configs have no head_dim: it is hidden_size // num_attention_heads
    text_cls = Qwen2VLTextConfig if kind == "qwen2_vl" else Qwen2_5_VLTextConfig
    return text_cls(rope_parameters=rope, **text_kwargs(cfg, tok))


def _vision_config(kind: str, cfg: TinyQwenConfig) -> PreTrainedConfig:
    common: dict[str, Any] = dict(
        depth=cfg.vision_layers,
        num_heads=cfg.vision_heads,
        patch_size=cfg.patch_size,
        spatial_merge_size=cfg.spatial_merge_size,
        temporal_patch_size=cfg.temporal_patch_size,
    )
    if kind == "qwen2_vl":  # `embed_dim` is the ViT width, `hidden_size` the merger's output
        return Qwen2VLVisionConfig(
            embed_dim=cfg.vision_hidden_size, hidden_size=cfg.hidden_size, mlp_ratio=2, **common
        )
    widths = dict(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=2 * cfg.vision_hidden_size,
        out_hidden_size=cfg.hidden_size,
    )
    if kind == "qwen2_5_vl":  # windows of 2x2 merged tokens in all but the last layer
        return Qwen2_5_VLVisionConfig(
            window_size=2 * cfg.token_side,
            fullatt_block_indexes=[cfg.vision_layers - 1],
            **widths,
            **common,
        )
    return Qwen3VLVisionConfig(
        num_position_embeddings=cfg.num_position_embeddings,
        deepstack_visual_indexes=list(cfg.deepstack_visual_indexes),
        **widths,
        **common,
    )


def _image_processor(kind: str, cfg: TinyQwenConfig) -> Qwen2VLImageProcessorPil:
    extra = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if kind == "qwen3_vl" else {}
    return Qwen2VLImageProcessorPil(
        patch_size=cfg.patch_size,
        merge_size=cfg.spatial_merge_size,
        temporal_patch_size=cfg.temporal_patch_size,
        min_pixels=cfg.min_image_tokens * cfg.token_side**2,
        max_pixels=cfg.max_image_tokens * cfg.token_side**2,
        **extra,
    )


def tiny_qwen(
    kind: str = "qwen2_vl", seed: int = 0, **overrides: Any
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a small random Qwen2-VL, Qwen2.5-VL or Qwen3-VL model and its processor.

    Parameters
    ----------
    kind : str
        ``"qwen2_vl"``, ``"qwen2_5_vl"`` or ``"qwen3_vl"``.
    seed : int
        Seeds the weights; the same seed gives the same model.
    **overrides
        Fields of :class:`TinyQwenConfig`, e.g. ``max_image_tokens=64``.

    Returns
    -------
    (model, processor)
        The model in eval mode (fp32, sdpa, no eos) and its image-only processor (left
        padding, Qwen chat template).
    """
    if kind not in _FAMILIES:
        raise ValueError(f"`kind` must be one of {list(KINDS)}, got {kind!r}")
    cfg = with_overrides(TinyQwenConfig, overrides, "tiny_qwen")
    tok = qwen_tokenizer(cfg.vocab_size)
    family = _FAMILIES[kind]
    config = family.config(
        text_config=_text_config(kind, cfg, tok),
        vision_config=_vision_config(kind, cfg),
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
    )
    config._attn_implementation = "sdpa"  # the setter sets the text and vision configs too
    model = build_seeded(family.model, config, tok, seed)
    processor = family.processor(
        image_processor=_image_processor(kind, cfg), tokenizer=tok, chat_template=CHAT_TEMPLATE
    )
    return model, processor


def qwen2_vl(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random ``Qwen2VLForConditionalGeneration``; see :func:`tiny_qwen`."""
    return tiny_qwen("qwen2_vl", seed, **overrides)


def qwen2_5_vl(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random ``Qwen2_5_VLForConditionalGeneration``; see :func:`tiny_qwen`."""
    return tiny_qwen("qwen2_5_vl", seed, **overrides)


def qwen3_vl(seed: int = 0, **overrides: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random ``Qwen3VLForConditionalGeneration`` with DeepStack; see :func:`tiny_qwen`."""
    return tiny_qwen("qwen3_vl", seed, **overrides)


BUILDERS: dict[str, Callable[..., tuple[PreTrainedModel, ProcessorMixin]]] = {
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
}


# ----------------------------------------------------------------------------------- videos
def _video_patches(
    image_processor: Qwen2VLImageProcessorPil, frames: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """Flat patches ``(t*h*w, C*tps*ps*ps)`` and grid ``[t, h, w]`` of one ``(T, H, W, 3)`` video.

    Frames are resized and normalised by the image processor (same size rules as images), the
    frame count is padded to a multiple of ``temporal_patch_size`` by repeating the last frame,
    and patches are laid out as ``Qwen2VLVideoProcessor.patchify`` does:
    ``(t, h/m, w/m, m, m, C, tps, ps, ps)``.
    """
    tps, ps = image_processor.temporal_patch_size, image_processor.patch_size
    frames = list(frames) + [frames[-1]] * (-len(frames) % tps)
    out = image_processor(images=frames, return_tensors="np")
    grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0, 1:])
    channels = out["pixel_values"].shape[-1] // (tps * ps * ps)
    # each image row repeats its frame tps times along the temporal axis: keep one copy
    per_frame = out["pixel_values"].reshape(len(frames), grid_h * grid_w, channels, tps, ps, ps)
    grid_t = len(frames) // tps
    stacked = per_frame[:, :, :, 0].reshape(grid_t, tps, grid_h * grid_w, channels, ps, ps)
    patches = stacked.transpose(0, 2, 3, 1, 4, 5).reshape(grid_t * grid_h * grid_w, -1)
    return np.ascontiguousarray(patches), [grid_t, grid_h, grid_w]


def _video_placeholder(processor: ProcessorMixin, grid: list[int], fps: float) -> str:
    """What the processor's ``replace_video_token`` puts in place of one video token."""
    grid_t, grid_h, grid_w = grid
    frame_tokens = grid_h * grid_w // processor.image_processor.merge_size**2
    if not isinstance(processor, Qwen3VLProcessor):
        return processor.video_token * (grid_t * frame_tokens)
    tps = processor.image_processor.temporal_patch_size
    stamps = processor._calculate_timestamps(list(range(grid_t * tps)), fps, tps)
    frame = processor.vision_start_token + processor.video_token * frame_tokens
    return "".join(f"<{t:.1f} seconds>{frame}{processor.vision_end_token}" for t in stamps)


def video_batch(
    processor: ProcessorMixin,
    videos: Sequence[np.ndarray],
    prompts: Sequence[str],
    fps: float = DEFAULT_FPS,
) -> BatchFeature:
    """Model inputs for a batch of videos, as the Qwen processor would build them.

    Parameters
    ----------
    processor
        A processor from :data:`BUILDERS`.
    videos
        One ``(T, H, W, 3)`` uint8 array per prompt.
    prompts
        Prompts with one video token each (``<|vision_start|><|video_pad|><|vision_end|>``
        from the chat template); the token is expanded to the video's tokens (Qwen3-VL:
        ``<t seconds><|vision_start|>...<|vision_end|>`` per temporal patch, inside the
        template's own start/end, as ``Qwen3VLProcessor`` does).
    fps
        Frame rate of the frames (Qwen2.5-VL ``second_per_grid_ts``, Qwen3-VL timestamps).

    Returns
    -------
    BatchFeature
        ``input_ids``, ``attention_mask`` (left padded), ``mm_token_type_ids``,
        ``pixel_values_videos``, ``video_grid_thw`` and, for Qwen2.5-VL, ``second_per_grid_ts``.
    """
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos for {len(prompts)} prompts")
    token = processor.video_token
    counts = [p.count(token) for p in prompts]
    if any(c != 1 for c in counts):
        raise ValueError(f"each prompt needs exactly one {token!r}, got counts {counts}")
    patches, grids, texts = [], [], []
    for frames, prompt in zip(videos, prompts):
        flat, grid = _video_patches(processor.image_processor, np.asarray(frames))
        patches.append(flat)
        grids.append(grid)
        texts.append(prompt.replace(token, _video_placeholder(processor, grid, fps), 1))
    text_inputs = processor.tokenizer(texts, padding=True, return_tensors="pt")
    input_ids = text_inputs["input_ids"]
    data = {
        "input_ids": input_ids,
        "attention_mask": text_inputs["attention_mask"],
        "mm_token_type_ids": torch.tensor(processor.create_mm_token_type_ids(input_ids)),
        "pixel_values_videos": torch.from_numpy(np.concatenate(patches)),
        "video_grid_thw": torch.tensor(grids, dtype=torch.long),
    }
    if isinstance(processor, Qwen2_5_VLProcessor):
        tps = processor.image_processor.temporal_patch_size
        data["second_per_grid_ts"] = torch.tensor([tps / fps] * len(videos))
    return BatchFeature(data)


def video_inputs(
    processor: ProcessorMixin,
    n_frames: int,
    size: tuple[int, int],
    prompt: str,
    seed: int,
    fps: float = DEFAULT_FPS,
) -> BatchFeature:
    """Inputs for one random video of ``n_frames`` frames of ``size=(height, width)`` pixels.

    ``prompt`` is the question; the chat template puts the video before it (a prompt that
    already holds the video token is used as it is). See :func:`video_batch`.
    """
    if n_frames < 1:
        raise ValueError(f"`n_frames` must be positive, got {n_frames}")
    height, width = size
    frames = np.random.default_rng(seed).integers(0, 256, (n_frames, height, width, 3), np.uint8)
    if processor.video_token not in prompt:
        content = [{"type": "video"}, {"type": "text", "text": prompt}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
    return video_batch(processor, [frames], [prompt], fps)
