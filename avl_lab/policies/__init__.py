"""KV-cache policies: one per file, registered by name, composable.

>>> from avl_lab import policies
>>> policies.build({"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from typing import Any

from avl_lab.policies.base import Context, Policy
from avl_lab.policies.compose import Compose
from avl_lab.policies.registry import create, example, names, register
from avl_lab.policies.scope import Scoped

__all__ = ["Compose", "Context", "Policy", "Scoped", "build", "example", "names", "register"]

_NOT_POLICIES = {"base", "registry", "compose", "scope", "scorer", "staged", "decode_tiering"}


def _load_builtin() -> None:
    """Import every module of this package so that its ``@register`` decorators run."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_POLICIES and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_builtin()


def build(spec: Any) -> Policy:
    """Build a policy from a name, a mapping (``{"name": ..., **fields}``), an OmegaConf node,
    a list of specs (composed), or a :class:`Policy` (returned as is).

    A mapping may carry ``layers`` (e.g. ``"2-"`` or ``[2, 3]``), for any policy: the policy
    then acts in those decoder layers only (:class:`~avl_lab.policies.scope.Scoped`).

    Raises
    ------
    ValueError
        Unknown name (the message lists registered names), unknown or invalid fields (the
        message names the field).
    """
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, str):
        return create(spec, {})
    try:  # OmegaConf nodes -> plain containers, without importing omegaconf eagerly
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(spec, (DictConfig, ListConfig)):
            spec = OmegaConf.to_container(spec, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(spec, Mapping):
        params = dict(spec)
        if "name" not in params:
            raise ValueError(f"policy spec needs a `name` key; registered policies: {names()}")
        layers = params.pop("layers", None)
        policy = create(params.pop("name"), params)
        return policy if layers is None else Scoped(policy, layers)
    if isinstance(spec, Sequence):
        return Compose([build(s) for s in spec])
    raise ValueError(f"cannot build a policy from {type(spec).__name__}: {spec!r}")
