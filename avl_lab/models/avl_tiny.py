"""The ``avl-tiny`` architecture: config, tokenizer and processor, built offline.

``avl-tiny`` is a ``LlavaForConditionalGeneration``: a CLIP-style ViT (160 px, patch 10, so
256 image tokens), LLaVA's two-layer MLP projector and a Llama decoder with grouped KV
heads. Its tokenizer is a byte-level BPE trained on the *lower-cased* prompts and captions
of the lab's tasks: prompt and caption words become few tokens, while the upper-case
letters, digits and punctuation that the model must read from the pixels are never merged
(one token per character), so answers copy the image's character grid token by token.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from avl_lab.models.tiny import CHAT_TEMPLATE
from avl_lab.models.tokenizer import SPECIAL_TOKENS, wrap_tokenizer

__all__ = ["AvlTinyConfig", "build_avl_tiny", "build_processor", "build_tokenizer"]


@dataclass
class AvlTinyConfig:
    """Sizes of ``avl-tiny`` (defaults: ~2.5 M parameters, ~10 MB in fp32)."""

    image_size: int = 160
    """Input side in pixels."""
    patch_size: int = 10
    """ViT patch size; (image_size / patch_size)^2 image tokens (256 by default)."""
    vision_hidden_size: int = 128
    """ViT width."""
    vision_layers: int = 3
    """ViT depth."""
    vision_heads: int = 4
    """ViT attention heads."""
    hidden_size: int = 192
    """Decoder width."""
    intermediate_size: int = 512
    """Decoder MLP width."""
    num_hidden_layers: int = 4
    """Decoder depth."""
    num_attention_heads: int = 6
    """Decoder query heads."""
    num_key_value_heads: int = 2
    """Decoder KV heads (grouped-query attention)."""
    vocab_size: int = 512
    """BPE vocabulary size (including the special tokens)."""

    def __post_init__(self) -> None:
        sizes = [f.name for f in dataclasses.fields(self)]
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be ≥ 1, got {getattr(self, name)}")
        for width, heads in (("hidden_size", "num_attention_heads"),
                             ("vision_hidden_size", "vision_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"`{width}` ({getattr(self, width)}) must be a multiple of "
                                 f"`{heads}` ({getattr(self, heads)})")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` "
                f"({self.patch_size})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "`num_attention_heads` must be a multiple of `num_key_value_heads`, got "
                f"{self.num_attention_heads} and {self.num_key_value_heads}"
            )
        if self.vocab_size < 300:
            raise ValueError(f"`vocab_size` must be >= 300, got {self.vocab_size}")

    @property
    def image_seq_length(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _corpus() -> list[str]:
    """Lower-cased prompts, questions and captions of the training tasks (no digits)."""
    from avl_lab import data
    from avl_lab.data.schema import CAPTION_PROMPT, short_answer_prompt
    from avl_lab.data.synth_docvqa import FIELDS
    from avl_lab.data.synth_textvqa import SIGN_COLOURS

    texts = ["user: <image>\n", " assistant:", CAPTION_PROMPT, "What is written in the image?"]
    texts += [short_answer_prompt(f"What is the {f.noun}?") for f in FIELDS]
    texts += [short_answer_prompt(f"What is written on the {c} sign?") for c in SIGN_COLOURS]
    try:
        import easy_vqa

        questions, answers, _ = easy_vqa.get_train_questions()
        texts += [short_answer_prompt(q) for q in sorted(set(questions))] + sorted(set(answers))
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    for i in range(400):
        texts += data.sample_row("synth-caption", "train", i)["answers"]
    return [" ".join(t.lower().split(" ")) for t in texts if not any(c.isdigit() for c in t)]


@functools.lru_cache(maxsize=4)
def _trained_bpe(vocab_size: int) -> str:
    """The trained BPE as JSON (cached: training it takes a few seconds)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=24,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the ``avl-tiny`` tokenizer (deterministic, offline, a few seconds)."""
    return wrap_tokenizer(Tokenizer.from_str(_trained_bpe(vocab_size)))


def build_processor(cfg: AvlTinyConfig, tok: PreTrainedTokenizerFast) -> LlavaProcessor:
    """``LlavaProcessor`` with a torchvision-free CLIP image processor and the chat template."""
    side = cfg.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_convert_rgb=True
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_avl_tiny(
    cfg: AvlTinyConfig | None = None, seed: int = 0
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A freshly initialised ``avl-tiny`` (train mode) and its processor."""
    cfg = cfg or AvlTinyConfig()
    tok = build_tokenizer(cfg.vocab_size)
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=4 * cfg.vision_hidden_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.image_token_id,
        image_seq_length=cfg.image_seq_length,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    assert math.isqrt(cfg.image_seq_length) ** 2 == cfg.image_seq_length
    return model, build_processor(cfg, tok)
