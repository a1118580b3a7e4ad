"""Metric names used by the datasets (``row["metric"]``) and how to build each one."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchmetrics import Metric

from avl_lab.metrics.accuracy import Accuracy, accuracy
from avl_lab.metrics.anls import ANLS, anls
from avl_lab.metrics.cider import CIDEr
from avl_lab.metrics.ocrbench import OCRBenchScore, ocrbench_score
from avl_lab.metrics.relaxed_accuracy import RelaxedAccuracy, relaxed_accuracy
from avl_lab.metrics.vqa_accuracy import VQAAccuracy, vqa_accuracy

__all__ = ["METRIC_NAMES", "SAMPLE_SCORERS", "build_metric", "sample_score", "score_rows"]

_BUILDERS: dict[str, Callable[..., Metric]] = {
    "anls": ANLS,
    "vqa_accuracy": VQAAccuracy,
    "ocrbench": OCRBenchScore,
    "cider": CIDEr,
    "accuracy": Accuracy,
    "relaxed_accuracy": RelaxedAccuracy,
}
METRIC_NAMES: tuple[str, ...] = tuple(_BUILDERS)

#: Per-sample scorers; ``cider`` has none (its idf needs the whole corpus).
SAMPLE_SCORERS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "anls": anls,
    "vqa_accuracy": vqa_accuracy,
    "ocrbench": ocrbench_score,
    "accuracy": accuracy,
    "relaxed_accuracy": relaxed_accuracy,
}


def _check(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")


def build_metric(name: str, **kwargs) -> Metric:
    """A fresh streaming metric for a dataset's ``metric`` name (e.g. ``"anls"``)."""
    _check(name)
    return _BUILDERS[name](**kwargs)


def sample_score(
    name: str, prediction: str, answers: Sequence[str], meta: Mapping[str, Any] | str | None = None
) -> float | None:
    """Per-sample score for ``samples.jsonl``; ``None`` for corpus-only metrics (cider).

    ``meta`` is the row's ``meta`` (JSON string or dict); OCRBench uses its ``dataset``.
    """
    _check(name)
    if name == "ocrbench":
        info = json.loads(meta) if isinstance(meta, str) else (meta or {})
        return ocrbench_score(prediction, answers, info.get("dataset"))
    fn = SAMPLE_SCORERS.get(name)
    return None if fn is None else fn(prediction, answers)


def score_rows(
    name: str, predictions: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> list[float | None]:
    """Per-sample scores of ``predictions`` against dataset ``rows`` (their ``answers`` and
    ``meta``): the one scoring path of evaluation records, summaries, progress bars and
    training evaluation, so that category rules such as OCRBench's HME100k always apply."""
    if len(predictions) != len(rows):
        raise ValueError(f"got {len(predictions)} predictions but {len(rows)} rows")
    return [sample_score(name, p, r["answers"], r.get("meta")) for p, r in zip(predictions, rows)]
