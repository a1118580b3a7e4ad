"""Task metrics (one per file) and the cache-accounting aggregates.

Plain functions score one sample (or, for CIDEr, a corpus); the torchmetrics ``Metric``
classes stream the same numbers with ``update`` / ``compute`` and sync across processes.

================  =========================================  ========================
name              plain function                             streaming class
================  =========================================  ========================
anls              ``anls(prediction, answers)``              :class:`ANLS`
vqa_accuracy      ``vqa_accuracy(prediction, answers)``      :class:`VQAAccuracy`
ocrbench          ``ocrbench_score(prediction, answers)``    :class:`OCRBenchScore`
accuracy          ``accuracy(prediction, answers)``          :class:`Accuracy`
relaxed_accuracy  ``relaxed_accuracy(prediction, answers)``  :class:`RelaxedAccuracy`
cider             ``cider(predictions, references)``         :class:`CIDEr`
(analysis)        ``ppci(scores_a, scores_b, p)``            :class:`PPCI`
(cache)           per sample: :mod:`avl_lab.engine.stats`    :class:`CacheAccounting`
================  =========================================  ========================

``build_metric(name)`` returns the streaming metric for a dataset row's ``metric`` field;
``score_rows(name, predictions, rows)`` scores samples with their rows' ``meta`` (one path for
every caller), and :class:`ScoreMean` streams the mean of those scores.
"""

from avl_lab.metrics import registry
from avl_lab.metrics._base import ScoreMean
from avl_lab.metrics.accuracy import Accuracy, accuracy
from avl_lab.metrics.anls import ANLS, anls
from avl_lab.metrics.cache_accounting import CacheAccounting
from avl_lab.metrics.cider import CIDEr, CiderResult, cider, cider_d, cider_score
from avl_lab.metrics.normalize import normalize_answer
from avl_lab.metrics.ocrbench import OCRBenchScore, ocrbench_score
from avl_lab.metrics.ppci import PPCI, ppci, ppci_rows
from avl_lab.metrics.ptb import java_available, tokenize_captions
from avl_lab.metrics.registry import (
    build_metric,
    metric_names,
    register_metric,
    sample_score,
    score_rows,
)
from avl_lab.metrics.relaxed_accuracy import RelaxedAccuracy, relaxed_accuracy
from avl_lab.metrics.vqa_accuracy import VQAAccuracy, vqa_accuracy

__all__ = [
    "ANLS",
    "METRIC_NAMES",
    "PPCI",
    "ScoreMean",
    "Accuracy",
    "CIDEr",
    "CacheAccounting",
    "CiderResult",
    "OCRBenchScore",
    "RelaxedAccuracy",
    "VQAAccuracy",
    "accuracy",
    "anls",
    "build_metric",
    "cider",
    "cider_d",
    "cider_score",
    "java_available",
    "metric_names",
    "normalize_answer",
    "ocrbench_score",
    "ppci",
    "ppci_rows",
    "register_metric",
    "relaxed_accuracy",
    "sample_score",
    "score_rows",
    "tokenize_captions",
    "vqa_accuracy",
]

#: The built-in metric names (each metric file registers its class with ``@register_metric``);
#: :func:`metric_names` adds those of plugins.
METRIC_NAMES: tuple[str, ...] = registry.registered()
