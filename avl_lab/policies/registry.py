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
            raise ValueError(f"policy name {name!r} is already registered by {old.__qualname__}")
        _REGISTRY[name] = obj
        _EXAMPLES[name] = dict(example or {})
        if isinstance(obj, type):
            obj.name = name
        return obj

    return wrap


def names() -> list[str]:
    """Registered policy names, sorted."""
    return sorted(_REGISTRY)


def example(name: str) -> dict[str, Any]:
    """The registered example configuration of ``name`` (with its ``name`` key)."""
    return {"name": name, **_EXAMPLES[_check_name(name)]}


def _check_name(name: str) -> str:
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; registered policies: {', '.join(names())}")
    return name


def create(name: str, params: Mapping[str, Any]) -> Policy:
    """Instantiate policy ``name`` with ``params``; unknown fields raise ``ValueError``."""
    factory = _REGISTRY[_check_name(name)]
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        allowed = {f.name for f in dataclasses.fields(factory) if f.init}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(
                f"unknown field(s) {unknown} for policy {name!r}; allowed: {sorted(allowed)}"
            )
    return factory(**params)
