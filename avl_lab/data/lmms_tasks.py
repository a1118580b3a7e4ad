"""The real benchmarks' definitions: lmms-eval's hub ids, configs, splits, columns and prompts.

How a copy is found and read is :mod:`avl_lab.data.lmms`; this module only says, per benchmark,
what lmms-eval evaluates and how one source record becomes a row of the common schema.
Each definition follows lmms-eval's task files (``EvolvingLMMs-Lab/lmms-eval``,
``lmms_eval/tasks/<task>/``; read at commit ``75571cf``, 2026-08) and the hub dataset cards:

========== ============================================ ==========================================
name       lmms-eval task files                         prompt (``doc_to_text``)
========== ============================================ ==========================================
docvqa     ``docvqa/_default_template_docvqa_yaml``,    ``question`` + SHORT
           ``docvqa_val.yaml``, ``utils.py``
textvqa    ``textvqa/_default_template_textvqa_yaml``,  ``question.capitalize()`` + SHORT
           ``textvqa_val.yaml``, ``utils.py``
ocrbench   ``ocrbench/ocrbench.yaml``, ``utils.py``     ``question.strip()``
nocaps     ``nocaps/_default_template_nocaps_yaml``,    CAPTION
           ``nocaps_val.yaml``, ``utils.py``
flickr30k  ``flickr30k/flickr30k_test.yaml``,           CAPTION
           ``utils.py``
chartqa    ``chartqa/chartqa.yaml``, ``utils.py``       ``question`` + ``"\\nAnswer the question
           (columns: ``upload_chartqa.py``)             with a single word."``
infovqa    ``infovqa/_default_template_infovqa_yaml``,  ``question`` + SHORT
           ``infovqa_val.yaml``, ``utils.py``
vqav2      ``vqav2/_default_template_vqav2_yaml``,      ``question`` + SHORT
           ``vqav2_val.yaml``, ``utils.py``
========== ============================================ ==========================================

SHORT is ``"\\nAnswer the question using a single word or phrase."``, CAPTION is
``"Provide a one-sentence caption for the provided image."`` (the ``default``
``lmms_eval_specific_kwargs`` of each task, whose ``pre_prompt`` is empty; Flickr30k's caption
prompt is fixed in its ``utils.py``).

Notes on the three added last:

* **chartqa** -- ``lmms-lab/ChartQA``, no config, split ``test`` (2,500 questions: human_test
  then augmented_test), columns ``type question answer image``; ``answer`` is one string. The
  post-prompt is the one in ``chartqa.yaml`` since January 2024 (the first version used the
  DocVQA wording). There is no id column: rows are ``chartqa-<index>``; ``type`` goes to
  ``meta`` (lmms-eval also reports the human/augmented means). Metric: ``relaxed_accuracy``
  (:mod:`avl_lab.metrics.relaxed_accuracy`, lmms-eval's ``relaxed_correctness``).
* **infovqa** -- ``lmms-lab/DocVQA`` config ``InfographicVQA`` (the same repo as docvqa; its
  files are under ``InfographicVQA/``), split ``validation`` (2,801), columns ``questionId
  question answers image`` (plus ``answer_type``, ``operation/reasoning`` kept in ``meta``);
  metric ``anls`` (lmms-eval's ``anls`` in ``lmms_eval/api/metrics.py``, the same as DocVQA's).
  The question is not capitalised (``infovqa_doc_to_text``).
* **vqav2** -- ``lmms-lab/VQAv2``, no config, split ``validation`` (214,354; lmms-eval's
  ``vqav2_val`` scores it; ``test``/``testdev`` have no answers and are submission-only), columns
  ``question_id question answers image``. Unlike TextVQA's list of strings, ``answers`` is a
  list of ten ``{"answer", "answer_confidence", "answer_id"}`` records: the row's answers are
  their ``answer`` fields in order. Metric ``vqa_accuracy`` (leave-one-out ``min(1, n/3)``,
  as ``vqav2_process_results``; it normalises with the full EvalAI processor that TextVQA uses,
  whereas lmms-eval's VQAv2 scorer skips its first step -- lower-casing, deleting ``,``/``?``,
  splitting ``'s`` -- before the punctuation and digit/article steps (which lower-case too), so
  the two can differ only on rare punctuation cases).
  ``question_type``, ``answer_type``, ``multiple_choice_answer`` and ``image_id`` go to ``meta``.

lmms-eval's current task files read these sets from ``lmms-lab-encoder/*`` (moved there in
July 2026, lmms-eval #1416); both ids are searched, ``lmms-lab/*`` first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avl_lab.data.schema import CAPTION_PROMPT, short_answer_prompt

__all__ = ["BENCHMARKS", "CHARTQA_SUFFIX", "Benchmark", "RowFn"]

#: (id, question, prompt, answers, meta) of one source record at a row index.
RowFn = Callable[[dict[str, Any], int], tuple[str, str, str, list[str], dict[str, Any]]]

#: lmms-eval's default post-prompt for ChartQA (``chartqa.yaml``).
CHARTQA_SUFFIX = "\nAnswer the question with a single word."


@dataclass(frozen=True)
class Benchmark:
    """How to find one lmms-eval benchmark and map its rows to the common schema."""

    name: str
    hub_ids: tuple[str, ...]
    config: str | None
    split: str
    metric: str
    columns: tuple[str, ...]
    to_row: RowFn
    description: str


def _answers(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(a) for a in value]


def _docvqa(r: dict, i: int):
    q = r["question"]
    meta = {"docId": r.get("docId"), "question_types": r.get("question_types")}
    return str(r["questionId"]), q, short_answer_prompt(q), _answers(r["answers"]), meta


def _textvqa(r: dict, i: int):
    q = r["question"]
    return (
        str(r["question_id"]),
        q,
        short_answer_prompt(q.capitalize()),
        _answers(r["answers"]),
        {"image_id": r.get("image_id")},
    )


def _ocrbench(r: dict, i: int):
    q = r["question"].strip()
    meta = {"dataset": r["dataset"], "question_type": r["question_type"]}
    return f"ocrbench-{i:04d}", q, q, _answers(r["answer"]), meta


def _nocaps(r: dict, i: int):
    return (
        str(r["image_id"]),
        CAPTION_PROMPT,
        CAPTION_PROMPT,
        _answers(r["annotations_captions"]),
        {"image_id": r["image_id"]},
    )


def _flickr(r: dict, i: int):
    return (
        str(r["img_id"]),
        CAPTION_PROMPT,
        CAPTION_PROMPT,
        _answers(r["caption"]),
        {"img_id": r["img_id"], "filename": r.get("filename")},
    )


def _chartqa(r: dict, i: int):
    q = r["question"]
    return f"chartqa-{i:04d}", q, q + CHARTQA_SUFFIX, _answers(r["answer"]), {"type": r.get("type")}


def _infovqa(r: dict, i: int):
    q = r["question"]
    meta = {
        "answer_type": r.get("answer_type"),
        "operation/reasoning": r.get("operation/reasoning"),
    }
    return str(r["questionId"]), q, short_answer_prompt(q), _answers(r["answers"]), meta


def _vqav2(r: dict, i: int):
    q = r["question"]
    answers = [str(a["answer"]) for a in r["answers"] or ()]
    keys = ("question_type", "answer_type", "multiple_choice_answer", "image_id")
    return str(r["question_id"]), q, short_answer_prompt(q), answers, {k: r.get(k) for k in keys}


def _lmms_lab(repo: str) -> tuple[str, str]:
    return (f"lmms-lab/{repo}", f"lmms-lab-encoder/{repo}")


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "docvqa",
            _lmms_lab("DocVQA"),
            "DocVQA",
            "validation",
            "anls",
            ("questionId", "question", "answers", "image"),
            _docvqa,
            "DocVQA val (lmms-eval docvqa_val)",
        ),
        Benchmark(
            "textvqa",
            _lmms_lab("textvqa"),
            None,
            "validation",
            "vqa_accuracy",
            ("question_id", "question", "answers", "image"),
            _textvqa,
            "TextVQA val (lmms-eval textvqa_val)",
        ),
        Benchmark(
            "ocrbench",
            ("echo840/OCRBench",),
            None,
            "test",
            "ocrbench",
            ("question", "answer", "dataset", "question_type", "image"),
            _ocrbench,
            "OCRBench (1,000 questions)",
        ),
        Benchmark(
            "nocaps",
            _lmms_lab("NoCaps"),
            None,
            "validation",
            "cider",
            ("image_id", "annotations_captions", "image"),
            _nocaps,
            "NoCaps val (lmms-eval nocaps_val)",
        ),
        Benchmark(
            "flickr30k",
            _lmms_lab("flickr30k"),
            None,
            "test",
            "cider",
            ("img_id", "caption", "image"),
            _flickr,
            "Flickr30k test (lmms-eval flickr30k_test)",
        ),
        Benchmark(
            "chartqa",
            _lmms_lab("ChartQA"),
            None,
            "test",
            "relaxed_accuracy",
            ("type", "question", "answer", "image"),
            _chartqa,
            "ChartQA test (lmms-eval chartqa)",
        ),
        Benchmark(
            "infovqa",
            _lmms_lab("DocVQA"),
            "InfographicVQA",
            "validation",
            "anls",
            ("questionId", "question", "answers", "image"),
            _infovqa,
            "InfographicVQA val (lmms-eval infovqa_val)",
        ),
        Benchmark(
            "vqav2",
            _lmms_lab("VQAv2"),
            None,
            "validation",
            "vqa_accuracy",
            ("question_id", "question", "answers", "image"),
            _vqav2,
            "VQAv2 val (lmms-eval vqav2_val)",
        ),
    )
}
