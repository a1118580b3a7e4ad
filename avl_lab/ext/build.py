"""Lazy JIT builds of the C++/CUDA core-attention ops, once per process.

Each op is compiled by :func:`torch.utils.cpp_extension.load` on first use and cached in the
torch extensions directory (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``),
so later processes only load it (~1.5 s). A failed build is remembered: :func:`load` raises
:class:`ExtensionBuildError` with the build's message, and :func:`try_load` warns once and
returns None so that ``impl="auto"`` can fall back to the reference. Setting the environment
variable ``AVL_LAB_NO_EXT=1`` skips the builds (the reference is used, with one warning).
The message of a failed build is the compiler's first ``error:`` lines (the last lines of a
ninja build are "N errors detected" / "ninja: build stopped", which say nothing) and the path
of the full log, written to the extension's build directory as ``build_error.log``.

The CPU op is compiled for the ISA torch reports (AVX-512 or AVX2 code paths, else portable
C++), and the ISA is part of the extension's name, so a shared extensions directory never
hands a binary to a CPU that cannot run it; so is a hash of the source, so that it never hands
one checkout the binary another checkout built from different sources.

:func:`nvcc_compile` compiles the CUDA source to an object file with the JIT build's nvcc
flags but needs neither a GPU nor a CUDA build of torch, so that machines without a GPU still
catch compile errors in the CUDA op.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = [
    "ExtensionBuildError",
    "load",
    "try_load",
    "reset",
    "toolchain_problem",
    "nvcc_compile",
    "first_errors",
]

CSRC = Path(__file__).parent / "csrc"
KINDS = ("cpu", "cuda")

_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}
_warned: set[str] = set()
# A compiler's (gcc, clang, nvcc, ld) or the loader's error lines; not "RuntimeError: ...".
_ERROR_LINE = re.compile(r"\berror\b\s*:|undefined reference|undefined symbol", re.IGNORECASE)
ERROR_LOG = "build_error.log"


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


def _source_hash(src: Path) -> str:
    """Short hash of a source file: part of the extension's name, so that checkouts with
    different sources sharing one extensions directory never load each other's binary."""
    return hashlib.sha1(src.read_bytes()).hexdigest()[:10]


def first_errors(log: str, limit: int = 6) -> str:
    """The first ``limit`` error lines of a build log joined by " | " (the last non-ninja
    lines when none looks like an error, e.g. a Python exception)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    picked = [ln for ln in lines if _ERROR_LINE.search(ln)][:limit]
    picked = picked or [ln for ln in lines if not ln.startswith("ninja:")][-limit:]
    return " | ".join(picked) or "(no message)"


def _build_dir(name: str) -> Path:
    """Where torch builds extension ``name`` (its private helper adds a python/CUDA tag)."""
    from torch.utils import cpp_extension

    helper = getattr(cpp_extension, "_get_build_directory", None)
    if helper is not None:
        return Path(helper(name, False))
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root, name)


def _build(kind: str, csrc: Path = CSRC, build_dir: str | Path | None = None) -> ModuleType:
    """Compile and import op ``kind`` from the sources in ``csrc`` (tests pass a broken copy)
    in ``build_dir`` (default: torch's build directory for the extension's name).

    Raises
    ------
    ExtensionBuildError
        With the compiler's first error lines and the path of the full log.
    """
    from torch.utils import cpp_extension

    if kind == "cpu":
        tag, isa = _cpu_isa_flags()
        src = Path(csrc, "core_attention_cpu.cpp")
        name = f"avl_core_attention_cpu_{tag}_{_source_hash(src)}"
        flags = dict(extra_cflags=["-O3", "-fopenmp", *isa], extra_ldflags=["-fopenmp"])
    else:
        if not torch.cuda.is_available():
            raise ExtensionBuildError("torch has no usable CUDA device/runtime")
        src = Path(csrc, "core_attention_cuda.cu")
        name = f"avl_core_attention_cuda_{_source_hash(src)}"
        flags = dict(extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo"])
    directory = Path(build_dir) if build_dir is not None else _build_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(name=name, sources=[str(src)], build_directory=str(directory),
                                  verbose=False, **flags)
    except Exception as err:  # compiler, linker, ninja or import failure
        # torch's message holds ninja's whole output: keep it whole in a file, the errors here.
        log = directory / ERROR_LOG
        log.write_text(f"{type(err).__name__}: {err}\n")
        raise ExtensionBuildError(
            f"{type(err).__name__}: {first_errors(str(err))} (full log: {log})"
        ) from err


def toolchain_problem(kind: str = "cpu") -> str | None:
    """Why ``kind`` cannot even be attempted here (no ninja, compiler or GPU), else None.

    ``kind`` is "cpu" or "cuda" (the ops), or "nvcc" (:func:`nvcc_compile`: no GPU needed).

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
    if kind == "nvcc" and _nvcc() is None:
        return "no nvcc (CUDA toolkit) on PATH or in $CUDA_HOME/bin"
    return None


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and Path(home, "bin", "nvcc").exists():
        return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


