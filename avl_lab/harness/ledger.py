"""Per-sample cache accounting handed from the ``avl_lab`` model to the tasks' scoring.

lmms-eval gives a task's ``process_results(doc, results)`` only the document and the generated
text. The model records each sample's stored / used here under the document's ``id``; the
avl_lab tasks' ``process_results`` reads them back (same process: lmms-eval scores each rank's
own documents), so they appear in the sample logs and, averaged, in the results.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["CacheRecord", "clear", "lookup", "record"]


@dataclass(frozen=True)
class CacheRecord:
    """One sample's cache accounting (fractions of the full cache, see ``CacheStats``)."""

    stored: float
    used: float
    policy: str


_RECORDS: dict[str, CacheRecord] = {}
_LOCK = threading.Lock()  # lmms-eval may score documents in worker threads


def record(doc_key: str, entry: CacheRecord) -> None:
    """Remember ``entry`` for the document whose ``id`` is ``doc_key``."""
    with _LOCK:
        _RECORDS[doc_key] = entry


def lookup(doc_key: str) -> CacheRecord | None:
    """The entry recorded for ``doc_key``, or None (another model generated it, or a cache)."""
    with _LOCK:
        return _RECORDS.get(doc_key)


def clear() -> None:
    """Forget every entry (a new model instance starts clean)."""
    with _LOCK:
        _RECORDS.clear()
