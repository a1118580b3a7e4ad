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

__all__ = ["check_policy", "type_error", "type_options"]

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


def type_options(tp: Any) -> tuple[list[Any], bool]:
    """``(the types a field declared as tp takes, whether it takes null)``."""
    args = typing.get_args(tp)
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = [a for a in args if a is not type(None)] if union else [tp]
    return options, union and type(None) in args


def type_error(value: Any, tp: Any) -> str | None:
    """Why ``value`` does not fit a field of type ``tp`` ("must be an integer, got 1.5"), or
    None when it fits (containers and classes are left to the policy)."""
    options, nullable = type_options(tp)
    if value is None:
        return None if nullable else "must not be null"
    if not any(_ok(value, t) for t in options):
        want = " or ".join(_WORDS.get(t, getattr(t, "__name__", str(t))) for t in options)
        return f"must be {want}{' (or null)' if nullable else ''}, got {value!r}"
    return None


def _check_field(key: str, value: Any, tp: Any) -> None:
    why = type_error(value, tp)
    if why is not None:
        raise ConfigError(f"`policy.{key}` {why}")


def check_policy(spec: Mapping[str, Any]) -> None:
    """Check a policy spec's name and field types, then build it (values checked by the policy).

    Raises
    ------
    ConfigError
        Missing or unknown name (the registered names listed), an unknown field, a value of
        the wrong type or out of range; the message names ``policy.<field>``.
    """
    from avl_lab import policies
    from avl_lab.policies import registry

    if not isinstance(spec, Mapping):
        raise ConfigError(f"`policy` must be a mapping such as {{name: avl, S: 45}}, got {spec!r}")
    name = spec.get("name")
    if name is None:
        raise ConfigError(f"`policy.name` is required; registered policies: {', '.join(policies.names())}")
    if not isinstance(name, str) or name not in policies.names():
        raise ConfigError(f"`policy.name`: unknown policy {name!r}; registered policies: "
                          f"{', '.join(policies.names())} (a policy from outside avl_lab needs "
                          "plugins=FILE.py or an installed plugin package)")
    cls = registry.get(name)
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        fields = set(registry.fields(name))
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
