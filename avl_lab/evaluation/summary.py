"""The run summary, computed from ``samples.jsonl`` so that a resumed run ends identical."""

from __future__ import annotations

import dataclasses
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from avl_lab.metrics import cider_score, sample_score


@dataclass
class Summary:
    """What ``summary.json`` holds (see the README's table)."""

    metric: str
    score: float
    stored: float
    used: float
    n: int
    skipped: int
    skipped_reasons: dict[str, int]
    decode_tokens_per_s: float
    prefill_s: float
    decode_s: float
    peak_memory_mb: float
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def versions() -> dict[str, str]:
    import lightning
    import torch
    import transformers

    import avl_lab
    from avl_lab import plugins

    loaded = "; ".join(f"{p.module} ({p.source})" for p in plugins.loaded())
    return {
        "avl_lab": avl_lab.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **({"plugins": loaded} if loaded else {}),
    }


def sample_scores(metric: str, records: list[dict[str, Any]]) -> tuple[list[float], dict[str, Any]]:
    """Each record's score (in record order) and what the scoring used: per-sample metrics as
    recorded (scored with the row's meta), CIDEr-D per image with the idf of all ``records``
    (whose mean is the corpus score)."""
    if metric == "cider":
        res = cider_score({r["id"]: r["prediction"] for r in records},
                          {r["id"]: r["references"] for r in records})
        return [float(res.per_image[r["id"]]) for r in records], {"cider_tokenizer": res.tokenizer}
    return [r["score"] if r.get("score") is not None
            else sample_score(metric, r["prediction"], r["references"], r.get("meta"))
            for r in records], {}


def task_score(metric: str, records: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """The task score over ``records``: mean per-sample score, or corpus CIDEr-D."""
    if not records:
        return float("nan"), {}
    if metric == "cider":
        res = cider_score({r["id"]: r["prediction"] for r in records},
                          {r["id"]: r["references"] for r in records})
        return float(res.score), {"cider_tokenizer": res.tokenizer}
    scores, extra = sample_scores(metric, records)
    return sum(scores) / len(scores), extra


def summarize(
    records: list[dict[str, Any]], metric: str, skipped: int, config: dict[str, Any],
    peak_memory_mb: float, skipped_reasons: dict[str, int] | None = None,
) -> Summary:
    records = sorted(records, key=lambda r: r["id"])
    score, extra = task_score(metric, records)
    n = len(records)
    batches = {r["batch"]: r for r in records}.values()  # one timing per generate call
    decode_s = sum(b["decode_s"] for b in batches)
    new_tokens = sum(r["new_tokens"] for r in records)
    return Summary(
        metric=metric,
        score=score,
        stored=sum(r["stored"] for r in records) / n if n else float("nan"),
        used=sum(r["used"] for r in records) / n if n else float("nan"),
        n=n,
        skipped=skipped,
        skipped_reasons=dict(skipped_reasons or {}),
        decode_tokens_per_s=new_tokens / decode_s if decode_s > 0 else 0.0,
        prefill_s=sum(b["prefill_s"] for b in batches) / max(1, len(batches)),
        decode_s=decode_s / max(1, len(batches)),
        peak_memory_mb=peak_memory_mb,
        config=config,
        versions=versions(),
        extra=extra,
    )
