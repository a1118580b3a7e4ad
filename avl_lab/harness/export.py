"""``python -m avl_lab.harness.export``: write the shipped tasks' rows as parquet files.

Each lmms-eval task in :data:`avl_lab.harness.TASKS` reads ``tasks/data/<task>.parquet``: the
first N rows of the avl_lab task's ``eval`` split, in avl_lab's row schema (images as encoded
PNG bytes with the ``datasets`` Image feature, so lmms-eval hands ``doc["image"]`` over as a PIL
image). Rerun after a change to a synthetic generator (its ``GENERATOR_VERSION``);
``tests/test_lmms_harness.py::test_shipped_rows_are_the_generated_rows`` fails until then.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset, Image

from avl_lab.harness import TASKS, TASKS_DIR

__all__ = ["export", "rows", "task_file"]

log = logging.getLogger(__name__)


def task_file(task: str) -> Path:
    """Where the rows of lmms-eval task ``task`` live."""
    return TASKS_DIR / "data" / f"{task}.parquet"


def rows(task: str, decode: bool = True) -> Dataset:
    """The rows task ``task`` ships, generated now (``decode=False``: images as
    ``{"bytes", "path"}``, as stored)."""
    from avl_lab import data

    name, n = TASKS[task]
    return data.load(name, "eval", limit=n).cast_column("image", Image(decode=decode))


def export() -> list[Path]:
    """Write every task's parquet file; returns their paths."""
    paths = []
    for task in TASKS:
        path = task_file(task)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows(task).to_parquet(path)
        log.info("wrote %s", path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export()
