"""Text on a 16 x 16 character grid: one monospace glyph centred in each cell.

At the default 160 px canvas a cell is one 10 x 10 ViT patch, so one image token carries
one character and reading a string means copying consecutive patches. Glyphs are DejaVu
Sans Mono Bold with a cap height of ~85% of the cell; the alphabet is upper case, digits
and a little punctuation (:data:`ALPHABET`). Drawn at a larger ``image_size`` the same
layout simply scales up (the cell grows with the canvas).
"""

from __future__ import annotations

from functools import lru_cache

from PIL import ImageDraw, ImageFont

from avl_lab.data.render import font

__all__ = [
    "ALPHABET",
    "GRID",
    "CharGrid",
    "cell_size",
    "draw_grid_text",
    "grid_font",
    "text_cells",
]

#: Cells per side of the character grid.
GRID = 16
#: Characters the grid tasks draw (and answers are made of).
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -$,./#:"


class CharGrid:
    """What each cell of the 16 x 16 grid shows: a character of :data:`ALPHABET` or blank.

    Generators pass one to :func:`draw_grid_text` and store :meth:`rows` in a sample's
    ``meta["grid"]``: per-patch glyph labels (row-major, like the image tokens) that
    ``avl-tiny``'s training uses as an auxiliary target.
    """

    def __init__(self) -> None:
        self.cells = [[" "] * GRID for _ in range(GRID)]

    def put(self, col: int, row: int, text: str) -> None:
        for i, ch in enumerate(text):
            self.cells[row][col + i] = ch

    def rows(self) -> list[str]:
        """The grid as ``GRID`` strings of ``GRID`` characters (blank cells are spaces)."""
        return ["".join(r) for r in self.cells]


def cell_size(image_size: int) -> float:
    """Side of one grid cell in pixels."""
    return image_size / GRID


@lru_cache(maxsize=64)
def grid_font(image_size: int) -> tuple[ImageFont.FreeTypeFont, float]:
    """The mono font whose capitals fill ~85% of a cell's height, and its cap height."""
    cell = cell_size(image_size)
    size = max(6, round(cell * 1.15))
    fnt = font(size, "mono")
    while size > 6 and fnt.getbbox("M")[2] - fnt.getbbox("M")[0] > cell * 0.95:
        size -= 1
        fnt = font(size, "mono")
    top, bottom = fnt.getbbox("H")[1], fnt.getbbox("H")[3]
    return fnt, float(bottom - top)


def text_cells(col: int, row: int, text: str, image_size: int) -> list[int]:
    """Pixel box ``[x0, y0, x1, y1]`` of ``text`` drawn at cell ``(col, row)``."""
    cell = cell_size(image_size)
    return [round(col * cell), round(row * cell), round((col + len(text)) * cell),
            round((row + 1) * cell)]  # fmt: skip


def draw_grid_text(
    draw: ImageDraw.ImageDraw,
    col: int,
    row: int,
    text: str,
    image_size: int,
    fill: tuple[int, int, int],
    grid: CharGrid | None = None,
) -> list[int]:
    """Draw ``text`` from cell ``(col, row)`` rightwards, one character per cell
    (and record it in ``grid`` when given).

    Raises
    ------
    ValueError
        The text leaves the grid.

    Returns
    -------
    list[int]
        The pixel box of the text (see :func:`text_cells`).
    """
    if col < 0 or row < 0 or row >= GRID or col + len(text) > GRID:
        raise ValueError(f"text {text!r} at cell ({col}, {row}) leaves the {GRID}x{GRID} grid")
    if grid is not None:
        grid.put(col, row, text)
    cell = cell_size(image_size)
    fnt, cap = grid_font(image_size)
    baseline = (row + 0.5) * cell + cap / 2
    for i, ch in enumerate(text):
        if ch != " ":
            draw.text(((col + i + 0.5) * cell, baseline), ch, font=fnt, fill=fill, anchor="ms")
    return text_cells(col, row, text, image_size)
