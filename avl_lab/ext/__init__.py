"""Core-cache attention: decode attention that reads only the active rows of a KV cache.

``core_attention`` is the entry point (``dispatch`` is the same without its input checks, what
the engine's decode step calls with indices it built); ``impl`` picks the
implementation ("ref" is the plain-PyTorch specification, "cpu"/"cuda" the compiled ops,
built lazily on first use by :mod:`avl_lab.ext.build`).
"""

from __future__ import annotations

from avl_lab.ext.build import ExtensionBuildError
from avl_lab.ext.op import IMPLS, core_attention, dispatch
from avl_lab.ext.reference import core_attention_ref

__all__ = ["IMPLS", "ExtensionBuildError", "core_attention", "core_attention_ref", "dispatch"]
