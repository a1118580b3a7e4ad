"""Test helpers: random images and padded multimodal batches."""

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


def random_images(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def make_inputs(processor, n: int = 3, seed: int = 0, prompts=PROMPTS, sizes=SIZES):
    """A left-padded batch of ``n`` (image, prompt) rows."""
    return processor(
        images=random_images(sizes[:n], seed), text=list(prompts[:n]), return_tensors="pt", padding=True
    )
