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
from dataclasses import dataclass

from tokenizers import Tokenizer
from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from avl_lab.models.tiny import llava_config, llava_processor
from avl_lab.models.tiny_common import DecoderSizes, build_seeded
from avl_lab.models.tokenizer import train_bpe, wrap_tokenizer

__all__ = ["AvlTinyConfig", "build_avl_tiny", "build_processor", "build_tokenizer"]


@dataclass
class AvlTinyConfig(DecoderSizes):
    """Sizes of ``avl-tiny`` (defaults: ~2.5 M parameters, ~10 MB in fp32)."""

    vision_hidden_size: int = 128
    """ViT width."""
    vision_layers: int = 3
    """ViT depth."""
    vision_heads: int = 4
    """ViT attention heads."""
    vision_mlp_ratio: int = 4
    """ViT MLP width as a multiple of its width."""
    hidden_size: int = 192
    """Decoder width."""
    intermediate_size: int = 512
    """Decoder MLP width."""
    num_attention_heads: int = 6
    """Decoder query heads."""
    num_key_value_heads: int = 2
    """Decoder KV heads (grouped-query attention)."""
    vocab_size: int = 512
    """BPE vocabulary size (including the special tokens)."""
    max_position_embeddings: int = 1024
    """Decoder positions (prompts are ~300 tokens)."""
    num_hidden_layers: int = 4
    """Decoder depth."""
    image_size: int = 160
    """Input side in pixels."""
    patch_size: int = 10
    """ViT patch size; (image_size / patch_size)^2 image tokens (256 by default)."""

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
        super().__post_init__()
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
    """The trained BPE as JSON (cached: training it takes a few seconds). Texts are not split
    into words first, and merges are capped at 24 bytes."""
    return train_bpe(_corpus(), vocab_size, split_words=False, max_token_length=24).to_str()


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the ``avl-tiny`` tokenizer (deterministic, offline, a few seconds)."""
    return wrap_tokenizer(Tokenizer.from_str(_trained_bpe(vocab_size)))


def build_processor(cfg: AvlTinyConfig, tok: PreTrainedTokenizerFast) -> LlavaProcessor:
    """``LlavaProcessor`` with a torchvision-free CLIP image processor and the chat template."""
    return llava_processor("llava", cfg, tok)


def build_avl_tiny(
    cfg: AvlTinyConfig | None = None, seed: int = 0
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A freshly initialised ``avl-tiny`` (train mode, stopping at its end-of-sequence token)
    and its processor: the LLaVA builder of :mod:`avl_lab.models.tiny` at avl-tiny's sizes."""
    cfg = cfg or AvlTinyConfig()
    tok = build_tokenizer(cfg.vocab_size)
    model = build_seeded(LlavaForConditionalGeneration, llava_config("llava", cfg, tok), tok, seed)
    model.train()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model, build_processor(cfg, tok)
