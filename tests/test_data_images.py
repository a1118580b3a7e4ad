"""Corrupt images are skipped with a warning and counted, never a crash mid-run."""

import io

import pytest
from datasets import Dataset
from PIL import Image as PILImage

from avl_lab.data import CorruptImageWarning, SkippedRows, iter_valid_rows, safe_image
from avl_lab.data.schema import row_features


def _png(colour=(10, 200, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    PILImage.new(mode, (8, 8), colour if mode == "RGB" else 128).save(buf, format="PNG")
    return buf.getvalue()


def test_safe_image_decodes_all_value_kinds(tmp_path):
    png = _png()
    path = tmp_path / "x.png"
    path.write_bytes(png)
    for value in (png, {"bytes": png, "path": None}, {"bytes": None, "path": str(path)}, str(path),
                  PILImage.open(io.BytesIO(png))):  # fmt: skip
        img = safe_image(value)
        assert img is not None and img.mode == "RGB" and img.getpixel((0, 0)) == (10, 200, 30)
    assert safe_image(_png(mode="L")).mode == "RGB"


@pytest.mark.parametrize(
    "bad",
    [b"not an image at all", {"bytes": b"\x89PNG garbage", "path": None}, _png()[:40], None, 3.5],
    ids=["garbage", "bad-png-dict", "truncated", "none", "float"],
)
def test_safe_image_returns_none_with_warning(bad):
    with pytest.warns(CorruptImageWarning, match="row 'r7'"):
        assert safe_image(bad, row_id="r7") is None


def test_corrupt_row_is_skipped_and_counted():
    good = {"bytes": _png(), "path": None}
    rows = {
        "id": ["a", "b", "c"],
        "image": [good, {"bytes": b"\x00garbage\xff" * 10, "path": None}, good],
        "question": ["q"] * 3,
        "prompt": ["q"] * 3,
        "answers": [["x"]] * 3,
        "metric": ["anls"] * 3,
        "meta": ["{}"] * 3,
    }
    ds = Dataset.from_dict(rows, features=row_features())
    with pytest.raises(Exception):  # noqa: B017 - decoding the corrupt row directly fails
        _ = ds[1]["image"]
    skipped = SkippedRows()
    with pytest.warns(CorruptImageWarning, match="'b'"):
        out = list(iter_valid_rows(ds, skipped))
    assert [r["id"] for r in out] == ["a", "c"]
    assert all(r["image"].size == (8, 8) for r in out)
    assert skipped.count == 1 and skipped.as_dict() == {"skipped": 1, "skipped_ids": ["b"]}
