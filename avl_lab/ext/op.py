"""``core_attention``: input checks and dispatch between the CPU/CUDA ops and the reference.

Which implementation ran is counted per process (:func:`ran`); with the environment variable
``AVL_LAB_OP_LOG=<path>`` the counts are also written to ``<path>`` (JSON, merged with what is
there) when the process exits, so that ``benchmarks/gpu_check.sh`` can tell, per step, whether
the kernel or the reference ran.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from avl_lab.ext import build
from avl_lab.ext.reference import core_attention_ref

__all__ = [
    "IMPLS",
    "DTYPES",
    "CUDA_HEAD_DIMS",
    "MAX_GRID_Y",
    "core_attention",
    "check_inputs",
    "cuda_unsupported",
    "dispatch",
    "ran",
]

IMPLS = ("auto", "cuda", "cpu", "ref")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Head dims the CUDA kernel is instantiated for: every family of models.loader.KNOWN_CHECKPOINTS
# uses one of them (Llama/Vicuna, Qwen2/2.5/3, InternVL3, Idefics3 128; SmolVLM 64; Gemma 3
# 256). 80/96 (Phi-2/Phi-3 decoders, not in our table) would need a lane load of D/32 = 2.5/3
# values, which the kernel's power-of-two vector loads do not do: `auto` warns and falls back.
CUDA_HEAD_DIMS = (64, 128, 256)
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y/z; the kernel's grid.y is Hkv x query-head tiles

_warned: set[str] = set()  # causes already warned about (one warning each per process)
_ran: Counter[str] = Counter()  # "cuda" / "cpu": the op ran; "ref": asked; "fallback": not
_log_path: str | None = None  # AVL_LAB_OP_LOG, read on the first dispatch


def ran() -> dict[str, int]:
    """How often each implementation ran in this process: ``cuda``/``cpu`` (the compiled op),
    ``ref`` (``impl="ref"``) and ``fallback`` (the reference instead of a compiled op)."""
    return dict(_ran)


def _count(kind: str) -> None:
    global _log_path
    if _log_path is None:  # first call: register the exit hook only when asked to
        _log_path = os.environ.get("AVL_LAB_OP_LOG", "")
        if _log_path:
            atexit.register(_write_log, _log_path)
    _ran[kind] += 1


def _write_log(path: str) -> None:
    """Add this process's counts to the JSON file ``path`` (steps may run several processes)."""
    file = Path(path)
    counts = Counter(json.loads(file.read_text())) if file.exists() else Counter()
    counts.update(_ran)
    file.write_text(json.dumps(dict(counts)))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


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

def _query_heads_per_block(G: int) -> int:
    """GT of the CUDA host code: query heads per block, the next power of 2 of G, at most 8."""
    return 8 if G > 4 else (4 if G > 2 else max(G, 1))


def cuda_unsupported(q: Tensor, k: Tensor, active: Tensor) -> str | None:
    """Why the CUDA kernel cannot take these shapes (the reference can), else None.

    The batch is not limited (the host code launches batch chunks within the grid's limits).
    """
    D = q.shape[3]
    if D not in CUDA_HEAD_DIMS:
        return f"the CUDA kernel supports head dims {CUDA_HEAD_DIMS}, `q` has head dim {D}"
    Hkv, G = k.shape[1], q.shape[1] // k.shape[1]
    blocks_y = Hkv * math.ceil(G / _query_heads_per_block(G))
    if blocks_y > MAX_GRID_Y:
        return (f"the CUDA kernel's grid.y (Hkv={Hkv} x query-head tiles = {blocks_y}) exceeds "
                f"CUDA's limit {MAX_GRID_Y}")
    if k.shape[2] >= 2**31 or active.shape[-1] >= 2**31:
        return f"the CUDA kernel needs N and n < 2^31, got N={k.shape[2]}, n={active.shape[-1]}"
    return None


def _cuda_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float,
    per_head_probs: bool,
    strict: bool,
    want_probs: bool,
) -> tuple[Tensor, Tensor | None] | None:
    problem = cuda_unsupported(q, k, active)
    if problem is not None:
        if strict:
            raise ValueError(f"impl='cuda': {problem}")
        # Never silent: a model whose head dim the kernel lacks would run the slow path.
        _warn_once(problem, f"core_attention: {problem}; impl='auto' runs core_attention_ref")
        return None
    mod = build.load("cuda") if strict else build.try_load("cuda")
    if mod is None:
        return None
    vec = q.shape[3] // 32  # each lane loads D/32 contiguous values with one vector load
    k, v = _aligned(k, vec), _aligned(v, vec)
    res = mod.core_attention(
        q.contiguous(), k, v, active.contiguous(), scale, per_head_probs, want_probs
    )
    return res[0], (res[1] if want_probs else None)


def _aligned(t: Tensor, vec: int) -> Tensor:
    """``t`` itself when its row starts are aligned to ``vec`` elements, else an aligned copy
    of the whole cache (all N rows, every call), with one warning naming the cause."""
    t = _unit_stride(t)
    strides = t.stride()[:3]
    start_ok = t.data_ptr() % (vec * t.element_size()) == 0
    if all(s % vec == 0 for s in strides) and start_ok:
        return t
    _warn_once(
        "aligned",
        f"core_attention: the CUDA kernel loads D/32 = {vec} elements per lane, so k/v strides "
        f"and start must be multiples of {vec} elements; a cache of shape {tuple(t.shape)} with "
        f"strides {tuple(t.stride())} and storage offset {t.storage_offset()} (start "
        f"{'aligned' if start_ok else 'not aligned'}) is copied whole on every call",
    )
    return t.clone(memory_format=torch.contiguous_format)  # fresh, aligned storage


