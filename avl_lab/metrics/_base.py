"""Shared pieces of the per-sample metrics: input checks and a streaming mean.

Every per-sample metric (ANLS, VQA accuracy, OCRBench score, exact-match accuracy) scores one
prediction against a list of reference answers; the run-level value is the mean over samples.
:class:`MeanScoreMetric` streams that mean as a torchmetrics ``Metric`` whose two states are
tensors summed across processes, so ``compute()`` after DDP or ``torch.distributed`` sync
equals the single-process mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


def check_answers(answers: Sequence[str], metric: str) -> list[str]:
    """Validate a reference-answer list and return it as a list of ``str``.

    Raises
    ------
    ValueError
        If ``answers`` is a bare string, empty, or holds non-strings.
    """
    if isinstance(answers, str):
        raise ValueError(
            f"{metric}: `answers` must be a list of strings, got the string {answers!r}"
        )
    out = list(answers)
    if not out:
        raise ValueError(f"{metric}: `answers` is empty; every sample needs a reference answer")
    for a in out:
        if not isinstance(a, str):
            raise ValueError(f"{metric}: every answer must be a str, got {type(a).__name__}")
    return out


def check_prediction(prediction: str, metric: str) -> str:
    """Validate a prediction (``None`` is not allowed: pass ``""`` for an empty output)."""
    if not isinstance(prediction, str):
        raise ValueError(f"{metric}: `prediction` must be a str, got {type(prediction).__name__}")
    return prediction


def as_batch(
    predictions: str | Sequence[str], answers: Sequence[str] | Sequence[Sequence[str]]
) -> tuple[list[str], list[Sequence[str]]]:
    """Normalise ``update`` arguments to a batch.

    A single ``str`` prediction with a flat list of answers is one sample; otherwise
    ``predictions`` is a sequence of N strings and ``answers`` a sequence of N answer lists.
    """
    if isinstance(predictions, str):
        return [predictions], [answers]  # type: ignore[list-item]
    preds = list(predictions)
    refs = list(answers)
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} answer lists")
    return preds, refs  # type: ignore[return-value]


class MeanScoreMetric(Metric):
    """Streaming mean of a per-sample score; states are summed across processes.

    Subclasses implement :meth:`score`. ``update(predictions, answers)`` takes either one
    sample (``str``, ``list[str]``) or a batch (``list[str]``, ``list[list[str]]``);
    ``compute()`` returns the mean as a 0-d float64 tensor (NaN when nothing was seen).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        """Score one sample (implemented by subclasses)."""
        raise NotImplementedError

    def update(
        self,
        predictions: str | Sequence[str],
        answers: Sequence[str] | Sequence[Sequence[str]],
    ) -> None:
        """Add one sample or a batch of samples."""
        preds, refs = as_batch(predictions, answers)
        batch = sum(self.score(p, a) for p, a in zip(preds, refs))
        self.total += float(batch)
        self.count += len(preds)

    def compute(self) -> torch.Tensor:
        """Mean score over all samples seen (by every process after sync)."""
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count


class ScoreMean(MeanScoreMetric):
    """Streaming mean of samples already scored (by :func:`avl_lab.metrics.score_rows`):
    ``update(scores)`` takes one float or a sequence of them."""

    def update(self, scores: float | Sequence[float]) -> None:  # type: ignore[override]
        values = [float(scores)] if isinstance(scores, (int, float)) else [float(x) for x in scores]
        self.total += sum(values)
        self.count += len(values)
