"""Exact-match accuracy (easy-vqa): lower-cased, stripped prediction equals some answer."""

from __future__ import annotations

from collections.abc import Sequence

from avl_lab.metrics._base import MeanScoreMetric, check_answers, check_prediction
from avl_lab.metrics.registry import register_metric

__all__ = ["Accuracy", "accuracy"]


def accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if ``prediction.strip().lower()`` equals some ``answer.strip().lower()``, else 0.0."""
    pred = check_prediction(prediction, "accuracy").strip().lower()
    return (
        1.0 if any(pred == a.strip().lower() for a in check_answers(answers, "accuracy")) else 0.0
    )


@register_metric("accuracy", sample=accuracy)
class Accuracy(MeanScoreMetric):
    """Streaming exact-match accuracy (mean over samples), summed across processes."""

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return accuracy(prediction, answers)
