"""VQA accuracy (TextVQA / VQAv2), lmms-eval semantics.

Prediction and every reference are normalised with EvalAI's rules
(:func:`avl_lab.metrics.normalize.normalize_answer`). For each reference ``i`` the
accuracy against the *other* references is ``min(1, #matches / 3)``; the sample score is
the mean over ``i`` (the leave-one-out average of the official evaluation). With ten
references an answer given by at least four annotators scores 1, by three 0.9, by two 0.6,
by one 0.3. With a single reference the score is always 0 (its leave-one-out set is empty),
exactly as in lmms-eval.
"""

from __future__ import annotations

from collections.abc import Sequence

from avl_lab.metrics._base import MeanScoreMetric, check_answers, check_prediction
from avl_lab.metrics.normalize import normalize_answer
from avl_lab.metrics.registry import register_metric

__all__ = ["VQAAccuracy", "vqa_accuracy"]


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against (typically ten) reference answers.

    Parameters
    ----------
    prediction : str
        The model's answer.
    answers : sequence of str
        Reference answers (at least one).

    Returns
    -------
    float
        A value in [0, 1].
    """
    prediction = check_prediction(prediction, "vqa_accuracy")
    answers = check_answers(answers, "vqa_accuracy")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    accs = []
    for i in range(len(refs)):
        matches = sum(1 for j, r in enumerate(refs) if j != i and r == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


@register_metric("vqa_accuracy", sample=vqa_accuracy)
class VQAAccuracy(MeanScoreMetric):
    """Streaming VQA accuracy (mean over samples), summed across processes."""

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return vqa_accuracy(prediction, answers)
