"""A study's methods, resolved and checked against their policies' dataclass fields.

Every error names the study file and the key (``methods.snapkv.space.ratio.low``) and says
what would be valid. The checks, in order: the policy is registered; each searched or fixed
key is a field of it (or ``L``); each dimension fits the field's type (integers, floats,
categorical values); relations name fields the study sets, and no fixed value is clipped by
every trial; then the policy is built at the corners of the space (every dimension's ends
and choices, the others at their first value), so that a space the policy would reject is
an error before any trial runs.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import zlib
from collections.abc import Callable
from typing import Any

from avl_lab.errors import ConfigError
from avl_lab.experiments.study.config import DimConfig, MethodConfig, StudyConfig
from avl_lab.experiments.study.space import (
    KINDS,
    SCOPE,
    Dim,
    Method,
    Relation,
    parse_relation,
    reference_policy,
    to_policy,
)

Bad = Callable[[str, str], ConfigError]
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SCALARS = (type(None), bool, int, float, str)


def resolve(cfg: StudyConfig, where: str = "study",
            with_prefix: bool = False) -> list[Any]:
    """The study's methods (one for a single-policy study), validated.

    ``with_prefix``: pairs ``(method, key prefix)``, the prefix being ``methods.<name>.`` or
    empty, for errors that name a method's keys.

    Raises
    ------
    ConfigError
        Naming ``where`` and the key (see the module docstring for the checks).
    """

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: `{key}` {msg}")

    if not cfg.methods:
        single = MethodConfig(policy=cfg.policy or "avl", space=cfg.space, fixed=cfg.fixed,
                              relations=cfg.relations, reference=cfg.reference)
        out = [(_method(single.policy, single, "", cfg.name, cfg.n_trials, bad), "")]
    else:
        top = [k for k in ("policy", "space", "fixed", "relations", "reference")
               if getattr(cfg, k)]
        if top:
            raise bad(top[0], "is set beside `methods`; give each method its own policy, space "
                      "and fixed fields under `methods.<name>`")
        out = []
        for name, m in cfg.methods.items():
            if not _NAME.match(str(name)):
                raise bad(f"methods.{name}", "is not a method name (letters, digits, _ . -)")
            prefix = f"methods.{name}."
            method = _method(str(name), m, prefix, f"{cfg.name}/{name}", cfg.n_trials, bad)
            out.append((dataclasses.replace(method, seed_offset=zlib.crc32(str(name).encode()) % 10**6),
                        prefix))
    baseline = cfg.bootstrap.baseline
    if baseline is not None and baseline not in [m.name for m, _ in out]:
        raise bad("bootstrap.baseline", f"is {baseline!r}, not a method of the study "
                  f"({', '.join(m.name for m, _ in out)})")
    return out if with_prefix else [m for m, _ in out]


def _method(name: str, m: MethodConfig, prefix: str, study_name: str, default_trials: int,
            bad: Bad) -> Method:
    from avl_lab import policies
    from avl_lab.policies import registry

    if m.policy not in policies.names():
        raise bad(f"{prefix}policy", f"is {m.policy!r}, not a registered policy; registered: "
                  f"{', '.join(policies.names())} (a plugin's policy needs `plugins`)")
    fields = registry.fields(m.policy)
    hints = typing.get_type_hints(registry.get(m.policy)) if fields else {}
    if not m.space:
        raise bad(f"{prefix}space", "is empty: nothing to search")
    allowed = f"its fields: {', '.join(fields) or 'none'}; and L, the first layer it acts in"
    dims = []
    for key, dim in m.space.items():
        if key not in fields and key != SCOPE:
            raise bad(f"{prefix}space.{key}", f"is not a field of policy {m.policy!r} ({allowed})")
        if key in m.fixed:
            raise bad(f"{prefix}space.{key}", "is also in `fixed`")
        dims.append(_dim(str(key), dim, hints.get(key, int), f"{prefix}space.{key}", bad))
    for key, value in m.fixed.items():
        _check_fixed(str(key), value, fields, hints, f"{prefix}fixed.{key}", allowed, m.policy, bad)
        _probe_alone(str(key), value, m.policy, f"{prefix}fixed.{key}", bad)
    if SCOPE in m.fixed and "layers" in m.fixed:
        raise bad(f"{prefix}fixed.L", "and `layers` both set the layer scope; give one")
    searched = {d.name for d in dims}
    if set(searched | set(m.fixed)) <= {SCOPE}:
        raise bad(f"{prefix}space.L" if SCOPE in searched else f"{prefix}space",
                  f"searches only the layer scope: search or fix a field of {m.policy!r} as well")
    if m.n_trials is not None and m.n_trials < 1:
        raise bad(f"{prefix}n_trials", f"must be ≥ 1, got {m.n_trials}")
    method = Method(name=name, policy=m.policy, space=tuple(dims), fixed=dict(m.fixed),
                    relations=_relations(m, dims, prefix, bad), reference=_reference(m, fields, prefix, bad),
                    n_trials=m.n_trials or default_trials, study_name=study_name)
    _check_corners(method, prefix, bad)
    return method


def _check_fixed(key: str, value: Any, fields: dict, hints: dict, path: str, allowed: str,
                 policy: str, bad: Bad) -> None:
    from avl_lab.evaluation.policy_spec import type_error

    if key == SCOPE:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(path, f"must be a decoder layer (an integer ≥ 0), got {value!r}")
        return
    if key != "layers" and key not in fields:
        raise bad(path, f"is not a field of policy {policy!r} ({allowed})")
    why = type_error(value, hints.get(key, Any)) if key != "layers" else None
    if why is not None:
        raise bad(path, why)


def _probe_alone(key: str, value: Any, policy: str, path: str, bad: Bad) -> None:
    """A fixed value the policy rejects on its own (its message names only that field)."""
    from avl_lab.evaluation.policy_spec import check_policy

    if key == SCOPE:
        return
    try:
        check_policy({"name": policy, key: value})
    except ConfigError as err:
        msg = str(err).removeprefix(f"`policy` ({policy}): ")
        if set(_named_fields(msg)) == {key}:
            raise bad(path, f"is invalid for policy {policy!r}: {msg}") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dim(key: str, c: DimConfig, tp: Any, path: str, bad: Bad) -> Dim:
    """One dimension, checked against the field's declared type ``tp``."""
    if c.type is not None and c.type not in KINDS:
        raise bad(f"{path}.type", f"must be one of {', '.join(KINDS)}, got {c.type!r}")
    if c.choices is not None or c.type == "categorical":
        return _categorical(key, c, tp, path, bad)
    return _range(key, c, tp, path, bad)


