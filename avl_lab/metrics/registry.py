"""Metric names used by the datasets (``row["metric"]``) and how to build each one."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from torchmetrics import Metric

__all__ = ["SAMPLE_SCORERS", "build_metric", "metric_names", "register_metric", "registered",
           "sample_score", "score_rows"]

M = TypeVar("M", bound=type[Metric])

_BUILDERS: dict[str, Callable[..., Metric]] = {}
#: Per-sample scorers; ``cider`` has none (its idf needs the whole corpus).
SAMPLE_SCORERS: dict[str, Callable[..., float]] = {}


def register_metric(name: str, sample: Callable[..., float] | None = None) -> Callable[[M], M]:
    """Class decorator registering a streaming metric under the dataset ``metric`` name
    ``name``, with its per-sample scorer ``sample`` (None: corpus-level only, like CIDEr)."""

    def deco(cls: M) -> M:
        if name in _BUILDERS:
            old = _BUILDERS[name]
            raise ValueError(f"metric name {name!r} is already registered by "
                             f"{old.__module__}.{old.__qualname__}")
        _BUILDERS[name] = cls
        if sample is not None:
            SAMPLE_SCORERS[name] = sample
        return cls

    return deco


def registered() -> tuple[str, ...]:
    """The metric names registered so far: the built-in ones (each metric module registers
    itself) and those of plugins already imported; entry points are not loaded here."""
    import avl_lab.metrics  # noqa: F401

    return tuple(_BUILDERS)


def metric_names() -> tuple[str, ...]:
    """The registered metric names, in registration order (the built-in ones in the order of
    ``metrics/__init__``, then those of plugins, installed entry points included)."""
    from avl_lab.plugins import load_installed

    load_installed()
    return registered()


def _check(name: str) -> None:
    if name not in metric_names():
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(metric_names())}")


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
        return SAMPLE_SCORERS[name](prediction, answers, info.get("dataset"))
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
