"""Core-cache attention: decode attention that reads only the active rows of a KV cache.

``core_attention`` is the one entry point the engine calls; ``impl`` picks the
implementation ("ref" is the plain-PyTorch specification).
"""

from __future__ import annotations

from torch import Tensor

from avl_lab.ext.reference import core_attention_ref

__all__ = ["core_attention", "core_attention_ref"]

_IMPLS = ("auto", "ref")


def core_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float | None = None,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Attention of one decode query over the rows ``active`` of ``k``/``v``.

    See :func:`avl_lab.ext.reference.core_attention_ref` for shapes and semantics.
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    return core_attention_ref(q, k, v, active, scale)
