"""``synth-ocr``: "What is written in the image?"; OCRBench-style score.

Each image shows a short text of two or three tokens -- upper-case words, numbers and
codes such as ``KX-48`` -- on the 16 x 16 character grid of :mod:`avl_lab.data.grid`, in a
random colour on a plain background, on one line of at most 16 characters that starts at
the fixed cell :data:`TEXT_CELL` (generator v3: a fixed reading position keeps the task
learnable by the 2.5 M-parameter ``avl-tiny`` within its CPU training budget). The OCRBench
score checks that the text occurs (case-insensitively) in the prediction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from avl_lab.data import values
from avl_lab.data.grid import GRID, CharGrid, draw_grid_text
from avl_lab.data.render import contrast_text, jitter
from avl_lab.data.synth import (
    Sample,
    SynthConfig,
    SynthTask,
    register_task,
)

__all__ = ["QUESTION", "TEXT_CELL", "OCRConfig", "make_sample"]

QUESTION = "What is written in the image?"
#: ``(col, row)`` of the text's first character.
TEXT_CELL = (0, 7)
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
    n = rng.randint(cfg.min_tokens, cfg.max_tokens)
    text = " ".join(_token(rng) for _ in range(n))
    while len(text) > GRID:  # keep it on one line
        text = " ".join(_token(rng) for _ in range(n))
    bg = jitter(rng, rng.choice(_BACKGROUNDS), 8)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    ink = jitter(rng, contrast_text(bg), 15)
    grid = CharGrid()
    col, row = TEXT_CELL
    box = draw_grid_text(draw, col, row, text, size, ink, grid)
    meta = {"lines": 1, "cell": [col, row], "box": box, "grid": grid.rows()}
    return Sample(img, QUESTION, [text], meta)


TASK = register_task(
    SynthTask("synth-ocr", "ocrbench", OCRConfig, make_sample, lambda q: q),
    description="short texts (words, numbers, codes) to read; 'What is written in the image?'",
)
