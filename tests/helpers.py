"""Test helpers: random images, padded multimodal batches, small ``avl-tiny`` configs."""

from __future__ import annotations

import numpy as np
from PIL import Image

PROMPTS = [
    "USER: <image>\nWhat? ASSISTANT:",
    "USER: <image>\nWhat is written in the image, please tell me? ASSISTANT:",
    "USER: <image>\nHi there ASSISTANT:",
]
# Different sizes: LLaVA-NeXT rows then hold different image-token counts.
SIZES = [(32, 32), (64, 32), (40, 70)]


def random_image(size: tuple[int, int], seed: int) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_inputs(processor, n: int = 3, rows: list[int] | None = None, prompts=PROMPTS, sizes=SIZES):
    """A left-padded batch of (image, prompt) rows: ``rows`` (default the first ``n``) index
    ``prompts``/``sizes``; row i's image is always drawn with seed i."""
    rows = list(range(n)) if rows is None else rows
    images = [random_image(sizes[i], seed=i) for i in rows]
    text = [prompts[i] for i in rows]
    return processor(images=images, text=text, return_tensors="pt", padding=True)


def small_avl_tiny_config():
    """A 40 px, 2-layer :class:`~avl_lab.models.avl_tiny.AvlTinyConfig` (16 image tokens)."""
    from avl_lab.models.avl_tiny import AvlTinyConfig

    return AvlTinyConfig(image_size=40, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                         hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip


def avl_tiny_processor():
    """The processor of a default-size ``avl-tiny`` (its own tokenizer), built offline."""
    from avl_lab.models.avl_tiny import AvlTinyConfig, build_processor, build_tokenizer

    cfg = AvlTinyConfig()
    return build_processor(cfg, build_tokenizer(cfg.vocab_size))


QUESTIONS = ["What?", "What is written in the image, please tell me?", "Hi there"]


def family_inputs(processor, n: int = 3, rows: list[int] | None = None, sizes=SIZES):
    """Like :func:`make_inputs` for any model family: each question in the processor's chat
    template around one image (row i: ``QUESTIONS[i]``, ``sizes[i]``, image seed i)."""
    from avl_lab.evaluation.prompting import encode

    rows = list(range(n)) if rows is None else rows
    images = [random_image(sizes[i], seed=i) for i in rows]
    return encode(processor, images, [QUESTIONS[i] for i in rows])


def assert_batch_invariant(model, processor, spec, new_tokens: int, n: int = 3) -> None:
    """Each row of a batch of ``n`` under policy ``spec`` gives the tokens, stored and used it
    gives alone."""
    import pytest
    import torch

    from avl_lab.testing import run_policy

    batch, b_session = run_policy(model, make_inputs(processor, n=n), spec, new_tokens)
    for i in range(n):
        alone, a_session = run_policy(model, make_inputs(processor, rows=[i]), spec, new_tokens)
        assert torch.equal(batch.tokens[i : i + 1], alone.tokens)
        assert b_session.stats.per_sample_stored[i] == pytest.approx(a_session.stats.stored)
        assert b_session.stats.per_sample_used[i] == pytest.approx(a_session.stats.used)