def nvcc_compile(arch: str = "90", out_dir: str | Path | None = None) -> Path:
    """Compile the CUDA op to an object file for ``sm_<arch>`` (no GPU needed); return its path.

    Uses the JIT build's nvcc flags (``COMMON_NVCC_FLAGS``, C++20, ``-O3``), so host code,
    device code and every kernel instantiation go through nvcc and ptxas. A CPU build of torch
    ships the CUDA headers but not ``c10/cuda/impl/cuda_cmake_macros.h``; a one-line stand-in
    is supplied then. The object is cached under ``out_dir`` (default: the torch extensions
    directory) by a hash of source and flags, so only a changed source is compiled again
    (~2 min on 2 cores).

    Raises
    ------
    ExtensionBuildError
        If nvcc is missing or the compile fails, with nvcc's first error lines and the path
        of the full log.
    """
    from torch.utils import cpp_extension

    nvcc = _nvcc()
    if nvcc is None:
        raise ExtensionBuildError(toolchain_problem("nvcc") or "no nvcc")
    src = CSRC / "core_attention_cuda.cu"
    default = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    root = Path(out_dir or default) / "avl_core_attention_cuda_nvcc"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = [
        *cpp_extension.COMMON_NVCC_FLAGS,
        "-std=c++20",
        "-O3",
        "-DTORCH_EXTENSION_NAME=avl_core_attention_cuda",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xcompiler",
        "-fPIC",
    ]
    key = hashlib.sha1(src.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    obj = root / f"core_attention_cuda_sm{arch}_{key}.o"
    if obj.exists():
        return obj
    root.mkdir(parents=True, exist_ok=True)
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    macros = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any(Path(d, macros).exists() for d in includes):  # CPU build of torch
        Path(root, "shim", macros).parent.mkdir(parents=True, exist_ok=True)
        Path(root, "shim", macros).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(str(root / "shim"))
    tmp = obj.with_suffix(f".{os.getpid()}.tmp")
    cmd = [nvcc, "-c", str(src), "-o", str(tmp), *flags, *(f"-I{d}" for d in includes)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        log = root / f"core_attention_cuda_sm{arch}_{key}.{ERROR_LOG}"
        log.write_text(" ".join(cmd) + "\n" + res.stderr + res.stdout)
        raise ExtensionBuildError(
            f"nvcc failed: {first_errors(res.stderr + res.stdout)} (full log: {log})"
        )
    tmp.replace(obj)
    return obj


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
                except ExtensionBuildError as err:  # already summarised, with its log
                    _errors[kind] = str(err)
                except Exception as err:  # anything else, e.g. a missing toolchain
                    _errors[kind] = f"{type(err).__name__}: {first_errors(str(err))}"
        raise ExtensionBuildError(f"the {kind} core_attention op is unavailable: {_errors[kind]}")


def loaded(kind: str) -> ModuleType | None:
    """The extension ``kind`` if this process has loaded it already (no lock, no build): the
    decode step's fast path, once per layer."""
    return _modules.get(kind)


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
