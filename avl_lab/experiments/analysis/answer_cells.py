"""Which image tokens hold a synthetic sample's answer (and which show blank cells).

The grid tasks (synth-docvqa, synth-ocr, synth-textvqa) draw one character per cell of a
16 x 16 grid and record it in ``meta["grid"]``; ``meta["cell"]`` is the ``[col, row]`` of the
answer's first character, written rightwards; ``meta["span"]`` (default 1) is the side, in
cells, of the block one character covers (2 for ``synth-docvqa-2x2``). A model whose image tokens form a square
``g x g`` patch grid over the same square image sees cell ``(row, col)`` in the patches that
overlap it (one patch per cell for ``avl-tiny``'s 16 x 16; several for LLaVA-1.5's 24 x 24).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch

from avl_lab.data.grid import GRID

__all__ = ["answer_tokens", "blank_tokens", "cell_patches"]


def _side(n_image: int) -> int | None:
    g = math.isqrt(n_image)
    return g if g * g == n_image else None


def cell_patches(row: int, col: int, g: int) -> list[int]:
    """Row-major indices of the ``g x g`` patches overlapping grid cell ``(row, col)``."""
    def span(i: int) -> range:
        return range(math.floor(i * g / GRID), math.ceil((i + 1) * g / GRID))

    return [r * g + c for r in span(row) for c in span(col)]


def _meta(meta: Mapping[str, Any] | str | None) -> dict[str, Any]:
    return json.loads(meta) if isinstance(meta, str) else dict(meta or {})


def answer_tokens(meta: Mapping[str, Any] | str | None, answer: str, n_image: int) -> torch.Tensor | None:
    """``[k]`` image-token indices showing ``answer``'s characters (blanks excluded), or None
    when the sample has no grid answer or the image tokens are not a square grid."""
    info, g = _meta(meta), _side(n_image)
    cell = info.get("cell")
    if cell is None or info.get("grid") is None or g is None:
        return None
    col, row = cell
    span = int(info.get("span", 1))  # a character's cells per side (synth-docvqa-2x2: 2)
    idx = sorted({p for i, ch in enumerate(answer) if ch != " "
                  for dr in range(span) for dc in range(span)
                  for p in cell_patches(row + dr, col + span * i + dc, g)})  # fmt: skip
    return torch.tensor(idx, dtype=torch.long) if idx else None


def blank_tokens(meta: Mapping[str, Any] | str | None, n_image: int) -> torch.Tensor | None:
    """``[N_img]`` bool: image tokens that show only blank cells, or None without a grid."""
    info, g = _meta(meta), _side(n_image)
    grid = info.get("grid")
    if grid is None or g is None:
        return None
    inked = torch.zeros(n_image, dtype=torch.bool)
    for r, line in enumerate(grid):
        for c, ch in enumerate(line):
            if ch != " ":
                inked[cell_patches(r, c, g)] = True
    return ~inked
