"""The engine: a modality-aware KV cache, an attention function and ``attach``."""

from avl_lab.engine.cache import AVLCache, AVLLayer
from avl_lab.engine.layout import Layout, Modality, token_layout
from avl_lab.engine.session import Session, attach
from avl_lab.engine.stats import CacheStats

__all__ = [
    "AVLCache",
    "AVLLayer",
    "CacheStats",
    "Layout",
    "Modality",
    "Session",
    "attach",
    "token_layout",
]
