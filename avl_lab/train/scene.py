"""Scene labels of easy-vqa images, read from the pixels: the shape's colour, its kind, and
which ViT patches it covers.

easy-vqa draws one shape in one of eight exact palette colours on a pale, tinted
background. The shape is the set of pixels within :data:`TOLERANCE` (L1) of the most
frequent palette colour; its kind follows from how much of its bounding box it fills
(rectangle ~1, circle ~pi/4, triangle ~1/2). On the package's questions these labels agree
with every colour answer and 99.8% of the shape answers (anti-aliased specks of a few
pixels are the misses).

The labels only shape training (the scene loss and the guided attention onto the shape,
see :mod:`avl_lab.train.module`); the model still learns its answers from the questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["COLOURS", "SHAPES", "TOLERANCE", "Scene", "scene_of"]

#: easy-vqa's palette (the package's colour answers), in label order.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
    "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}  # fmt: skip
#: easy-vqa's shape answers, in label order.
SHAPES = ("circle", "rectangle", "triangle")
#: Largest L1 distance (over RGB) of a shape pixel from its palette colour.
TOLERANCE = 12
_PALETTE = np.array(list(COLOURS.values()), dtype=np.int32)


@dataclass(frozen=True)
class Scene:
    """One easy-vqa image's labels: indices into :data:`COLOURS` / :data:`SHAPES`, and the
    row-major indices of the ``grid x grid`` patches at least ``cover`` covered by it."""

    colour: int
    shape: int
    patches: tuple[int, ...]


def scene_of(image: Image.Image, grid: int = 16, cover: float = 0.25) -> Scene | None:
    """The :class:`Scene` of an easy-vqa ``image`` on a ``grid x grid`` patch grid (None when
    no pixel is a palette colour). The image must be square with a side divisible by ``grid``."""
    a = np.asarray(image.convert("RGB"), dtype=np.int32)
    h, w, _ = a.shape
    if h != w or h % grid:
        raise ValueError(f"scene_of needs a square image whose side divides by {grid}, got {w}x{h}")
    dist = np.abs(a[:, :, None, :] - _PALETTE[None, None]).sum(-1)  # [H, W, colours]
    nearest, close = dist.argmin(-1), dist.min(-1) <= TOLERANCE
    if not close.any():
        return None
    colour = int(np.bincount(nearest[close], minlength=len(COLOURS)).argmax())
    mask = close & (nearest == colour)
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    shape = 1 if fill > 0.9 else 0 if fill > 0.65 else 2
    p = h // grid
    frac = mask.reshape(grid, p, grid, p).mean(axis=(1, 3)).flatten()
    patches = np.nonzero(frac >= cover)[0]
    if not len(patches):  # a shape smaller than a quarter patch: its best-covered patch
        patches = np.array([frac.argmax()])
    return Scene(colour=colour, shape=shape, patches=tuple(int(i) for i in patches))
