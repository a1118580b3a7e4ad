"""A policy given as ``policy=NAME policy.FIELD=VALUE``: every field checked against the type the
policy's dataclass declares, before anything is built, so that ``policy.ratio=abc`` or
``policy.seed=1.5`` is one clear error (not a ``TypeError`` at generate time, or a 3 GB string
from ``"abc" * seed``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from avl_lab.errors import ConfigError

__all__ = ["check_policy"]

_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _ok(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True  # containers and classes: the policy checks them itself


def _check_field(key: str, value: Any, tp: Any) -> None:
    args = typing.get_args(tp)
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = [a for a in args if a is not type(None)] if union else [tp]
    if value is None:
        if union and type(None) in args:
            return
        raise ConfigError(f"`policy.{key}` must not be null")
    if not any(_ok(value, t) for t in options):
        want = " or ".join(_WORDS.get(t, getattr(t, "__name__", str(t))) for t in options)
        null = " (or null)" if union and type(None) in args else ""
        raise ConfigError(f"`policy.{key}` must be {want}{null}, got {value!r}")


def check_policy(spec: Mapping[str, Any]) -> None:
    """Check a policy spec's name and field types, then build it (values checked by the policy).

    Raises
    ------
    ConfigError
        Missing or unknown name (the registered names listed), an unknown field, a value of
        the wrong type or out of range; the message names ``policy.<field>``.
    """
    from avl_lab import policies
    from avl_lab.policies.registry import _REGISTRY

    if not isinstance(spec, Mapping):
        raise ConfigError(f"`policy` must be a mapping such as {{name: avl, S: 45}}, got {spec!r}")
    name = spec.get("name")
    if name is None:
        raise ConfigError(f"`policy.name` is required; registered policies: {', '.join(policies.names())}")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"`policy.name`: unknown policy {name!r}; registered policies: "
                          f"{', '.join(policies.names())}")
    cls = _REGISTRY[name]
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        for key, value in spec.items():
            if key in ("name", "layers"):  # `layers`: any policy's scope, checked by build
                continue
            if key not in fields:
                raise ConfigError(f"`policy.{key}` is not a field of policy {name!r}; its fields: "
                                  f"{', '.join(sorted(fields)) or 'none'}")
            _check_field(key, value, hints.get(key, Any))
    try:
        policies.build(dict(spec))
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"`policy` ({name}): {err}") from None
