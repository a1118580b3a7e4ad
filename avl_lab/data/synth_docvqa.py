"""``synth-docvqa``: rendered forms, receipts and invoices; "What is the <field>?"; ANLS.

A document has a bold title (INVOICE, RECEIPT ...) and 6-12 ``Label: value`` rows drawn
from :data:`FIELDS` (ids, dates, amounts, names, phone numbers ...). The question asks
for one field's value, which only the pixels carry. Default canvas 336 px (LLaVA-1.5's
input size): 12 rows then use ~17 px DejaVu Sans; at 224 px they would be ~11 px.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset
from PIL import Image, ImageDraw

from avl_lab.data import values
from avl_lab.data.registry import register
from avl_lab.data.render import fit_font, jitter
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

__all__ = ["FIELDS", "DocVQAConfig", "load_synth_docvqa", "make_sample"]


@dataclass(frozen=True)
class Field:
    """A document field: its printed label, how the question names it, its value maker."""

    label: str
    noun: str
    value: Callable[[random.Random], str]


FIELDS: tuple[Field, ...] = (
    Field("Invoice No", "invoice number", lambda r: values.doc_id(r, "INV")),
    Field("Order ID", "order ID", lambda r: values.doc_id(r, "ORD")),
    Field("Account No", "account number", values.account),
    Field("Reference", "reference code", values.code),
    Field("Employee ID", "employee ID", lambda r: values.code(r, "EMP")),
    Field("Date", "date", values.date),
    Field("Due Date", "due date", values.date),
    Field("Order Date", "order date", values.date),
    Field("Customer", "customer name", values.person),
    Field("Contact", "contact person", values.person),
    Field("Cashier", "cashier name", values.person),
    Field("Vendor", "vendor name", values.company),
    Field("Phone", "phone number", values.phone),
    Field("City", "city", lambda r: r.choice(values.CITIES)),
    Field("Zip Code", "zip code", values.zip_code),
    Field("Subtotal", "subtotal", values.amount),
    Field("Tax", "tax amount", values.amount),
    Field("Total", "total amount", values.amount),
)
TITLES = ("INVOICE", "RECEIPT", "ORDER FORM", "PURCHASE ORDER", "STATEMENT")


@dataclass(frozen=True)
class DocVQAConfig(SynthConfig):
    """Options of ``synth-docvqa``.

    Attributes
    ----------
    image_size : int
        Canvas side in pixels (default 336).
    min_fields, max_fields : int
        Range of the number of rows per document (default 6-12; lower it for a curriculum).
    """

    image_size: int = 336
    min_fields: int = 6
    max_fields: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_fields <= self.max_fields <= len(FIELDS):
            raise ValueError(
                f"need 1 <= `min_fields` <= `max_fields` <= {len(FIELDS)}, "
                f"got {self.min_fields}, {self.max_fields}"
            )


def make_sample(rng: random.Random, cfg: DocVQAConfig) -> Sample:
    """Draw one document and its question."""
    size = cfg.image_size
    k = rng.randint(cfg.min_fields, cfg.max_fields)
    chosen = sorted(rng.sample(range(len(FIELDS)), k))
    rows = [(FIELDS[i].label + ":", FIELDS[i].value(rng)) for i in chosen]
    asked = rng.randrange(k)
    title = rng.choice(TITLES)

    bg = jitter(rng, (250, 249, 244), 5)
    ink = rng.choice([(20, 20, 20), (25, 35, 90), (60, 30, 30)])
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    margin = round(size * rng.uniform(0.04, 0.06))
    width = size - 2 * margin
    # rows + title (1.3 rows) + gap (0.3 rows), 1.3 line spacing
    line_cap = int((size - 2 * margin) / ((k + 1.6) * 1.3))
    fnt = fit_font([f"{lab} {val}" for lab, val in rows], width * 0.97, min(line_cap, size // 12))
    title_font = fit_font([title], width, round(fnt.size * 1.3), style="bold")
    line = round(fnt.size * 1.3)

    y = margin
    tw = title_font.getlength(title)
    tx = margin if rng.random() < 0.5 else (size - tw) / 2
    draw.text((tx, y), title, font=title_font, fill=ink)
    y += round(title_font.size * 1.3)
    draw.line((margin, y, size - margin, y), fill=ink, width=max(1, size // 200))
    y += round(line * 0.3)
    aligned = rng.random() < 0.6  # values in one column, or right after their labels
    col = max(fnt.getlength(lab) for lab, _ in rows) + fnt.size * 0.5
    if col + max(fnt.getlength(val) for _, val in rows) > width:
        aligned = False
    rules = rng.random() < 0.3
    boxes = []
    for lab, val in rows:
        draw.text((margin, y), lab, font=fnt, fill=ink)
        vx = margin + (col if aligned else fnt.getlength(lab + " "))
        draw.text((vx, y), val, font=fnt, fill=ink)
        boxes.append([round(vx), y, round(vx + fnt.getlength(val)), y + line])
        y += line
        if rules:
            draw.line((margin, y - 2, size - margin, y - 2), fill=jitter(rng, (200, 200, 200), 10))

    field = FIELDS[chosen[asked]]
    value = rows[asked][1]
    meta = {"doc_type": title.lower(), "field": field.label, "n_fields": k, "box": boxes[asked],
            "fields": {lab[:-1]: val for lab, val in rows}}  # fmt: skip
    return Sample(img, f"What is the {field.noun}?", [value], meta)


TASK = register_task(
    SynthTask("synth-docvqa", "anls", DocVQAConfig, make_sample, short_answer_prompt)
)


@register(
    "synth-docvqa",
    metric="anls",
    splits=SPLITS,
    aliases=SPLIT_ALIASES,
    kind="synthetic",
    description="rendered invoices/receipts/forms with 6-12 fields; 'What is the <field>?'",
)
def load_synth_docvqa(
    split: str, limit: int | None, cache: bool = True, path: str | None = None, **overrides
) -> Dataset:
    """Rows of ``synth-docvqa``; ``overrides`` are :class:`DocVQAConfig` fields."""
    return build_split(TASK, split, limit, overrides, cache=cache, path=path)
