"""``synth-ocr``: "What is written in the image?"; OCRBench-style score.

Each image shows a short text of two or three tokens -- words (capitalised, lower or upper
case), numbers and codes such as ``KX-48`` -- in DejaVu Sans (regular or bold) at a
random size, position and colour on a plain background, on one line or, when long, two.
The reference is the text with its line break as a space; the OCRBench score checks that
it occurs (case-insensitively) in the prediction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset
from PIL import Image, ImageDraw

from avl_lab.data import values
from avl_lab.data.registry import register
from avl_lab.data.render import contrast_text, fit_font, jitter
from avl_lab.data.synth import (
    SPLIT_ALIASES,
    SPLITS,
    Sample,
    SynthConfig,
    SynthTask,
    build_split,
    register_task,
)

__all__ = ["QUESTION", "OCRConfig", "load_synth_ocr", "make_sample"]

QUESTION = "What is written in the image?"
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
        word = rng.choice(values.WORDS)
        return rng.choice((word, word.capitalize(), word.capitalize(), word.upper()))
    if kind < 0.8:
        return str(rng.randint(10, 9999))
    letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
    return f"{letters}-{rng.randint(10, 99)}"


def make_sample(rng: random.Random, cfg: OCRConfig) -> Sample:
    """Draw one text image."""
    size = cfg.image_size
    tokens = [_token(rng) for _ in range(rng.randint(cfg.min_tokens, cfg.max_tokens))]
    text = " ".join(tokens)
    bg = jitter(rng, rng.choice(_BACKGROUNDS), 8)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    style = rng.choice(("regular", "bold"))
    margin = size * 0.06
    max_size = round(size * rng.uniform(0.10, 0.16))
    lines = [text]
    fnt = fit_font(lines, size - 2 * margin, max_size, min_size=10, style=style)
    if fnt.size < 0.8 * max_size and len(tokens) > 1:  # wrap onto two lines
        cut = (len(tokens) + 1) // 2
        lines = [" ".join(tokens[:cut]), " ".join(tokens[cut:])]
        fnt = fit_font(lines, size - 2 * margin, max_size, min_size=10, style=style)
    ascent, descent = fnt.getmetrics()
    step = round((ascent + descent) * 1.1)
    block_w = max(fnt.getlength(t) for t in lines)
    block_h = step * len(lines)
    x = rng.uniform(margin, max(margin, size - margin - block_w))
    y = rng.uniform(margin, max(margin, size - margin - block_h))
    ink = jitter(rng, contrast_text(bg), 15)
    for j, t in enumerate(lines):
        draw.text((x, y + j * step), t, font=fnt, fill=ink)
    meta = {"lines": len(lines), "font": style, "font_size": fnt.size}
    return Sample(img, QUESTION, [text], meta)


TASK = register_task(SynthTask("synth-ocr", "ocrbench", OCRConfig, make_sample, lambda q: q))


@register(
    "synth-ocr",
    metric="ocrbench",
    splits=SPLITS,
    aliases=SPLIT_ALIASES,
    kind="synthetic",
    description="short texts (words, numbers, codes) to read; 'What is written in the image?'",
)
def load_synth_ocr(
    split: str, limit: int | None, cache: bool = True, path: str | None = None, **overrides
) -> Dataset:
    """Rows of ``synth-ocr``; ``overrides`` are :class:`OCRConfig` fields."""
    return build_split(TASK, split, limit, overrides, cache=cache, path=path)
