"""OCRBench score, lmms-eval semantics (``tasks/ocrbench/utils.py`` as of lmms-eval 0.6+).

A sample scores 1 when any reference answer occurs as a substring of the prediction, else 0.
Both sides are compared after folding full-width ASCII (U+FF01..U+FF5E, and the ideographic
space) to ASCII, lower-casing, stripping and turning newlines into spaces. Samples from
OCRBench's ``HME100k`` subset (handwritten maths, LaTeX answers) are compared
case-sensitively with all spaces removed and without full-width folding. (Older lmms-eval
lower-cased the HME100k prediction but not its reference; lmms-eval fixed that in #1278 and
added the full-width folding in #1415; we follow the fixed behaviour.)
The run-level score is the mean; lmms-eval reports the sum over OCRBench's 1,000 questions
divided by 1,000, which is the same number on the full set.
"""

from __future__ import annotations

from collections.abc import Sequence

from avl_lab.metrics._base import MeanScoreMetric, as_batch, check_answers, check_prediction
from avl_lab.metrics.registry import register_metric

__all__ = ["OCRBenchScore", "ocrbench_score"]

HME_SUBSET = "HME100k"
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def _fold_fullwidth(text: str) -> str:
    """Map full-width ASCII forms (and the ideographic space) to ASCII."""
    return text.translate(_FULLWIDTH)


def ocrbench_score(prediction: str, answers: Sequence[str], dataset: str | None = None) -> float:
    """OCRBench score (0 or 1) of one prediction.

    Parameters
    ----------
    prediction : str
        The model's answer.
    answers : sequence of str
        Reference answers (at least one).
    dataset : str, optional
        The OCRBench source subset of the sample (its ``dataset`` column); ``"HME100k"``
        switches to case-sensitive, whitespace-free comparison.

    Returns
    -------
    float
        ``1.0`` if some reference occurs in the prediction, else ``0.0``.
    """
    prediction = check_prediction(prediction, "ocrbench_score")
    answers = check_answers(answers, "ocrbench_score")
    if dataset == HME_SUBSET:
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        hit = any(a.strip().replace("\n", " ").replace(" ", "") in pred for a in answers)
    else:
        pred = _fold_fullwidth(prediction).lower().strip().replace("\n", " ")
        hit = any(_fold_fullwidth(a).lower().strip().replace("\n", " ") in pred for a in answers)
    return 1.0 if hit else 0.0


@register_metric("ocrbench", sample=ocrbench_score)
class OCRBenchScore(MeanScoreMetric):
    """Streaming OCRBench score (mean of 0/1 sample scores), summed across processes.

    ``update(predictions, answers, datasets=None)``: ``datasets`` optionally gives each
    sample's OCRBench subset name (see :func:`ocrbench_score`).
    """

    def score(self, prediction: str, answers: Sequence[str], dataset: str | None = None) -> float:
        return ocrbench_score(prediction, answers, dataset)

    def update(  # type: ignore[override]
        self,
        predictions: str | Sequence[str],
        answers: Sequence[str] | Sequence[Sequence[str]],
        datasets: str | Sequence[str | None] | None = None,
    ) -> None:
        preds, refs = as_batch(predictions, answers)
        if datasets is None or isinstance(datasets, str):
            subsets: list[str | None] = [datasets] * len(preds)
        else:
            subsets = list(datasets)
        if len(subsets) != len(preds):
            raise ValueError(f"got {len(preds)} predictions but {len(subsets)} dataset names")
        self.total += float(sum(self.score(p, a, d) for p, a, d in zip(preds, refs, subsets)))
        self.count += len(preds)
