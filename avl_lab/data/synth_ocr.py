"""``synth-ocr``: "What is written in the image?"; OCRBench-style score.

Each image shows a short text of two or three tokens -- upper-case words, numbers and
codes such as ``KX-48`` -- on the 16 x 16 character grid of :mod:`avl_lab.data.grid`, at a
random cell and colour on a plain background, on one line or (randomly, or when longer
than a line) two. The reference is the text with its line break as a space; the OCRBench
score checks that it occurs (case-insensitively) in the prediction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from avl_lab.data import values
from avl_lab.data.grid import GRID, draw_grid_text
from avl_lab.data.render import contrast_text, jitter
from avl_lab.data.synth import (
    Sample,
    SynthConfig,
    SynthTask,
    register_task,
)

__all__ = ["QUESTION", "OCRConfig", "make_sample"]

QUESTION = "What is written in the image?"
_WORDS = tuple(w for w in values.WORDS if len(w) <= 7)
_BACKGROUNDS = ((250, 250, 250), (235, 230, 215), (210, 230, 245), (40, 40, 50), (30, 70, 60))


@dataclass(frozen=True)
class OCRConfig(SynthConfig):
    """Options of ``synth-ocr``.

    Attributes
    ----------
    min_tokens, max_tokens : int
        Number of space-separated tokens in the text (1-4; the default 2-3 makes answers
        several LLM tokens long).
    """

    min_tokens: int = 2
    max_tokens: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_tokens <= self.max_tokens <= 4:
            raise ValueError(
                "need 1 <= `min_tokens` <= `max_tokens` <= 4, "
                f"got {self.min_tokens}, {self.max_tokens}"
            )


def _token(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        return rng.choice(_WORDS).upper()
    if kind < 0.8:
        return str(rng.randint(10, 9999))
    letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
    return f"{letters}-{rng.randint(10, 99)}"


def make_sample(rng: random.Random, cfg: OCRConfig) -> Sample:
    """Draw one text image."""
    size = cfg.image_size
    tokens = [_token(rng) for _ in range(rng.randint(cfg.min_tokens, cfg.max_tokens))]
    text = " ".join(tokens)
    lines = [text]
    if len(tokens) > 1 and (len(text) > GRID or rng.random() < 0.3):  # wrap onto two lines
        cut = (len(tokens) + 1) // 2
        lines = [" ".join(tokens[:cut]), " ".join(tokens[cut:])]
    bg = jitter(rng, rng.choice(_BACKGROUNDS), 8)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    ink = jitter(rng, contrast_text(bg), 15)
    width = max(len(t) for t in lines)
    col = rng.randint(0, GRID - width)
    gap = rng.choice((1, 2))
    row = rng.randint(0, GRID - 1 - gap * (len(lines) - 1))
    for j, t in enumerate(lines):
        draw_grid_text(draw, col, row + gap * j, t, size, ink)
    meta = {"lines": len(lines), "cell": [col, row]}
    return Sample(img, QUESTION, [" ".join(lines)], meta)


TASK = register_task(
    SynthTask("synth-ocr", "ocrbench", OCRConfig, make_sample, lambda q: q),
    description="short texts (words, numbers, codes) to read; 'What is written in the image?'",
)
