"""An offline byte-level BPE tokenizer for tiny models (no hub download)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
IMAGE_TOKEN = "<image>"

# A small fixed corpus: deterministic training, covers the words the lab's prompts use.
_CORPUS = [
    "USER: What is written in the image? ASSISTANT: The sign says OPEN 24 HOURS.",
    "What is the invoice number? INV-48213. What is the date? 12/03/2021. Total: $1,234.50",
    "Provide a one-sentence caption for the provided image. A small red circle left of a big blue square.",
    "Answer the question using a single word or phrase. What colour is the triangle? green",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "name date amount total id receipt form invoice customer address phone email yes no",
    "shape colour color size position left right top bottom middle center circle square",
]


def train_bpe(
    corpus: Iterable[str],
    vocab_size: int,
    specials: Sequence[str] = tuple(SPECIAL_TOKENS),
    *,
    split_words: bool = True,
    max_token_length: int | None = None,
) -> Tokenizer:
    """The lab's one BPE trainer: byte-level, deterministic, offline.

    ``split_words`` splits on GPT-2's word regex before merging (False: a text is one piece,
    so merges may span spaces, as avl-tiny's tokenizer does); ``max_token_length`` caps merges.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


@functools.lru_cache(maxsize=16)
def _train(vocab_size: int, extra_specials: tuple[str, ...] = ()) -> Tokenizer:
    return train_bpe(_CORPUS * 4, vocab_size, SPECIAL_TOKENS + list(extra_specials))


def wrap_tokenizer(
    tokenizer: Tokenizer, named_specials: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``tokenizer`` with the lab's specials and left padding.

    ``named_specials`` adds attributes a family's processor reads (e.g.
    ``{"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}``); default
    ``{"image_token": "<image>"}``.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=named_specials or {"image_token": IMAGE_TOKEN},
        padding_side="left",
    )


def tiny_tokenizer(
    vocab_size: int = 512,
    extra_specials: tuple[str, ...] = (),
    named_specials: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with an ``<image>`` special token.

    Left padding, ``<pad>``/``<s>``/``</s>`` specials; built offline in well under a second.
    ``extra_specials`` are further special tokens a model family's prompt format needs (each one
    id, never split); ``named_specials`` see :func:`wrap_tokenizer`.
    """
    return wrap_tokenizer(_train(vocab_size, tuple(extra_specials)), named_specials)
