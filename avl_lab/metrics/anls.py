"""ANLS (Average Normalised Levenshtein Similarity), DocVQA's metric, lmms-eval semantics.

Per sample: both strings are stripped, lower-cased and have runs of whitespace collapsed;
for each reference, ``d = lev(ref_norm, pred_norm) / max(len(ref_raw), len(pred_raw))``
(the denominator uses the raw, un-normalised strings, as lmms-eval does; ``0`` when both
are empty); the score is ``1 - min(d)``, set to ``0`` when it is below ``threshold``
(a score of exactly ``threshold`` is kept). The run-level ANLS is the mean over samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from avl_lab.metrics._base import MeanScoreMetric, check_answers, check_prediction
from avl_lab.metrics.registry import register_metric

__all__ = ["ANLS", "anls", "levenshtein"]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) > len(b):
        a, b = b, a
    prev = list(range(len(a) + 1))
    for j, cb in enumerate(b, start=1):
        cur = [j]
        for i, ca in enumerate(a, start=1):
            cur.append(prev[i - 1] if ca == cb else 1 + min(prev[i - 1], prev[i], cur[i - 1]))
        prev = cur
    return prev[-1]


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """ANLS of one prediction against its reference answers.

    Parameters
    ----------
    prediction : str
        The model's answer.
    answers : sequence of str
        Reference answers (at least one).
    threshold : float
        Scores below it become 0 (lmms-eval and the DocVQA challenge use 0.5).

    Returns
    -------
    float
        A value in ``{0} ∪ [threshold, 1]``.
    """
    prediction = check_prediction(prediction, "anls")
    answers = check_answers(answers, "anls")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"anls: `threshold` must be in [0, 1], got {threshold}")
    pred = _norm(prediction)
    dists = []
    for ans in answers:
        length = max(len(ans.upper()), len(prediction.upper()))
        dists.append(0.0 if length == 0 else levenshtein(_norm(ans), pred) / length)
    score = 1.0 - min(dists)
    return 0.0 if score < threshold else score


@register_metric("anls", sample=anls)
class ANLS(MeanScoreMetric):
    """Streaming ANLS (mean over samples), summed across processes.

    Parameters
    ----------
    threshold : float
        See :func:`anls`.
    """

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ANLS: `threshold` must be in [0, 1], got {threshold}")
        self.threshold = threshold

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return anls(prediction, answers, self.threshold)
