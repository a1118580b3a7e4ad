"""``core_attention``: input checks and dispatch between the CPU/CUDA ops and the reference."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from avl_lab.ext import build
from avl_lab.ext.reference import core_attention_ref

__all__ = ["IMPLS", "DTYPES", "CUDA_HEAD_DIMS", "core_attention", "check_inputs", "dispatch"]

IMPLS = ("auto", "cuda", "cpu", "ref")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CUDA_HEAD_DIMS = (64, 128, 256)  # head dims the CUDA kernel is instantiated for


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float | None,
    per_head_probs: bool = False,
) -> None:
    """Raise ``ValueError`` naming the offending argument if the inputs are malformed.

    Index values are checked on the CPU only: on CUDA that would cost a device sync per call,
    so the CUDA kernel treats indices outside ``[0, N)`` as padding instead.
    """
    if q.dim() != 4 or q.shape[2] != 1:
        raise ValueError(f"`q` must be [B, Hq, 1, D], got {tuple(q.shape)}")
    if q.dtype not in DTYPES:
        raise ValueError(f"`q` dtype must be one of {DTYPES}, got {q.dtype}")
    B, Hq, _, D = q.shape
    for name, t in (("k", k), ("v", v)):
        if t.dim() != 4 or t.shape[0] != B or t.shape[3] != D:
            raise ValueError(f"`{name}` must be [B={B}, Hkv, N, D={D}], got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"`{name}` dtype {t.dtype} differs from `q` dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"`{name}` is on {t.device} but `q` is on {q.device}")
    if v.shape != k.shape:
        raise ValueError(f"`v` shape {tuple(v.shape)} differs from `k` shape {tuple(k.shape)}")
    Hkv, N = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"`q` heads ({Hq}) must be a multiple of `k` heads ({Hkv})")
    _check_active(active, B, Hkv, N, q.device)
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"`scale` must be a finite float or None, got {scale!r}")
    if not isinstance(per_head_probs, bool):
        raise ValueError(f"`per_head_probs` must be a bool, got {per_head_probs!r}")



def _check_active(active: Tensor, B: int, Hkv: int, N: int, device: torch.device) -> None:
    """``active``: ``[B, n]`` or ``[B, Hkv, n]`` int64 row indices in ``[-1, N)`` on ``device``."""
    if not (
        (active.dim() == 2 and active.shape[0] == B)
        or (active.dim() == 3 and active.shape[:2] == (B, Hkv))
    ):
        raise ValueError(
            f"`active` must be [B={B}, n] or [B={B}, Hkv={Hkv}, n], got {tuple(active.shape)}"
        )
    if active.dtype != torch.int64:
        raise ValueError(f"`active` must be int64 (LongTensor), got {active.dtype}")
    if active.device != device:
        raise ValueError(f"`active` is on {active.device} but `q` is on {device}")
    if active.device.type == "cpu" and active.numel() > 0:
        lo, hi = torch.aminmax(active)
        if int(lo) < -1 or int(hi) >= N:
            raise ValueError(f"`active` values must lie in [-1, {N}), got [{int(lo)}, {int(hi)}]")

def _cuda_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float,
    per_head_probs: bool,
    strict: bool,
):
    if q.shape[3] not in CUDA_HEAD_DIMS:
        if strict:
            raise ValueError(
                f"impl='cuda' supports head dims {CUDA_HEAD_DIMS}, `q` has {q.shape[3]}"
            )
        return None
    mod = build.load("cuda") if strict else build.try_load("cuda")
    if mod is None:
        return None
    vec = q.shape[3] // 32  # each lane loads D/32 contiguous values with one vector load
    k, v = _aligned(k, vec), _aligned(v, vec)
    return mod.core_attention(q.contiguous(), k, v, active.contiguous(), scale, per_head_probs)


def _aligned(t: Tensor, vec: int) -> Tensor:
    t = _unit_stride(t)
    if all(s % vec == 0 for s in t.stride()[:3]) and t.data_ptr() % (vec * t.element_size()) == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)  # fresh, aligned storage


def _cpu_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float,
    per_head_probs: bool,
    strict: bool,
):
    mod = build.load("cpu") if strict else build.try_load("cpu")
    if mod is None:
        return None
    k, v = _unit_stride(k), _unit_stride(v)
    return mod.core_attention(q.contiguous(), k, v, active.contiguous(), scale, per_head_probs)


def _unit_stride(t: Tensor) -> Tensor:
    # The kernels take any batch/head/row strides (a slice of a larger cache buffer stays
    # free); only the head dim must be dense.
    return t if t.stride(3) == 1 else t.contiguous()


def core_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float | None = None,
    impl: str = "auto",
    per_head_probs: bool = False,
) -> tuple[Tensor, Tensor]:
    """Attention of one decode query over the rows ``active`` of ``k``/``v``.

    Parameters
    ----------
    q : Tensor
        ``[B, Hq, 1, D]`` decode queries (float32, bfloat16 or float16).
    k, v : Tensor
        ``[B, Hkv, N, D]`` the layer's cache, ``Hq % Hkv == 0`` (GQA heads not repeated).
        Any batch/head/row strides are accepted without a copy.
    active : Tensor
        int64 row indices, ``-1`` = padding: ``[B, n]`` shared by all heads, or
        ``[B, Hkv, n]`` per kv head (the ``G = Hq // Hkv`` query heads of kv head ``h`` read
        the rows ``active[:, h]``; heads may have different counts, padded with ``-1``).
    scale : float, optional
        Softmax scale, ``D ** -0.5`` when None.
    impl : {"auto", "cuda", "cpu", "ref"}
        "auto" runs the compiled op for the tensors' device and falls back (one warning) to
        the reference if it cannot be built; "cuda"/"cpu" raise instead; "ref" is
        :func:`core_attention_ref`, the specification.
    per_head_probs : bool
        Return ``probs`` per kv head, ``[B, Hkv, n]``. Always so with a per-head ``active``.

    Returns
    -------
    out : Tensor
        ``[B, Hq, 1, D]`` in ``q.dtype``; zeros for a query head whose rows are all padding.
    probs : Tensor
        float32 attention probabilities over the active rows, aligned with ``active`` (0 at
        padding): ``[B, Hkv, n]`` averaged over the ``G`` query heads of each kv head when
        ``per_head_probs`` or ``active`` is ``[B, Hkv, n]``; else ``[B, n]`` averaged over
        all ``Hq`` query heads.
    """
    if impl not in IMPLS:
        raise ValueError(f"`impl` must be one of {IMPLS}, got {impl!r}")
    check_inputs(q, k, v, active, scale, per_head_probs)
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    dev = q.device.type
    if impl in ("cuda", "cpu") and dev != impl:
        raise ValueError(f"impl={impl!r} needs {impl} tensors, `q` is on {q.device}")
    return dispatch(q, k, v, active, scale, per_head_probs, impl)


def dispatch(q: Tensor, k: Tensor, v: Tensor, active: Tensor, scale: float,
             per_head_probs: bool, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """:func:`core_attention` without its input checks, for callers whose inputs are right by
    construction (the engine's decode step, once per layer: no Python checks, no read-back)."""
    dev = q.device.type
    res = None
    if impl == "cuda" or (impl == "auto" and dev == "cuda"):
        res = _cuda_op(q, k, v, active, scale, per_head_probs, strict=impl == "cuda")
    elif impl == "cpu" or (impl == "auto" and dev == "cpu"):
        res = _cpu_op(q, k, v, active, scale, per_head_probs, strict=impl == "cpu")
    if res is None:
        return core_attention_ref(q, k, v, active, scale, per_head_probs)
    out, probs = res
    return out, probs