def _cpu_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float,
    per_head_probs: bool,
    strict: bool,
    want_probs: bool,
) -> tuple[Tensor, Tensor | None] | None:
    mod = build.loaded("cpu") or (build.load("cpu") if strict else build.try_load("cpu"))
    if mod is None:
        return None
    k, v = _unit_stride(k), _unit_stride(v)
    # The CPU op computes the probabilities as it goes (a small share of its time); they are
    # dropped here so that every impl answers `want_probs=False` alike.
    out, probs = mod.core_attention(
        q.contiguous(), k, v, active.contiguous(), scale, per_head_probs
    )
    return out, (probs if want_probs else None)


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
    want_probs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Attention of one decode query over the rows ``active`` of ``k``/``v``.

    Parameters
    ----------
    q : Tensor
        ``[B, Hq, 1, D]`` decode queries (float32, bfloat16 or float16).
    k, v : Tensor
        ``[B, Hkv, N, D]`` the layer's cache, ``Hq % Hkv == 0`` (GQA heads not repeated).
        Any batch/head/row strides are accepted without a copy (on CUDA, strides and start
        must be multiples of ``D / 32`` elements, else the cache is copied, with one warning).
    active : Tensor
        int64 row indices, ``-1`` = padding: ``[B, n]`` shared by all heads, or
        ``[B, Hkv, n]`` per kv head (the ``G = Hq // Hkv`` query heads of kv head ``h`` read
        the rows ``active[:, h]``; heads may have different counts, padded with ``-1``).
    scale : float, optional
        Softmax scale, ``D ** -0.5`` when None.
    impl : {"auto", "cuda", "cpu", "ref"}
        "auto" runs the compiled op for the tensors' device and falls back to the reference,
        with one warning per cause, if the op cannot be built or (CUDA) does not take the
        shapes: a head dim outside :data:`CUDA_HEAD_DIMS`, see :func:`cuda_unsupported`;
        "cuda"/"cpu" raise instead; "ref" is :func:`core_attention_ref`, the specification.
    per_head_probs : bool
        Return ``probs`` per kv head, ``[B, Hkv, n]``. Always so with a per-head ``active``.
    want_probs : bool
        False when the caller drops the probabilities: ``probs`` is None and the CUDA op
        skips the score scratch and the probabilities kernel.

    Returns
    -------
    out : Tensor
        ``[B, Hq, 1, D]`` in ``q.dtype``; zeros for a query head whose rows are all padding.
    probs : Tensor or None
        None when not ``want_probs``; else float32 attention probabilities over the active
        rows, aligned with ``active`` (0 at padding): ``[B, Hkv, n]`` averaged over the ``G``
        query heads of each kv head when ``per_head_probs`` or ``active`` is ``[B, Hkv, n]``;
        else ``[B, n]`` averaged over all ``Hq`` query heads.
    """
    if impl not in IMPLS:
        raise ValueError(f"`impl` must be one of {IMPLS}, got {impl!r}")
    check_inputs(q, k, v, active, scale, per_head_probs)
    if not isinstance(want_probs, bool):
        raise ValueError(f"`want_probs` must be a bool, got {want_probs!r}")
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    dev = q.device.type
    if impl in ("cuda", "cpu") and dev != impl:
        raise ValueError(f"impl={impl!r} needs {impl} tensors, `q` is on {q.device}")
    return dispatch(q, k, v, active, scale, per_head_probs, impl, want_probs)


def _device_type(t: Tensor) -> str:
    # One place that reads the device, so that CPU tests can simulate a CUDA dispatch.
    # (`is_cpu` first: building a `torch.device` per call costs a decode layer ~2 µs.)
    return "cpu" if t.is_cpu else t.device.type


def dispatch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    active: Tensor,
    scale: float,
    per_head_probs: bool,
    impl: str = "auto",
    want_probs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """:func:`core_attention` without its input checks, for callers whose inputs are right by
    construction (the engine's decode step, once per layer: no Python checks, no read-back).

    ``active`` may also be a bool mask ``[B, (Hkv,) n]``, ``n <= N``: row ``j`` where set, the
    index ``torch.where(active, j, -1)`` without building it. The CPU op reads the mask itself
    (a byte per entry instead of eight); the CUDA op and the reference get the index."""
    dev = _device_type(q)
    res = None
    if impl == "cpu" or (impl == "auto" and dev == "cpu"):
        res = _cpu_op(q, k, v, active, scale, per_head_probs, impl == "cpu", want_probs)
        if res is not None:
            _count("cpu")
            return res
    if active.dtype == torch.bool:
        active = torch.where(active, torch.arange(active.shape[-1], device=active.device), -1)
    if impl == "cuda" or (impl == "auto" and dev == "cuda"):
        res = _cuda_op(q, k, v, active, scale, per_head_probs, impl == "cuda", want_probs)
    if res is None:
        _count("ref" if impl == "ref" else "fallback")
        return core_attention_ref(q, k, v, active, scale, per_head_probs, want_probs)
    _count("cuda")
    return res