def _categorical(key: str, c: DimConfig, tp: Any, path: str, bad: Bad) -> Dim:
    from avl_lab.evaluation.policy_spec import type_error

    if c.choices is None:
        raise bad(path, "is categorical but has no `choices`")
    if any(v not in (None, False) for v in (c.low, c.high, c.step, c.log)):
        raise bad(path, "gives both `choices` and a range (low/high/step/log); give one")
    if not c.choices:
        raise bad(f"{path}.choices", "is empty; give at least one value")
    for v in c.choices:
        why = ("must hold plain values (numbers, strings, true/false, null)"
               if not isinstance(v, _SCALARS) else type_error(v, tp))
        if why is not None:
            raise bad(f"{path}.choices", f"{v!r}: {why}")
    if len(set(map(repr, c.choices))) != len(c.choices):
        raise bad(f"{path}.choices", f"has duplicates: {list(c.choices)}")
    return Dim(key, "categorical", choices=tuple(c.choices))


def _range(key: str, c: DimConfig, tp: Any, path: str, bad: Bad) -> Dim:
    """An int or float range: integer low/high/step search integers unless ``type: float``."""
    from avl_lab.evaluation.policy_spec import type_options

    if c.low is None or c.high is None:
        raise bad(path, "needs `low` and `high` (a range) or `choices`")
    for part in ("low", "high", "step"):
        v = getattr(c, part)
        if v is not None and not _number(v):
            raise bad(f"{path}.{part}", f"must be a number, got {v!r}")
    ints = all(isinstance(v, int) for v in (c.low, c.high, c.step) if v is not None)
    kind = c.type or ("int" if ints else "float")
    options, _ = type_options(tp)
    takes = {t for t in options if t in (int, float)} | ({int, float} if Any in options else set())
    if kind == "int" and not ints:
        raise bad(path, f"is `type: int` but low/high/step are not all integers: {c.low}, {c.high}, "
                  f"{c.step}")
    if not takes:
        raise bad(path, f"searches `{key}`, which is not a number field; give `choices`")
    if kind == "float" and float not in takes:
        raise bad(path, f"`{key}` is an integer field; give integer low, high and step")
    if c.low > c.high:
        raise bad(path, f"needs low ≤ high, got low={c.low} high={c.high}")
    if key == SCOPE and c.low < 0:
        raise bad(path, f"is a decoder layer range: low must be ≥ 0, got {c.low}")
    if c.step is not None and c.step <= 0:
        raise bad(f"{path}.step", f"must be > 0, got {c.step}")
    if c.log and c.low <= 0:
        raise bad(f"{path}.log", f"needs low > 0, got {c.low}")
    if c.log and c.step not in (None, 1):
        raise bad(f"{path}.log", "cannot be combined with a step")
    step = c.step if c.step is not None else (1 if kind == "int" else None)
    return Dim(key, kind, low=c.low, high=c.high, step=step if not c.log else None, log=c.log)


