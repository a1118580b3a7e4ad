"""The reference answers are really in the pixels: a real OCR engine reads them back.

rapidocr-onnxruntime (a test-only dependency) reads the asked field's row of synth-docvqa
documents, the asked sign of synth-textvqa scenes and the whole synth-ocr image; every
word of the reference must be found. synth-caption has no text, so its objects are
recovered from pixels with OpenCV (colour masks, connected components, fill ratios) and
must match the caption. A handful of samples keeps this fast.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

from avl_lab import data
from avl_lab.data.render import COLOURS
from avl_lab.data.synth_caption import CAPTION_COLOURS

rapidocr = pytest.importorskip("rapidocr_onnxruntime")
cv2 = pytest.importorskip("cv2")

N = 3  # samples per task


@pytest.fixture(scope="module")
def ocr():
    engine = rapidocr.RapidOCR(det_limit_type="max", det_limit_side_len=1024)

    def read(img) -> str:
        # the dataset image itself, enlarged 3x: its glyphs are ~8 px tall (one per 10 px
        # ViT patch), below what the detector finds unaided
        big = img.resize((img.size[0] * 3, img.size[1] * 3), Image.BICUBIC)
        res, _ = engine(np.asarray(big), use_cls=False)
        return " ".join(r[1] for r in res or [])

    return read


def _isolate(img, box, fill):
    """``img`` blanked outside ``box`` (so OCR sees only that region), with a margin."""
    m = img.size[0] // 16  # a blank margin: grid text may touch the image border
    canvas = Image.new("RGB", (img.size[0] + 2 * m, img.size[1] + 2 * m), fill)
    canvas.paste(img.crop(box), (box[0] + m, box[1] + m))
    return canvas


def _norm(s: str) -> str:
    # the OCR model confuses DejaVu Sans Mono's capital O and its dotted zero; the pixels
    # differ, so that is the engine's limit, not missing text
    return re.sub(r"[^a-z0-9]", "", s.lower()).replace("0", "o")


def _all_words_in(answer: str, text: str) -> bool:
    return all(_norm(w) in _norm(text) for w in answer.split() if _norm(w))


def _nearly_in(label: str, text: str) -> bool:
    """``label`` occurs in ``text`` with at most one wrong character (short mono labels
    such as ``TAX`` at the image's left edge are sometimes misread by one glyph)."""
    w, t = _norm(label), _norm(text)
    return any(
        sum(a != b for a, b in zip(w, t[i : i + len(w)])) <= 1 for i in range(len(t) - len(w) + 1)
    )


def test_docvqa_field_is_readable(ocr):
    for row in data.load("synth-docvqa", "eval", limit=N, cache=False):
        meta = json.loads(row["meta"])
        x0, y0, x1, y1 = meta["box"]
        img = row["image"]
        row_box = (0, y0, img.size[0], y1)  # the whole row (label and value), not its neighbours
        text = ocr(_isolate(img, row_box, img.getpixel((1, 1))))
        assert _all_words_in(row["answers"][0], text), (row["answers"], text)
        assert _nearly_in(meta["field"], text), (meta["field"], text)


def test_textvqa_asked_sign_is_readable(ocr):
    for row in data.load("synth-textvqa", "eval", limit=N, cache=False):
        x0, y0, x1, y1 = json.loads(row["meta"])["box"]
        text = ocr(_isolate(row["image"], (x0 - 4, y0 - 4, x1 + 4, y1 + 4), (255, 255, 255)))
        assert _all_words_in(row["answers"][0], text), (row["answers"][0], text)


def test_ocr_text_is_readable(ocr):
    for row in data.load("synth-ocr", "eval", limit=N, cache=False):
        text = ocr(row["image"])
        assert _all_words_in(row["answers"][0], text), (row["answers"][0], text)


def _recover_objects(img, cell: float) -> set[tuple[str, str, str, str]]:
    """(size, colour, shape, position) of every shape found in the pixels."""
    names = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "left",
             (1, 1): "center", (1, 2): "right", (2, 0): "bottom left", (2, 1): "bottom",
             (2, 2): "bottom right"}  # fmt: skip
    arr = np.asarray(img).astype(int)
    found = set()
    for colour in CAPTION_COLOURS:
        mask = (np.abs(arr - np.array(COLOURS[colour])).max(axis=2) <= 30).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        for k in range(1, n):
            x, y, w, h, area = stats[k]
            if area < 40:
                continue
            fill = area / (w * h)
            if fill > 0.9:
                shape = "square"
            elif fill > 0.7:
                shape = "circle"
            else:  # triangle: widest at the bottom; diamond: widest in the middle
                rows = (labels[y : y + h, x : x + w] == k).sum(axis=1)
                shape = (
                    "triangle" if rows[-max(1, h // 8) :].mean() > rows[h // 2] * 0.9 else "diamond"
                )
            size = "large" if max(w, h) > cell * 0.55 else "small"
            cx, cy = x + w / 2, y + h / 2
            found.add((size, colour, shape, names[(int(cy // cell), int(cx // cell))]))
    return found


def test_caption_objects_are_recoverable_from_pixels():
    for row in data.load("synth-caption", "eval", limit=8, cache=False):
        img = row["image"]
        recovered = _recover_objects(img, img.size[0] / 3)
        objs = json.loads(row["meta"])["objects"]
        assert recovered == {(o["size"], o["colour"], o["shape"], o["position"]) for o in objs}
        caption = row["answers"][0]
        for size, colour, shape, _ in recovered:
            assert f"{size} {colour} {shape}" in caption
