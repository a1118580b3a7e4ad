"""Safe image decoding, and iteration that skips (and counts) rows whose image is corrupt."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Image
from PIL import Image as PILImage

__all__ = ["CorruptImageWarning", "SkippedRows", "iter_valid_rows", "safe_image"]

log = logging.getLogger(__name__)


class CorruptImageWarning(UserWarning):
    """A dataset row's image could not be decoded; the row is skipped."""


@dataclass
class SkippedRows:
    """Rows skipped during a run, for its summary (``count`` and the first ``ids``)."""

    count: int = 0
    ids: list[str] = field(default_factory=list)
    max_ids: int = 100

    def add(self, row_id: str) -> None:
        self.count += 1
        if len(self.ids) < self.max_ids:
            self.ids.append(row_id)

    def as_dict(self) -> dict[str, Any]:
        return {"skipped": self.count, "skipped_ids": list(self.ids)}


def _open(value: Any) -> PILImage.Image:
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return PILImage.open(io.BytesIO(bytes(value)))
    if isinstance(value, (str, Path)):
        return PILImage.open(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return PILImage.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return PILImage.open(value["path"])
        raise ValueError("image dict has neither bytes nor path")
    if value is None:
        raise ValueError("image is missing (None)")
    raise TypeError(f"unsupported image value of type {type(value).__name__}")


def safe_image(value: Any, row_id: str | None = None) -> PILImage.Image | None:
    """Decode a datasets image value to an RGB PIL image, or ``None`` if it is corrupt.

    Parameters
    ----------
    value : PIL image, dict with ``bytes``/``path``, bytes, or a path
        What a ``datasets`` ``Image`` column holds (decoded or not).
    row_id : str, optional
        Named in the warning.

    Returns
    -------
    PIL.Image.Image or None
        The fully loaded RGB image; ``None`` (with a :class:`CorruptImageWarning`) when the
        value cannot be decoded.
    """
    try:
        img = _open(value)
        img.load()  # force a full decode: catches truncated files
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as err:  # any decoder failure means "skip this row"
        msg = f"skipping row {row_id!r}: cannot decode its image ({type(err).__name__}: {err})"
        log.warning(msg)
        warnings.warn(msg, CorruptImageWarning, stacklevel=2)
        return None


def iter_valid_rows(dataset: Dataset, skipped: SkippedRows | None = None) -> Iterator[dict]:
    """Iterate rows with ``row["image"]`` decoded to RGB, skipping undecodable ones.

    Images are read undecoded and passed through :func:`safe_image`, so a corrupt row
    never raises; it is counted in ``skipped`` (for the run summary) instead.
    """
    raw = dataset.cast_column("image", Image(decode=False))
    for row in raw:
        img = safe_image(row["image"], row.get("id"))
        if img is None:
            if skipped is not None:
                skipped.add(str(row.get("id")))
            continue
        yield {**row, "image": img}
