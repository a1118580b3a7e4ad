"""avl_lab: adaptive attention (A-VL) for large vision-language models, on stock transformers.

>>> import avl_lab
>>> model, processor = avl_lab.models.tiny_random("llava")          # doctest: +SKIP
>>> with avl_lab.attach(model, {"name": "avl", "S": 45, "C": 30}) as session:  # doctest: +SKIP
...     out = session.generate(**inputs, max_new_tokens=16)
>>> session.stats.stored, session.stats.used                         # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from avl_lab._versions import check as _check_versions

__version__ = "0.1.0"

_check_versions()  # a transformers outside the tested range: one line naming it

__all__ = [
    "CacheStats", "__version__", "attach", "data", "engine", "evaluation", "ext", "metrics", "models",
    "policies",
]

_SUBMODULES = {"models", "policies", "ext", "engine", "data", "metrics", "evaluation", "evaluate", "testing"}


def __getattr__(name: str) -> Any:
    # Lazy: importing avl_lab stays cheap; submodules load on first use.
    if name in _SUBMODULES:
        return importlib.import_module(f"avl_lab.{name}")
    if name in ("attach", "Session", "CacheStats"):
        return getattr(importlib.import_module("avl_lab.engine"), name)
    raise AttributeError(f"module 'avl_lab' has no attribute {name!r}")
