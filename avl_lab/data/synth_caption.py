"""``synth-caption``: scenes of 2-5 shapes; five paraphrased reference captions; CIDEr.

Objects (circle, square, triangle, diamond) of distinct colour-shape pairs sit in distinct
cells of a 3 x 3 grid; each has a size (small/large), a colour and a position (``top
left`` ... ``bottom right``). The five references describe the same scene with different
templates, orders and words (``large``/``big``, ``center``/``middle``), so CIDEr rewards a
caption that gets shapes, colours, sizes and positions right -- all of which need the image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from avl_lab.data.render import COLOURS, SHAPES, draw_shape, jitter
from avl_lab.data.schema import CAPTION_PROMPT
from avl_lab.data.synth import (
    Sample,
    SynthConfig,
    SynthTask,
    register_task,
)

__all__ = ["CAPTION_COLOURS", "POSITIONS", "CaptionConfig", "make_sample"]

CAPTION_COLOURS = ("red", "blue", "green", "yellow", "orange", "purple")
#: Grid cell (row, col) -> position name.
POSITIONS = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}  # fmt: skip
_AT = {
    "top left": "in the top left corner", "top": "at the top",
    "top right": "in the top right corner", "left": "on the left", "center": "in the center",
    "right": "on the right", "bottom left": "in the bottom left corner",
    "bottom": "at the bottom", "bottom right": "in the bottom right corner",
}  # fmt: skip
_AT_ALT = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left side", "center": "in the middle", "right": "on the right side",
    "bottom left": "at the bottom left", "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}  # fmt: skip
_COUNT = {2: "two", 3: "three", 4: "four", 5: "five"}
_BACKGROUNDS = ((255, 255, 255), (245, 245, 240), (235, 240, 250), (240, 240, 240))


@dataclass(frozen=True)
class CaptionConfig(SynthConfig):
    """Options of ``synth-caption``.

    Attributes
    ----------
    min_objects, max_objects : int
        Number of shapes per scene (2-5).
    """

    min_objects: int = 2
    max_objects: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.min_objects <= self.max_objects <= 5:
            raise ValueError(
                "need 2 <= `min_objects` <= `max_objects` <= 5, "
                f"got {self.min_objects}, {self.max_objects}"
            )


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _captions(objs: list[dict]) -> list[str]:
    n = _COUNT[len(objs)]

    def noun(o: dict, big: str = "large", little: str = "small") -> str:
        size = big if o["size"] == "large" else little
        return f"a {size} {o['colour']} {o['shape']}"

    by_size = sorted(objs, key=lambda o: o["size"] != "large")  # stable: large first
    caps = [
        _join([f"{noun(o)} {_AT[o['position']]}" for o in objs]),
        f"There are {n} shapes: " + _join([f"{noun(o)} {_AT_ALT[o['position']]}" for o in objs]),
        f"{n.capitalize()} shapes on a plain background: " + _join([noun(o) for o in objs]),
        "An image with " + _join([f"{noun(o)} {_AT[o['position']]}" for o in by_size]),
        "The picture shows "
        + _join([f"{noun(o, 'big', 'little')} {_AT_ALT[o['position']]}" for o in objs]),
    ]
    return [c[0].upper() + c[1:] + "." for c in caps]


def make_sample(rng: random.Random, cfg: CaptionConfig) -> Sample:
    """Draw one scene and its five reference captions."""
    size = cfg.image_size
    cell = size / 3
    k = rng.randint(cfg.min_objects, cfg.max_objects)
    cells = sorted(rng.sample(sorted(POSITIONS), k))  # reading order
    kinds = rng.sample([(c, s) for c in CAPTION_COLOURS for s in SHAPES], k)
    img = Image.new("RGB", (size, size), jitter(rng, rng.choice(_BACKGROUNDS), 4))
    draw = ImageDraw.Draw(img)
    objs = []
    for (row, col), (colour, shape) in zip(cells, kinds):
        large = rng.random() < 0.5
        r = cell * (0.4 if large else 0.2) * rng.uniform(0.95, 1.05)
        slack = (cell / 2 - r) * 0.5
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        draw_shape(draw, shape, cx, cy, r, jitter(rng, COLOURS[colour], 10))
        objs.append({"shape": shape, "colour": colour, "size": "large" if large else "small",
                     "position": POSITIONS[(row, col)], "cx": round(cx, 1), "cy": round(cy, 1),
                     "r": round(r, 1)})  # fmt: skip
    return Sample(img, CAPTION_PROMPT, _captions(objs), {"objects": objs})


TASK = register_task(
    SynthTask("synth-caption", "cider", CaptionConfig, make_sample, lambda q: q),
    description="2-5 shapes (shape, colour, size, position); five paraphrased captions",
)
