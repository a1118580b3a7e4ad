"""Balanced easy-vqa questions for training, from easy-vqa's own templates and pixel labels.

easy-vqa's yes/no questions are lopsided: "is there a red shape?" is answered "no" for 7 of
the 8 colours, "is there not a red shape?" "yes", so a model can score well on them without
looking at the image. :func:`generate` asks the same questions (the 24 templates of the
package's train split, harvested by :func:`templates`) about a train image's
:class:`~avl_lab.train.scene.Scene`, with the asked colour or shape the image's own half of
the time: yes and no then come equally often and only the pixels tell them apart.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from avl_lab.train.scene import COLOURS, SHAPES, Scene

__all__ = ["SLOT_WORD", "Template", "answer", "generate", "shows", "templates"]

_COLOURS = tuple(COLOURS)
#: A colour or shape word: what a question's slot holds ("is there a *red* shape?").
SLOT_WORD = re.compile(r"\b(" + "|".join([*_COLOURS, *SHAPES]) + r")\b")


def shows(scene: Scene, word: str) -> bool:
    """Whether an image showing ``scene`` shows the colour or shape ``word``."""
    return word in (_COLOURS[scene.colour], SHAPES[scene.shape])


@dataclass(frozen=True)
class Template:
    """A question with its ``{colour}`` or ``{shape}`` slot (``slot`` None: none).

    ``kind`` is what it asks: ``"yes/no"``, ``"colour"`` or ``"shape"``; ``negated``: a
    yes/no question answered "yes" when the image does *not* match."""

    kind: str
    text: str
    slot: str | None
    negated: bool


def _template(question: str, answer_: str) -> Template:
    words = SLOT_WORD.findall(question)
    slot = None if not words else "colour" if words[-1] in COLOURS else "shape"
    text = SLOT_WORD.sub(lambda m: "{colour}" if m.group() in COLOURS else "{shape}", question)
    kind = "yes/no" if answer_ in ("yes", "no") else "shape" if answer_ in SHAPES else "colour"
    negated = kind == "yes/no" and (" not " in f" {text} " or text.startswith("is no "))
    return Template(kind=kind, text=text, slot=slot, negated=negated)


@lru_cache(maxsize=1)
def templates() -> tuple[Template, ...]:
    """The distinct templates of easy-vqa's train questions, in first-seen order."""
    import easy_vqa

    questions, answers, _ = easy_vqa.get_train_questions()
    return tuple(dict.fromkeys(_template(q, a) for q, a in zip(questions, answers)))


def answer(template: Template, value: str | None, scene: Scene) -> str:
    """The answer to ``template`` filled with ``value`` about an image showing ``scene``."""
    colour, shape = _COLOURS[scene.colour], SHAPES[scene.shape]
    if template.kind == "colour":
        return colour
    if template.kind == "shape":
        return shape
    return "yes" if shows(scene, value) != template.negated else "no"


def generate(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A ``(question, answer)`` about ``scene``: yes/no half of the time (the slot filled with
    the image's own value half of those), else a colour or a shape question."""
    kind = rng.choice(("yes/no", "yes/no", "colour", "shape"))
    template = rng.choice([t for t in templates() if t.kind == kind])
    own = {"colour": _COLOURS[scene.colour], "shape": SHAPES[scene.shape]}
    value = own.get(template.slot) if template.slot else None
    if template.kind == "yes/no" and rng.random() < 0.5:  # ask about another colour / shape
        pool = _COLOURS if template.slot == "colour" else SHAPES
        value = rng.choice([v for v in pool if v != value])
    question = template.text.format(**({template.slot: value} if template.slot else {}))
    return question, answer(template, value, scene)
