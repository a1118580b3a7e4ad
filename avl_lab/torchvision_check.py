"""A torchvision that does not load beside the installed torch: one clear error.

pip resolves PyPI's Linux torchvision, a CUDA build, whenever a package requires torchvision
(lmms-eval does). Beside a CPU torch its compiled ops (``_C``) do not load and ``import
torchvision`` raises ("operator torchvision::nms does not exist"); transformers, Lightning and
every image processor then fail deep inside their imports. avl_lab runs without torchvision,
so the fix is the torchvision built for this torch, or none.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version

from avl_lab.errors import UserError

__all__ = ["TorchvisionMismatchError", "check_torchvision", "torchvision_problem"]


class TorchvisionMismatchError(UserError):
    """torchvision is installed but does not import beside this torch."""


def _version(dist: str) -> str:
    try:
        return " " + version(dist)
    except PackageNotFoundError:
        return ""


def torchvision_problem() -> str | None:
    """Why the installed torchvision is unusable, or None (absent or importable)."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # a RuntimeError from the op registrations, an OSError from _C
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        torch_version = _version("torch").strip()
        index = "cpu" if "+cpu" in torch_version else "cu128"  # or the CUDA of your torch
        return (
            f"torchvision{_version('torchvision')} is installed but does not import beside torch "
            f"{torch_version} ({why}): pip installed PyPI's CUDA build of torchvision, whose "
            "compiled ops do not load beside a CPU torch (or another torch). Install the build "
            "made for this torch (pip install torchvision --index-url "
            f"https://download.pytorch.org/whl/{index}) or remove it "
            "(pip uninstall torchvision: avl_lab and lmms-eval's image tasks run without it)"
        )
    return None


def check_torchvision() -> None:
    """Raise :class:`TorchvisionMismatchError` when torchvision is installed but broken."""
    problem = torchvision_problem()
    if problem is not None:
        raise TorchvisionMismatchError(problem)
