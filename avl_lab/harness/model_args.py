"""``--model_args`` of the lmms-eval ``avl_lab`` model: the model's keys, then the policy's.

``pretrained=avl-tiny,policy=avl,S=45,C=30,K=3`` is ``model=avl-tiny policy=avl policy.S=45
policy.C=30 policy.K=3`` on avl_lab's command line (``policy.S=45`` is accepted too, and is how
a policy field named like a model key is set: ``policy.seed=3``), validated by the same checks
(:func:`avl_lab.evaluation.policy_spec.check_policy`): a bad key or value is one
:class:`~avl_lab.errors.ConfigError` naming it, before any weights are read.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from avl_lab.errors import ConfigError

__all__ = ["MODEL_KEYS", "HarnessArgs", "parse_model_args"]

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class HarnessArgs:
    """The ``avl_lab`` model's own arguments (every other key is a policy field)."""

    pretrained: str = "avl-tiny"
    """`avl-tiny`, `tiny-random-<kind>`, a local checkpoint directory or a cached hub id."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    device: str | None = None
    """Torch device (lmms-eval's `--device`); default cuda when available, else cpu."""
    batch_size: int = 1
    """Samples per generate call (lmms-eval's `--batch_size`; left padding)."""
    seed: int = 0
    """Seed of the random models and of policies that draw random numbers."""
    policy: dict[str, Any] = field(default_factory=lambda: {"name": "full"})
    """The policy spec: `policy=NAME` and its fields."""


#: Keys that belong to the model; ``max_batch_size`` is lmms-eval's and ignored.
MODEL_KEYS = ("pretrained", "dtype", "device", "batch_size", "max_batch_size", "seed", "policy")


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"avl_lab --model_args: `{key}` must be a non-negative integer, got "
                          f"{value!r}")
    return value


def _coerce(policy: str, key: str, value: Any) -> Any:
    """lmms-eval reads ``-1`` as ``-1.0`` (``str.isnumeric`` is false for it): an integral float
    for a field that takes int but not float becomes the int it was written as."""
    from avl_lab.evaluation.policy_spec import type_options
    from avl_lab.policies import registry

    if not isinstance(value, float) or not value.is_integer() or policy not in registry.names():
        return value
    cls = registry.get(policy)
    if not dataclasses.is_dataclass(cls):
        return value
    options, _ = type_options(typing.get_type_hints(cls).get(key, Any))
    return int(value) if int in options and float not in options else value


def _renamed(message: str) -> str:
    """Our command line's key names (``policy.S``) as written in ``--model_args`` (``S``)."""
    message = message.replace("`policy.name`", "`policy`").replace(
        "plugins=FILE.py or an installed plugin package",
        "an installed plugin package (entry point group avl_lab.policies)")
    return re.sub(r"`policy\.([A-Za-z_][\w.]*)`", r"`\1`", message)


def parse_model_args(kwargs: Mapping[str, Any]) -> HarnessArgs:
    """Split lmms-eval's parsed ``--model_args`` (and ``batch_size``/``device``) into the
    model's arguments and a policy spec, and validate both.

    Raises
    ------
    ConfigError
        A bad model argument, an unknown policy, a key that is neither a model key nor a
        field of the policy, or a policy value of the wrong type or out of range.
    """
    from avl_lab.evaluation.policy_spec import check_policy

    args = HarnessArgs()
    name = kwargs.get("policy", "full")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"avl_lab --model_args: `policy` must be a policy name, got {name!r}")
    pretrained = kwargs.get("pretrained", args.pretrained)
    if not isinstance(pretrained, str) or not pretrained.strip():
        raise ConfigError("avl_lab --model_args: `pretrained` must name a model (avl-tiny, "
                          f"tiny-random-<kind> or a checkpoint directory), got {pretrained!r}")
    args.pretrained = pretrained
    args.dtype = kwargs.get("dtype", args.dtype)
    if args.dtype not in _DTYPES:
        raise ConfigError(f"avl_lab --model_args: `dtype` must be {' | '.join(_DTYPES)}, got "
                          f"{args.dtype!r}")
    device = kwargs.get("device")
    args.device = None if device in (None, "") else str(device)
    if kwargs.get("batch_size") is not None:
        args.batch_size = _positive_int("batch_size", kwargs["batch_size"])
        if args.batch_size < 1:
            raise ConfigError("avl_lab --model_args: `batch_size` must be ≥ 1, got 0")
    args.seed = _positive_int("seed", kwargs.get("seed", args.seed))
    spec = {"name": name}
    for key, value in kwargs.items():
        if key.startswith("policy."):  # explicit, as on our command line: policy.seed=3
            key = key[len("policy."):]
        elif key in MODEL_KEYS:
            continue
        spec[key] = _coerce(name, key, value)
    try:
        check_policy(spec)
    except ConfigError as err:
        hint = (f" (model keys: {', '.join(k for k in MODEL_KEYS if k != 'max_batch_size')})"
                if "is not a field of policy" in str(err) else "")
        raise ConfigError(f"avl_lab --model_args: {_renamed(str(err))}{hint}") from None
    args.policy = spec
    return args
