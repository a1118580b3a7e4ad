"""``synth-textvqa``: words on coloured signs among shapes; "What is written on the red sign?".

A scene (sky, ground, a few muted distractor shapes) holds 2-3 signs of distinct colours,
each on a post and carrying a two-word phrase in capitals (``PARK AVE``-style: two words,
or a word and a number) on the 16 x 16 character grid of :mod:`avl_lab.data.grid`; a sign
is the phrase's cells plus a margin. A sign's colour fixes its row (colour ``i`` of
:data:`SIGN_COLOURS` on row ``2 i + 1``, text from column 1; generator v3), so the scene,
the signs present and their phrases vary but the reading position follows from the
question. The question names one sign by colour. Like
TextVQA, each sample has 10 reference answers: the phrase (lower-case, as annotators write
it) and, for up to two "annotators", only its first word; scoring is VQA accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from avl_lab.data import values
from avl_lab.data.grid import GRID, CharGrid, cell_size, draw_grid_text
from avl_lab.data.render import COLOURS, SHAPES, contrast_text, draw_shape, jitter
from avl_lab.data.schema import short_answer_prompt
from avl_lab.data.synth import (
    Sample,
    SynthConfig,
    SynthTask,
    register_task,
)

__all__ = ["SIGN_COLOURS", "TEXT_COL", "TextVQAConfig", "make_sample", "sign_row"]

SIGN_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "white", "black")
_MUTED = ((150, 150, 150), (140, 110, 80), (230, 170, 190), (90, 160, 160), (180, 180, 120))
_SKIES = ((190, 220, 245), (215, 225, 235), (240, 225, 200))
_GROUNDS = ((150, 190, 120), (190, 170, 130), (170, 170, 170))
_SIGN_WORDS = tuple(w for w in values.WORDS if len(w) <= 6)
_NUMBER_WORDS = ("EXIT", "GATE", "ROUTE", "ROOM", "DOCK", "PIER", "LOT", "BAY")
#: Grid column of a sign's first character.
TEXT_COL = 1


@dataclass(frozen=True)
class TextVQAConfig(SynthConfig):
    """Options of ``synth-textvqa``.

    Attributes
    ----------
    min_signs, max_signs : int
        Number of signs per scene (1-3).
    n_answers : int
        Reference answers per question (TextVQA has 10).
    """

    min_signs: int = 2
    max_signs: int = 3
    n_answers: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_signs <= self.max_signs <= 3:
            raise ValueError(
                f"need 1 <= `min_signs` <= `max_signs` <= 3, got {self.min_signs}, {self.max_signs}"
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


def sign_row(colour: str) -> int:
    """Grid row of the text on the ``colour`` sign."""
    return 2 * SIGN_COLOURS.index(colour) + 1


def make_sample(rng: random.Random, cfg: TextVQAConfig) -> Sample:
    """Draw one scene and its question."""
    size = cfg.image_size
    cell = cell_size(size)
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    _scene(rng, draw, size)

    n = rng.randint(cfg.min_signs, cfg.max_signs)
    colours = rng.sample(SIGN_COLOURS, n)
    placed = []
    for colour in colours:
        text = _phrase(rng)
        while len(text) > GRID - 2 * TEXT_COL:
            text = _phrase(rng)
        row = sign_row(colour)
        placed.append((row, text, colour))
        post_x = (TEXT_COL + len(text) / 2) * cell
        draw.rectangle((post_x - 1, (row + 1) * cell, post_x + 1, size), fill=(90, 90, 90))
    signs = []
    grid = CharGrid()
    for row, text, colour in placed:
        fill = COLOURS[colour]
        box = [round((TEXT_COL - 1) * cell), round((row - 0.3) * cell),
               round((TEXT_COL + len(text) + 1) * cell) - 1, round((row + 1.3) * cell) - 1]  # fmt: skip
        draw.rectangle(box, fill=fill, outline=(40, 40, 40), width=1)
        draw_grid_text(draw, TEXT_COL, row, text, size, contrast_text(fill), grid)
        signs.append({"colour": colour, "text": text, "box": box})

    target = rng.choice(signs)
    phrase = target["text"].lower()
    n_partial = rng.choice((0, 0, 1, 2))
    answers = [phrase] * (cfg.n_answers - n_partial) + [phrase.split()[0]] * n_partial
    question = f"What is written on the {target['colour']} sign?"
    meta = {"signs": signs, "colour": target["colour"], "box": target["box"],
            "cell": [TEXT_COL, sign_row(target["colour"])],
            "grid": grid.rows()}  # fmt: skip
    return Sample(img, question, answers, meta)


TASK = register_task(
    SynthTask("synth-textvqa", "vqa_accuracy", TextVQAConfig, make_sample, short_answer_prompt),
    description="two-word phrases on coloured signs; 'What is written on the red sign?'",
)
