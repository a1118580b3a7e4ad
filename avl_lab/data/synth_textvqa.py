"""``synth-textvqa``: words on coloured signs among shapes; "What is written on the red sign?".

A scene (sky, ground, a few muted distractor shapes) holds 2-3 signs of distinct colours,
each on a post and carrying a two-word phrase in bold capitals (``PARK AVE``-style:
two words, or a word and a number). The question names one sign by colour. Like TextVQA,
each sample has 10 reference answers: the phrase (lower-case, as annotators write it) and,
for up to two "annotators", only its first word; scoring is VQA accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset
from PIL import Image, ImageDraw

from avl_lab.data import values
from avl_lab.data.registry import register
from avl_lab.data.render import COLOURS, SHAPES, contrast_text, draw_shape, fit_font, jitter
from avl_lab.data.schema import short_answer_prompt
from avl_lab.data.synth import (
    SPLIT_ALIASES,
    SPLITS,
    Sample,
    SynthConfig,
    SynthTask,
    build_split,
    register_task,
)

__all__ = ["SIGN_COLOURS", "TextVQAConfig", "load_synth_textvqa", "make_sample"]

SIGN_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "white", "black")
_MUTED = ((150, 150, 150), (140, 110, 80), (230, 170, 190), (90, 160, 160), (180, 180, 120))
_SKIES = ((190, 220, 245), (215, 225, 235), (240, 225, 200))
_GROUNDS = ((150, 190, 120), (190, 170, 130), (170, 170, 170))
_SIGN_WORDS = tuple(w for w in values.WORDS if len(w) <= 8)
_NUMBER_WORDS = ("EXIT", "GATE", "ROUTE", "ROOM", "DOCK", "PIER", "LOT", "BAY")


@dataclass(frozen=True)
class TextVQAConfig(SynthConfig):
    """Options of ``synth-textvqa``.

    Attributes
    ----------
    min_signs, max_signs : int
        Number of signs per scene (1-4).
    n_answers : int
        Reference answers per question (TextVQA has 10).
    """

    min_signs: int = 2
    max_signs: int = 3
    n_answers: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_signs <= self.max_signs <= 4:
            raise ValueError(
                f"need 1 <= `min_signs` <= `max_signs` <= 4, got {self.min_signs}, {self.max_signs}"
            )
        if not 3 <= self.n_answers <= 20:
            raise ValueError(f"`n_answers` must be in [3, 20], got {self.n_answers}")


def _phrase(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"{rng.choice(_NUMBER_WORDS)} {rng.randint(2, 99)}"
    a, b = rng.sample(_SIGN_WORDS, 2)
    return f"{a} {b}".upper()


def _scene(rng: random.Random, draw: ImageDraw.ImageDraw, size: int) -> None:
    horizon = round(size * rng.uniform(0.55, 0.75))
    draw.rectangle((0, 0, size, horizon), fill=jitter(rng, rng.choice(_SKIES), 8))
    draw.rectangle((0, horizon, size, size), fill=jitter(rng, rng.choice(_GROUNDS), 8))
    for _ in range(rng.randint(2, 4)):
        r = size * rng.uniform(0.04, 0.09)
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        draw_shape(draw, rng.choice(SHAPES), cx, cy, r, jitter(rng, rng.choice(_MUTED), 10))


def make_sample(rng: random.Random, cfg: TextVQAConfig) -> Sample:
    """Draw one scene and its question."""
    size = cfg.image_size
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    _scene(rng, draw, size)

    n = rng.randint(cfg.min_signs, cfg.max_signs)
    slots = rng.sample(range(4), n)  # 2 x 2 grid of slots
    colours = rng.sample(SIGN_COLOURS, n)
    half = size / 2
    signs = []
    for slot, colour in zip(slots, colours):
        text = _phrase(rng)
        x0, y0 = (slot % 2) * half, (slot // 2) * half
        pad = half * 0.06
        max_font = round(half * 0.2)
        lines = [text]
        fnt = fit_font(lines, half - 4 * pad, max_font, min_size=9, style="bold")
        if fnt.size < 0.75 * max_font:  # long phrase: one word per line, larger glyphs
            lines = text.split()
            fnt = fit_font(lines, half - 4 * pad, max_font, min_size=9, style="bold")
        ascent, descent = fnt.getmetrics()
        step = round((ascent + descent) * 1.05)
        tw = max(fnt.getlength(t) for t in lines)
        w, h = tw + 2 * pad, step * len(lines) + 1.5 * pad
        sx = x0 + rng.uniform(pad / 2, half - w - pad / 2)
        sy = y0 + rng.uniform(pad / 2, max(pad / 2, half * 0.6 - h / 2))
        post_x = sx + w / 2
        draw.rectangle((post_x - 2, sy + h, post_x + 2, y0 + half - pad / 2), fill=(90, 90, 90))
        fill = COLOURS[colour]
        draw.rectangle((sx, sy, sx + w, sy + h), fill=fill, outline=(40, 40, 40), width=2)
        for j, t in enumerate(lines):
            tx = sx + (w - fnt.getlength(t)) / 2
            draw.text((tx, sy + 0.75 * pad + j * step), t, font=fnt, fill=contrast_text(fill))
        box = [round(sx), round(sy), round(sx + w), round(sy + h)]
        signs.append({"colour": colour, "text": text, "box": box})

    target = rng.choice(signs)
    phrase = target["text"].lower()
    n_partial = rng.choice((0, 0, 1, 2))
    answers = [phrase] * (cfg.n_answers - n_partial) + [phrase.split()[0]] * n_partial
    question = f"What is written on the {target['colour']} sign?"
    meta = {"signs": signs, "colour": target["colour"], "box": target["box"]}
    return Sample(img, question, answers, meta)


TASK = register_task(
    SynthTask("synth-textvqa", "vqa_accuracy", TextVQAConfig, make_sample, short_answer_prompt)
)


@register(
    "synth-textvqa",
    metric="vqa_accuracy",
    splits=SPLITS,
    aliases=SPLIT_ALIASES,
    kind="synthetic",
    description="two-word phrases on coloured signs; 'What is written on the red sign?'",
)
def load_synth_textvqa(
    split: str, limit: int | None, cache: bool = True, path: str | None = None, **overrides
) -> Dataset:
    """Rows of ``synth-textvqa``; ``overrides`` are :class:`TextVQAConfig` fields."""
    return build_split(TASK, split, limit, overrides, cache=cache, path=path)
