"""``synth-docvqa``: rendered forms, receipts and invoices; "What is the <field>?"; ANLS.

A document has a title (INVOICE, RECEIPT ...) and 6-8 ``LABEL VALUE`` rows drawn from
:data:`FIELDS` (ids, dates, amounts, names, phone numbers ...), printed on the 16 x 16
character grid of :mod:`avl_lab.data.grid` (one monospace capital per 10 px cell at the
default 160 px): the title on row 0, then each field on its own row of a fixed form
template (field ``i`` of :data:`FIELDS` on row ``i + 1``; generator v3), labels of at most
5 characters in column 0, values of up to 10 characters from column 6. Which fields a
document has, their values, the title and the ink vary; the question asks for one field's
value, which only the pixels carry.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

from avl_lab.data import values
from avl_lab.data.grid import GRID, CharGrid, draw_grid_text
from avl_lab.data.render import jitter
from avl_lab.data.schema import short_answer_prompt
from avl_lab.data.synth import (
    Sample,
    SynthConfig,
    SynthTask,
    register_task,
)

__all__ = ["FIELDS", "DocVQAConfig", "field_row", "make_sample"]


@dataclass(frozen=True)
class Field:
    """A document field: its printed label, how the question names it, its value maker."""

    label: str
    noun: str
    value: Callable[[random.Random], str]


FIELDS: tuple[Field, ...] = (
    Field("INV#", "invoice number", lambda r: values.short_code(r, "INV")),
    Field("ORDER", "order ID", lambda r: f"ORD-{r.randint(10000, 99999)}"),
    Field("ACCT", "account number", values.short_account),
    Field("REF", "reference code", values.short_code),
    Field("EMP", "employee ID", lambda r: values.short_code(r, "EMP")),
    Field("DATE", "date", values.short_date),
    Field("DUE", "due date", values.short_date),
    Field("NAME", "customer name", values.short_person),
    Field("CASH", "cashier name", values.short_person),
    Field("PHONE", "phone number", values.short_phone),
    Field("CITY", "city", values.short_city),
    Field("ZIP", "zip code", values.zip_code),
    Field("SUB", "subtotal", values.short_amount),
    Field("TAX", "tax amount", lambda r: values.short_amount(r, 99_999)),
    Field("TOTAL", "total amount", values.short_amount),
)
TITLES = ("INVOICE", "RECEIPT", "ORDER FORM", "STATEMENT", "BILL")
VALUE_COL = 6
_INKS = ((20, 20, 20), (25, 35, 90), (60, 30, 30))


def field_row(index: int) -> int:
    """Grid row of field ``FIELDS[index]`` on the form template."""
    return index + 1


@dataclass(frozen=True)
class DocVQAConfig(SynthConfig):
    """Options of ``synth-docvqa``.

    Attributes
    ----------
    image_size : int
        Canvas side in pixels (default 160: one 10 px cell per character).
    min_fields, max_fields : int
        Range of the number of rows per document (default 6-8, at most 14; lower it for a
        curriculum).
    """

    min_fields: int = 6
    max_fields: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_fields <= self.max_fields <= 14:
            raise ValueError(
                f"need 1 <= `min_fields` <= `max_fields` <= 14, "
                f"got {self.min_fields}, {self.max_fields}"
            )


def pick_fields(
    rng: random.Random, fields: tuple[Field, ...], lo: int, hi: int
) -> tuple[list[int], list[tuple[str, str]], int]:
    """``(chosen, rows, asked)``: which of ``fields`` a form shows (``lo``..``hi`` of them, in
    order), their ``(label, value)`` rows, and the index (into ``chosen``) of the one asked."""
    k = rng.randint(lo, hi)
    chosen = sorted(rng.sample(range(len(fields)), k))
    rows = [(fields[i].label, fields[i].value(rng)) for i in chosen]
    return chosen, rows, rng.randrange(k)


def blank_form(
    rng: random.Random, size: int
) -> tuple[tuple[int, int, int], Image.Image, ImageDraw.ImageDraw]:
    """``(ink, image, draw)``: an ink colour and an off-white ``size`` x ``size`` page."""
    ink = rng.choice(_INKS)
    img = Image.new("RGB", (size, size), jitter(rng, (250, 249, 244), 5))
    return ink, img, ImageDraw.Draw(img)


def make_sample(rng: random.Random, cfg: DocVQAConfig) -> Sample:
    """Draw one document and its question."""
    size = cfg.image_size
    chosen, rows, asked = pick_fields(rng, FIELDS, cfg.min_fields, cfg.max_fields)
    k = len(chosen)
    title = rng.choice(TITLES)

    ink, img, draw = blank_form(rng, size)
    grid = CharGrid()
    draw_grid_text(draw, rng.randint(0, GRID - len(title)), 0, title, size, ink, grid)
    boxes = []
    for i, (lab, val) in zip(chosen, rows):
        draw_grid_text(draw, 0, field_row(i), lab, size, ink, grid)
        boxes.append(draw_grid_text(draw, VALUE_COL, field_row(i), val, size, ink, grid))

    field = FIELDS[chosen[asked]]
    value = rows[asked][1]
    meta = {"doc_type": title.lower(), "field": field.label, "n_fields": k, "box": boxes[asked],
            "cell": [VALUE_COL, field_row(chosen[asked])],
            "fields": dict(rows), "grid": grid.rows()}  # fmt: skip
    return Sample(img, f"What is the {field.noun}?", [value], meta)


TASK = register_task(
    SynthTask("synth-docvqa", "anls", DocVQAConfig, make_sample, short_answer_prompt),
    description="rendered invoices/receipts/forms with 6-8 fields; 'What is the <field>?'",
)
