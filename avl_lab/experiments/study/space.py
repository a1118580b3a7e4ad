"""A method's search space: its dimensions (``suggest_*`` calls only), the relations that clip
one field to another (A-VL's ``C <= S``, ``S <= P``), and the first tiered layer ``L`` as the
policy's layer scope ``"L-"``.

A study searches any registered policy's own dataclass fields. Each dimension is an integer
range, a float range (optionally ``log``) or a categorical; relations are applied in the order
written, each clipping its left field to its right one (``min``), so every sampler sees one
static space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import optuna

#: Not a policy field: the first decoder layer the policy acts in (``layers: "L-"``), any policy.
SCOPE = "L"
KINDS = ("int", "float", "categorical")


@dataclass(frozen=True)
class Dim:
    """One searched field.

    Attributes
    ----------
    name : the policy field (or ``L``).
    kind : ``int`` | ``float`` | ``categorical``.
    low, high, step, log : the range (``step`` None: continuous floats).
    choices : the values of a categorical.
    """

    name: str
    kind: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def values(self) -> tuple[Any, ...]:
        """The values validation tries: both ends of a range, every choice."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def describe(self) -> dict[str, Any]:
        """What the study records of it (only what is set, so old records still match)."""
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        d: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step is not None:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        if self.kind == "float" and isinstance(self.low, int) and isinstance(self.high, int):
            d["type"] = "float"
        return d


@dataclass(frozen=True)
class Relation:
    """``small <= big``: a trial's ``small`` is clipped to its ``big``."""

    small: str
    big: str

    def __str__(self) -> str:
        return f"{self.small} <= {self.big}"


_RELATION = re.compile(r"^\s*([A-Za-z_]\w*)\s*<=\s*([A-Za-z_]\w*)\s*$")


def parse_relation(text: str) -> Relation | None:
    """``"C <= S"`` as a :class:`Relation`; None if it is not one."""
    m = _RELATION.match(str(text))
    return Relation(m.group(1), m.group(2)) if m else None


@dataclass(frozen=True)
class Method:
    """One searched policy of a study: what the driver runs and the report draws.

    Attributes
    ----------
    name : the method's name in the study (the policy name for single-method studies).
    policy : the registered policy searched.
    space : searched fields, in the order they are suggested.
    fixed : fields held fixed (``L`` and ``layers`` included).
    relations : clipping relations, applied in order.
    reference : a point marked on the plot (e.g. the paper's default), or None.
    n_trials : completed trials this method should hold.
    study_name : its Optuna study (the study's name, or ``<study>/<method>``).
    seed_offset : added to the sampler's seed (see the field).
    """

    name: str
    policy: str
    space: tuple[Dim, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    relations: tuple[Relation, ...] = ()
    reference: dict[str, Any] | None = None
    n_trials: int = 24
    study_name: str = ""
    seed_offset: int = 0
    """Added to the sampler's seed: 0 for a single-policy study, a hash of the method's name in
    a multi-method study (so that methods with alike spaces do not draw the same values)."""

    def params(self) -> list[str]:
        """The fields a trial sets, searched first, then fixed (``L`` last)."""
        names = [d.name for d in self.space] + [k for k in self.fixed if k not in self.searched()]
        return sorted(names, key=lambda k: k == SCOPE)

    def searched(self) -> set[str]:
        return {d.name for d in self.space}


def suggest(trial: optuna.Trial, method: Method) -> dict[str, Any]:
    """Raw values of a trial (static ranges, so every sampler sees one space)."""
    raw: dict[str, Any] = {}
    for d in method.space:
        if d.kind == "int":
            raw[d.name] = trial.suggest_int(d.name, d.low, d.high, step=d.step or 1, log=d.log)
        elif d.kind == "float":
            raw[d.name] = trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)
        else:
            raw[d.name] = trial.suggest_categorical(d.name, list(d.choices))
    return raw


def to_policy(raw: dict[str, Any], method: Method) -> dict[str, Any]:
    """The policy spec of a trial: fixed fields under the searched ones, each relation's left
    field clipped to its right one (in order), ``L`` turned into the scope ``layers: "L-"``."""
    params = {**method.fixed, **raw}
    for rel in method.relations:
        if params.get(rel.small) is not None and params.get(rel.big) is not None:
            params[rel.small] = min(params[rel.small], params[rel.big])
    first = params.pop(SCOPE, None)
    policy = {"name": method.policy, **params}
    if first is not None:
        policy["layers"] = f"{int(first)}-"
    return policy


def first_layer(policy: dict[str, Any]) -> int | None:
    """``L`` of a trial's policy (its scope ``"L-"``); None when the policy has no scope."""
    layers = policy.get("layers")
    if isinstance(layers, str) and layers.endswith("-") and layers[:-1].isdigit():
        return int(layers[:-1])
    return None


def reference_policy(method: Method) -> dict[str, Any] | None:
    """The method's reference point as a policy spec (fixed fields win over it, relations
    applied), or None."""
    if method.reference is None:
        return None
    return to_policy({k: v for k, v in method.reference.items() if k not in method.fixed}, method)
