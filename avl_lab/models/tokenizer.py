"""An offline byte-level BPE tokenizer for tiny models (no hub download)."""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=8)
def _train(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``tokenizer`` with the lab's specials and left padding."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
    )


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with an ``<image>`` special token.

    Left padding, ``<pad>``/``<s>``/``</s>`` specials; built offline in well under a second.
    """
    return wrap_tokenizer(_train(vocab_size))
