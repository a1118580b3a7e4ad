"""The row schema every dataset adapter returns, and the prompts shared by several tasks.

Columns (a ``datasets.Dataset`` with these features, in this order):

========  ==========================  ======================================================
column    feature                     meaning
========  ==========================  ======================================================
id        ``Value("string")``         unique within the split
image     ``Image()``                 the image (PIL on access; encoded bytes underneath)
question  ``Value("string")``         the raw question (the caption instruction for caption
                                      tasks)
prompt    ``Value("string")``         the full text instruction for the model: lmms-eval's
                                      default prompt for the task (the paper's)
answers   ``List(Value("string"))``   reference answers (>= 1)
metric    ``Value("string")``         ``anls`` | ``vqa_accuracy`` | ``ocrbench`` | ``cider``
                                      | ``accuracy`` | ``relaxed_accuracy`` (see
                                      :mod:`avl_lab.metrics`)
meta      ``Value("string")``         JSON object with task extras, e.g. OCRBench's
                                      ``{"dataset": "HME100k", "question_type": ...}``
========  ==========================  ======================================================
"""

from __future__ import annotations

import json
from typing import Any

from datasets import Features, Image, List, Value

__all__ = [
    "CAPTION_PROMPT",
    "COLUMNS",
    "METRICS",
    "SHORT_ANSWER_SUFFIX",
    "dump_meta",
    "row_features",
    "short_answer_prompt",
]

COLUMNS = ("id", "image", "question", "prompt", "answers", "metric", "meta")
METRICS = ("anls", "vqa_accuracy", "ocrbench", "cider", "accuracy", "relaxed_accuracy")

#: lmms-eval's default post-prompt for DocVQA and TextVQA.
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
#: lmms-eval's default prompt for NoCaps and Flickr30k.
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."


def row_features(decode: bool = True) -> Features:
    """Features of the row schema; ``decode=False`` keeps images as ``{"bytes", "path"}``."""
    return Features(
        {
            "id": Value("string"),
            "image": Image(decode=decode),
            "question": Value("string"),
            "prompt": Value("string"),
            "answers": List(Value("string")),
            "metric": Value("string"),
            "meta": Value("string"),
        }
    )


def short_answer_prompt(question: str) -> str:
    """``question`` followed by the single-word-or-phrase instruction."""
    return f"{question}{SHORT_ANSWER_SUFFIX}"


def dump_meta(meta: dict[str, Any]) -> str:
    """Canonical JSON for the ``meta`` column (sorted keys, so bytes are reproducible)."""
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)
