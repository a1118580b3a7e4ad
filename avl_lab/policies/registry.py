"""The policy registry: ``@register("name")`` makes a policy buildable by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from avl_lab.policies.base import Policy

_REGISTRY: dict[str, Callable[..., Policy]] = {}
_EXAMPLES: dict[str, dict[str, Any]] = {}


def register(name: str, example: Mapping[str, Any] | None = None) -> Callable:
    """Register a policy class (or a factory returning a policy) under ``name``.

    ``example`` is a representative configuration: the policy-matrix tests run every
    registered policy with it, so a new policy file is tested without editing the tests.
    """

    def wrap(obj: Callable[..., Policy]) -> Callable[..., Policy]:
        old = _REGISTRY.get(name)
        redefined = old is not None and (old.__module__, old.__qualname__) == (
            obj.__module__, obj.__qualname__)  # e.g. a notebook cell run twice
        if old is not None and old is not obj and not redefined:
            raise ValueError(f"policy name {name!r} is already registered by "
                             f"{old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = obj
        _EXAMPLES[name] = dict(example or {})
        if isinstance(obj, type):
            obj.name = name
        return obj

    return wrap


def _installed() -> dict[str, Callable[..., Policy]]:
    """The registry, with the policies of installed plugins (entry points) loaded."""
    from avl_lab.plugins import load_installed

    load_installed()
    return _REGISTRY


def names() -> list[str]:
    """Registered policy names (built-in and plugins), sorted."""
    return sorted(_installed())


def get(name: str) -> Callable[..., Policy]:
    """The class (or factory) registered as ``name``; ``ValueError`` listing the names."""
    return _REGISTRY[_check_name(name)]


def fields(name: str) -> dict[str, dataclasses.Field]:
    """The init fields of policy ``name``'s dataclass (empty for a factory)."""
    cls = get(name)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return {}
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def example(name: str) -> dict[str, Any]:
    """The registered example configuration of ``name`` (with its ``name`` key)."""
    return {"name": name, **_EXAMPLES[_check_name(name)]}


def _check_name(name: str) -> str:
    if name not in _installed():
        raise ValueError(f"unknown policy {name!r}; registered policies: {', '.join(names())}")
    return name


def create(name: str, params: Mapping[str, Any]) -> Policy:
    """Instantiate policy ``name`` with ``params``; unknown fields raise ``ValueError``."""
    factory = get(name)
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        allowed = set(fields(name))
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(
                f"unknown field(s) {unknown} for policy {name!r}; allowed: {sorted(allowed)}"
            )
    return factory(**params)
