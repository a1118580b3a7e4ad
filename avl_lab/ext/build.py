"""Lazy JIT builds of the C++/CUDA core-attention ops, once per process.

Each op is compiled by :func:`torch.utils.cpp_extension.load` on first use and cached in the
torch extensions directory (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``),
so later processes only load it (~1.5 s). A failed build is remembered: :func:`load` raises
:class:`ExtensionBuildError` with the build's message, and :func:`try_load` warns once and
returns None so that ``impl="auto"`` can fall back to the reference. Setting the environment
variable ``AVL_LAB_NO_EXT=1`` skips the builds (the reference is used, with one warning).

The CPU op is compiled for the ISA torch reports (AVX-512 or AVX2 code paths, else portable
C++), and the ISA is part of the extension's name, so a shared extensions directory never
hands a binary to a CPU that cannot run it.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["ExtensionBuildError", "load", "try_load", "reset", "toolchain_problem"]

CSRC = Path(__file__).parent / "csrc"
KINDS = ("cpu", "cuda")

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}
_warned: set[str] = set()


class ExtensionBuildError(RuntimeError):
    """The C++/CUDA op could not be built or loaded."""


def _cpu_isa_flags() -> tuple[str, list[str]]:
    """ISA tag and flags for the CPU build (the tag goes into the extension name so that a
    shared extensions directory never hands a binary to a CPU that cannot run it)."""
    cap = torch.backends.cpu.get_cpu_capability().upper()
    avx2 = ["-mavx2", "-mfma", "-mf16c"]
    if cap == "AVX512":
        return "avx512", [*avx2, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
    if cap == "AVX2":
        return "avx2", avx2
    return "generic", []


def _build(kind: str) -> ModuleType:
    from torch.utils import cpp_extension

    if kind == "cpu":
        tag, isa = _cpu_isa_flags()
        return cpp_extension.load(
            name=f"avl_core_attention_cpu_{tag}",
            sources=[str(CSRC / "core_attention_cpu.cpp")],
            extra_cflags=["-O3", "-fopenmp", *isa],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    if not torch.cuda.is_available():
        raise ExtensionBuildError("torch has no usable CUDA device/runtime")
    return cpp_extension.load(
        name="avl_core_attention_cuda",
        sources=[str(CSRC / "core_attention_cuda.cu")],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        verbose=False,
    )


def toolchain_problem(kind: str = "cpu") -> str | None:
    """Why ``kind`` cannot even be attempted here (no ninja, compiler or GPU), else None.

    Tests skip on this; a build that fails although the toolchain is present is a failure.
    """
    from torch.utils.cpp_extension import is_ninja_available

    if os.environ.get("AVL_LAB_NO_EXT", "") not in ("", "0"):
        return "disabled by AVL_LAB_NO_EXT"
    if not is_ninja_available():
        return "ninja is not installed"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler on PATH"
    if kind == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return None


def load(kind: str) -> ModuleType:
    """Return the built extension ``kind`` ("cpu" or "cuda"), building it on first use.

    Raises
    ------
    ExtensionBuildError
        If the build failed (now or earlier in this process), with the build's message.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    with _lock:
        if kind in _modules:
            return _modules[kind]
        if kind not in _errors:
            if os.environ.get("AVL_LAB_NO_EXT", "") not in ("", "0"):
                _errors[kind] = "disabled by AVL_LAB_NO_EXT"
            else:
                try:
                    _modules[kind] = _build(kind)
                    return _modules[kind]
                except Exception as err:  # compiler, linker, ninja or import failure
                    msg = str(err).strip().splitlines()
                    _errors[kind] = f"{type(err).__name__}: " + " | ".join(msg[-6:])
        raise ExtensionBuildError(f"the {kind} core_attention op is unavailable: {_errors[kind]}")


def try_load(kind: str) -> ModuleType | None:
    """Like :func:`load` but returns None after a single warning when the op is unavailable."""
    try:
        return load(kind)
    except ExtensionBuildError as err:
        if kind not in _warned:
            _warned.add(kind)
            warnings.warn(
                f"{err}; falling back to core_attention_ref", RuntimeWarning, stacklevel=3
            )
        return None


def reset() -> None:
    """Forget loaded modules, errors and warnings (tests use this)."""
    with _lock:
        _modules.clear()
        _errors.clear()
        _warned.clear()