def _relations(m: MethodConfig, dims: list[Dim], prefix: str, bad: Bad) -> tuple[Relation, ...]:
    """Parsed relations; a fixed value that every trial would clip (or clip to) is an error."""
    ranges = {d.name: (min(d.values()), max(d.values())) for d in dims
              if all(_number(v) for v in d.values())}
    ranges.update({k: (v, v) for k, v in m.fixed.items() if _number(v)})
    out = []
    for text in m.relations:
        rel = parse_relation(text)
        if rel is None:
            raise bad(f"{prefix}relations", f"{text!r} is not a relation; write \"A <= B\" (A is "
                      "clipped to B in every trial)")
        for f in (rel.small, rel.big):
            if f not in ranges:
                raise bad(f"{prefix}relations", f"{text!r}: `{f}` is not a numeric field the study "
                          "searches or fixes")
        (lo_small, hi_small), (lo_big, hi_big) = ranges[rel.small], ranges[rel.big]
        if rel.small in m.fixed and hi_small > hi_big:
            raise bad(f"{prefix}fixed.{rel.small}", f"is {hi_small}, above every {rel.big} the study "
                      f"can use (at most {hi_big}); {rel} is required")
        if rel.big in m.fixed and lo_small > lo_big:
            raise bad(f"{prefix}fixed.{rel.big}", f"is {lo_big}, below every {rel.small} the study "
                      f"can use (at least {lo_small}); {rel} is required")
        out.append(rel)
    return tuple(out)


def _reference(m: MethodConfig, fields: dict, prefix: str, bad: Bad) -> dict[str, Any] | None:
    if m.reference is None:
        return None
    for key in m.reference:
        if key not in fields and key != SCOPE:
            raise bad(f"{prefix}reference.{key}", f"is not a field of policy {m.policy!r}")
    return dict(m.reference)


def _named_fields(message: str) -> list[str]:
    return [f for f in re.findall(r"`(?:policy\.)?([A-Za-z_]\w*)`", message) if f != "policy"]


def corner_policies(method: Method) -> list[dict[str, Any]]:
    """The policies at the space's two corners (every dimension's first and last value) and
    the reference point: what a sweep checks against the model before it runs."""
    first = {d.name: d.values()[0] for d in method.space}
    last = {d.name: d.values()[-1] for d in method.space}
    ref = reference_policy(method)
    return [to_policy(first, method), to_policy(last, method), *([ref] if ref else [])]


def _check_corners(method: Method, prefix: str, bad: Bad) -> None:
    """Build the policy at the corners of the space: a value the policy rejects is an error
    naming the dimension (or the fixed field) that causes it."""
    from avl_lab.evaluation.policy_spec import check_policy

    first = {d.name: d.values()[0] for d in method.space}
    last = {d.name: d.values()[-1] for d in method.space}

    def attempt(raw: dict[str, Any], key: str) -> None:
        try:
            check_policy(to_policy(raw, method))
        except ConfigError as err:
            msg = str(err).removeprefix(f"`policy` ({method.policy}): ")
            named = _named_fields(msg)
            fixed = [f for f in named if f in method.fixed]
            searched = [f for f in named if f in method.searched()]
            blame = (f"{prefix}fixed.{fixed[0]}" if fixed and not searched
                     else f"{prefix}space.{searched[0]}" if len(searched) == 1 else key)
            hint = (f" (a relation such as \"{searched[0]} <= {searched[1]}\" in `relations` "
                    "clips one to the other)" if len(searched) >= 2 else "")
            shown = ", ".join(f"{k}={v}" for k, v in raw.items())
            raise bad(blame, f"gives an invalid {method.policy!r} policy at {shown}: "
                      f"{msg}{hint}") from None

    attempt(first, f"{prefix}space")
    for d in method.space:
        for v in d.values():
            attempt({**first, d.name: v}, f"{prefix}space.{d.name}")
    attempt(last, f"{prefix}space")
    ref = reference_policy(method)
    if ref is not None:
        try:
            check_policy(ref)
        except ConfigError as err:
            raise bad(f"{prefix}reference", f"is not a valid {method.policy!r} policy: {err}") from None
