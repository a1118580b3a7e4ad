"""Relaxed accuracy (ChartQA's metric), lmms-eval semantics.

Per reference, ``relaxed_correctness(prediction, target)`` as in lmms-eval's
``lmms_eval/tasks/chartqa/utils.py`` (taken there from Qwen-VL's ``eval_mm/evaluate_vqa.py``,
itself Pix2Struct's; the rule of the ChartQA paper, arXiv 2203.10244, end of section 5.1):

1. each string is read as a number with Python's ``float`` (which ignores surrounding
   whitespace); a string that *ends* with ``%`` is read without the ``%`` and divided by 100,
   so ``"45%"`` is ``0.45``; a string ``float`` rejects is not a number;
2. if the prediction is a number and the target a *non-zero* number, the prediction is correct
   when ``|prediction - target| / |target| <= max_relative_change`` (0.05: within 5%);
3. otherwise (either is not a number, or the target is ``0``) it is correct when
   ``prediction.lower() == target.lower()`` -- an exact match after lower-casing only (no
   stripping: lmms-eval does none here; the evaluation runner strips the generated text before
   scoring, as lmms-eval's model wrappers do).

Floating point is kept as it is in lmms-eval: ``"105"`` vs ``"100"`` is correct (exactly 5%),
``"1.05"`` vs ``"1"`` is not (``0.05000000000000004``). lmms-eval scores one target per
question; with several references the sample score is the maximum over them (Pix2Struct's
``relaxed_accuracy`` aggregation), so a one-element list gives lmms-eval's number. The
run-level value is the mean (lmms-eval's ``relaxed_overall``).
"""

from __future__ import annotations

from collections.abc import Sequence

from avl_lab.metrics._base import MeanScoreMetric, check_answers, check_prediction
from avl_lab.metrics.registry import register_metric

__all__ = ["MAX_RELATIVE_CHANGE", "RelaxedAccuracy", "relaxed_accuracy", "relaxed_correctness"]

#: ChartQA's tolerance for numeric answers (5%).
MAX_RELATIVE_CHANGE = 0.05


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(
    prediction: str, target: str, max_relative_change: float = MAX_RELATIVE_CHANGE
) -> bool:
    """Whether ``prediction`` matches one ``target`` under the relaxed rule (module docstring)."""
    pred = _to_float(prediction)
    ref = _to_float(target)
    if pred is not None and ref:  # a target of 0 (or a non-number) falls back to string match
        return abs(pred - ref) / abs(ref) <= max_relative_change
    return prediction.lower() == target.lower()


def _check_tolerance(max_relative_change: float, where: str) -> None:
    if not max_relative_change >= 0.0:
        raise ValueError(f"{where}: `max_relative_change` must be >= 0, got {max_relative_change}")


def relaxed_accuracy(
    prediction: str, answers: Sequence[str], max_relative_change: float = MAX_RELATIVE_CHANGE
) -> float:
    """Relaxed accuracy of one prediction: 1.0 if it is relaxed-correct for some reference.

    Parameters
    ----------
    prediction : str
        The model's answer.
    answers : sequence of str
        Reference answers (at least one; ChartQA has exactly one).
    max_relative_change : float
        Relative tolerance for numeric answers (ChartQA and lmms-eval: 0.05).

    Returns
    -------
    float
        ``1.0`` or ``0.0``.
    """
    prediction = check_prediction(prediction, "relaxed_accuracy")
    answers = check_answers(answers, "relaxed_accuracy")
    _check_tolerance(max_relative_change, "relaxed_accuracy")
    hit = any(relaxed_correctness(prediction, a, max_relative_change) for a in answers)
    return 1.0 if hit else 0.0


@register_metric("relaxed_accuracy", sample=relaxed_accuracy)
class RelaxedAccuracy(MeanScoreMetric):
    """Streaming relaxed accuracy (mean over samples), summed across processes.

    Parameters
    ----------
    max_relative_change : float
        See :func:`relaxed_accuracy`.
    """

    def __init__(self, max_relative_change: float = MAX_RELATIVE_CHANGE, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_tolerance(max_relative_change, "RelaxedAccuracy")
        self.max_relative_change = max_relative_change

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return relaxed_accuracy(prediction, answers, self.max_relative_change)
