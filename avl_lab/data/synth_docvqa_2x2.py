"""``synth-docvqa-2x2``: small forms whose every glyph covers 2 x 2 image tokens; ANLS.

The premise variant of ``synth-docvqa`` (issue 19). There one character fills one 10 px
ViT patch, so an answer token needs exactly one image token. Here the glyphs are drawn
twice as large, on an 8 x 8 grid of 20 px cells at the default 160 px: each character
spans a 2 x 2 block of patches, so one answer token needs four image tokens, as a word
spans several patches in a real LVLM. The form keeps ``synth-docvqa``'s template idea on
the smaller grid: field ``i`` of :data:`FIELDS` on row ``i``, a label of at most 3
characters in column 0, a value of 2-4 characters from column :data:`VALUE_COL`; 4-6 of
the 8 fields are present; the question asks for one field's value.

``meta["grid"]`` is recorded per patch (16 x 16, each character repeated over its block, so
the glyph loss and the blank-token analyses read it as for the other grid tasks),
``meta["cell"]`` is the answer's first patch ``[col, row]`` and ``meta["span"] = 2`` the
block side (:func:`avl_lab.experiments.analysis.answer_cells.answer_tokens` reads it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from avl_lab.data.grid import GRID, CharGrid, draw_grid_text
from avl_lab.data.schema import short_answer_prompt
from avl_lab.data.synth import Sample, SynthConfig, SynthTask, register_task
from avl_lab.data.synth_docvqa import Field, blank_form, pick_fields

__all__ = ["CELLS", "FIELDS", "SPAN", "VALUE_COL", "DocVQA2x2Config", "make_sample"]

#: Patches per glyph side.
SPAN = 2
#: Character cells per side (8 at the default grid of 16 patches).
CELLS = GRID // SPAN
#: Column of the values' first character (in character cells).
VALUE_COL = 4
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def _digits(lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda r: str(r.randint(lo, hi))


def _code(r: random.Random) -> str:
    return r.choice(_LETTERS) + str(r.randint(10, 999))


def _pair(r: random.Random) -> str:
    return "".join(r.choice(_LETTERS) for _ in range(2)) + str(r.randint(1, 99))


FIELDS: tuple[Field, ...] = (
    Field("INV", "invoice number", _digits(1000, 9999)),
    Field("ACC", "account code", _pair),
    Field("REF", "reference code", _code),
    Field("DAY", "day", lambda r: r.choice(("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"))),
    Field("QTY", "quantity", _digits(1, 999)),
    Field("TAX", "tax amount", lambda r: f"${r.randint(1, 999)}"),
    Field("ZIP", "zip code", _digits(1000, 9999)),
    Field("RM", "room", _code),
)


@dataclass(frozen=True)
class DocVQA2x2Config(SynthConfig):
    """Options of ``synth-docvqa-2x2``.

    Attributes
    ----------
    min_fields, max_fields : int
        Range of the number of fields per form (default 4-6, at most 8).
    """

    min_fields: int = 4
    max_fields: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_fields <= self.max_fields <= len(FIELDS):
            raise ValueError(
                f"need 1 <= `min_fields` <= `max_fields` <= {len(FIELDS)}, "
                f"got {self.min_fields}, {self.max_fields}"
            )


def _put(grid: CharGrid, col: int, row: int, text: str) -> None:
    """Record ``text`` at character cell ``(col, row)`` in the per-patch ``grid``."""
    for i, ch in enumerate(text):
        for dr in range(SPAN):
            grid.put(SPAN * (col + i), SPAN * row + dr, ch * SPAN)


def make_sample(rng: random.Random, cfg: DocVQA2x2Config) -> Sample:
    """Draw one form and its question."""
    size = cfg.image_size
    chosen, rows, asked = pick_fields(rng, FIELDS, cfg.min_fields, cfg.max_fields)
    k = len(chosen)
    ink, img, draw = blank_form(rng, size)
    grid = CharGrid()
    boxes = []
    for i, (lab, val) in zip(chosen, rows):
        # drawn as on a canvas twice the size: a grid cell of `size * 2 / GRID` = SPAN patches
        draw_grid_text(draw, 0, i, lab, size * SPAN, ink)
        box = draw_grid_text(draw, VALUE_COL, i, val, size * SPAN, ink)
        boxes.append(box)
        _put(grid, 0, i, lab)
        _put(grid, VALUE_COL, i, val)
    field = FIELDS[chosen[asked]]
    meta = {"field": field.label, "n_fields": k, "box": boxes[asked],
            "cell": [SPAN * VALUE_COL, SPAN * chosen[asked]], "span": SPAN,
            "fields": dict(rows), "grid": grid.rows()}  # fmt: skip
    return Sample(img, f"What is the {field.noun}?", [rows[asked][1]], meta)


TASK = register_task(
    SynthTask("synth-docvqa-2x2", "anls", DocVQA2x2Config, make_sample, short_answer_prompt),
    description="forms with 2x2-patch glyphs (8 x 8 grid), 4-6 fields; 'What is the <field>?'",
)
