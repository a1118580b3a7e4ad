"""The engine: a modality-aware KV cache, an attention function and ``attach``.

Names are resolved lazily so that leaf modules (e.g. ``engine.layout``) can be imported by the
policies without pulling in the whole engine.

The map — layers, who imports whom, the lifecycle of one ``generate`` call under a policy
(prefill → prune → evict → decode steps → update steps) and the tensor notation — is
``docs/ARCHITECTURE.md``. The step clock is :meth:`avl_lab.engine.generation.Run.begin_forward`,
called once per forward by the text model's pre-hook (:mod:`avl_lab.engine.prune_hooks`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AVLCache": "cache",
    "AVLLayer": "cache",
    "CacheStats": "stats",
    "Layout": "layout",
    "Modality": "layout",
    "token_layout": "layout",
    "Session": "session",
    "attach": "session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"avl_lab.engine.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'avl_lab.engine' has no attribute {name!r}")
