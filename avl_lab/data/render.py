"""Drawing helpers shared by the synthetic tasks: DejaVu fonts, colours, shapes, PNG bytes.

Fonts come from matplotlib's bundled DejaVu files first (pinned with matplotlib, so images
are byte-identical wherever the same matplotlib and Pillow are installed), then from the
usual system font directories. Nothing is loaded at import time.
"""

from __future__ import annotations

import io
import math
import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLOURS",
    "contrast_text",
    "draw_shape",
    "fit_font",
    "font",
    "font_path",
    "font_signature",
    "jitter",
    "png_bytes",
    "text_box",
]

FONT_FILES = {
    "regular": "DejaVuSans.ttf",
    "bold": "DejaVuSans-Bold.ttf",
    "mono": "DejaVuSansMono-Bold.ttf",
}
_SYSTEM_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/dejavu-sans-fonts",
    "/Library/Fonts",
    str(Path.home() / ".fonts"),
)

#: Named colours (RGB) used in questions and captions; distinct in hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "blue": (31, 90, 200),
    "green": (34, 150, 52),
    "yellow": (240, 200, 20),
    "orange": (245, 125, 15),
    "purple": (130, 55, 170),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}


@lru_cache(maxsize=4)
def font_path(style: str = "regular") -> Path:
    """Path of the DejaVu font file for ``style`` ("regular", "bold" or "mono": Sans Mono Bold)."""
    if style not in FONT_FILES:
        raise ValueError(f"font `style` must be one of {tuple(FONT_FILES)}, got {style!r}")
    name = FONT_FILES[style]
    dirs: list[Path] = []
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    dirs.extend(Path(d) for d in _SYSTEM_DIRS)
    for d in dirs:
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(
        f"font {name} not found in {[str(d) for d in dirs]}; install matplotlib or the "
        "DejaVu fonts (e.g. apt-get install fonts-dejavu-core)"
    )


def font_signature() -> str:
    """Identifies the font files in use (part of the synthetic-data cache key)."""
    return ";".join(f"{font_path(s).name}:{font_path(s).stat().st_size}" for s in FONT_FILES)


@lru_cache(maxsize=512)
def font(size: int, style: str = "regular") -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size`` pixels (cached)."""
    return ImageFont.truetype(str(font_path(style)), size=size)


def text_box(text: str, fnt: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """Width and height in pixels of ``text`` drawn with ``fnt`` (ink box from the origin)."""
    left, top, right, bottom = fnt.getbbox(text)
    return right, bottom


def fit_font(
    texts: list[str], max_width: float, max_size: int, min_size: int = 8, style: str = "regular"
) -> ImageFont.FreeTypeFont:
    """Largest font (<= ``max_size``) at which every text fits in ``max_width`` pixels."""
    size = max_size
    while size > min_size and max(font(size, style).getlength(t) for t in texts) > max_width:
        size -= 1
    return font(size, style)


def png_bytes(img: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps or text chunks)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    """``rgb`` with each channel moved by up to ``amount``."""
    r, g, b = (max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)
    return (r, g, b)


def contrast_text(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Near-black or near-white, whichever reads better on ``rgb``."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (15, 15, 15) if luma > 140 else (250, 250, 250)


SHAPES = ("circle", "square", "triangle", "diamond")


def draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
    outline: tuple[int, int, int] | None = None,
) -> None:
    """Draw a filled ``kind`` (one of :data:`SHAPES`) of half-size ``r`` centred at (cx, cy)."""
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline)
    elif kind == "square":
        s = r * 0.9
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=outline)
    elif kind == "triangle":
        h = r * math.sqrt(3) / 2
        pts = [(cx, cy - r), (cx - r, cy + h * 0.9), (cx + r, cy + h * 0.9)]
        draw.polygon(pts, fill=fill, outline=outline)
    elif kind == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill, outline=outline
        )
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")
