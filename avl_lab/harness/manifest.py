"""The entry point lmms-eval reads (group ``lmms_eval.models``): the ``avl_lab`` model."""

from __future__ import annotations

from typing import Any

__all__ = ["manifest"]


def manifest() -> Any:
    """lmms-eval's ``ModelManifest`` for ``--model avl_lab`` (imported only when lmms-eval
    loads its model registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="avl_lab",
                         simple_class_path="avl_lab.harness.model.AVLLab")
