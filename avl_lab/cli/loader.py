"""The one config loader: a dataclass schema, YAML values and ``key=value`` overrides.

``OmegaConf.merge(OmegaConf.structured(Schema), yaml, dotlist)`` validates keys and types;
``__post_init__`` checks values. Every failure becomes one :class:`~avl_lab.errors.ConfigError`
that names the key (and the file, where there is one) and says what would be valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from avl_lab.errors import ConfigError, InputFileError, UserError

__all__ = ["load_structured", "load_yaml", "schema_keys", "split_keys"]

T = TypeVar("T")

_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false",
               "String": "a string"}


def _hints(schema: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(schema)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        return {f.name: f.type for f in dataclasses.fields(schema)}


def _sub_schema(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``Cfg`` or ``Cfg | None``), else None."""
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted keys of a dataclass schema (nested dataclasses expanded)."""
    keys: list[str] = []
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        sub = _sub_schema(hints.get(f.name))
        keys += schema_keys(sub, f"{prefix}{f.name}.") if sub else [f"{prefix}{f.name}"]
    return keys


def split_keys(
    dotlist: Sequence[str],
    own: type,
    other: type | None = None,
    rejected: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Route a verb's ``key=value`` items: ``(those of the schema own, those of other)``.

    A key of neither, or one under a key of ``rejected`` (key -> why the verb ignores it),
    is a :class:`ConfigError` naming it, so that no override is silently dropped.
    """
    rejected = rejected or {}

    def why(key: str) -> str | None:
        return next((v for r, v in rejected.items() if key == r or key.startswith(f"{r}.")), None)

    own_keys = schema_keys(own)
    own_heads = {k.split(".")[0] for k in own_keys}
    other_keys = [k for k in (schema_keys(other) if other else [])
                  if why(k) is None and k.split(".")[0] not in own_heads]
    other_heads = {k.split(".")[0] for k in other_keys}
    mine, rest = [], []
    for item in dotlist:
        key = item.partition("=")[0]
        head = key.split(".")[0]
        if head in own_heads:
            mine.append(item)
        elif why(key) is not None:
            raise ConfigError(f"`{key}` is not taken here: {why(key)}")
        elif head in other_heads:
            rest.append(item)
        else:
            raise ConfigError(unknown_key(key, own_keys + other_keys))
    return mine, rest


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping names one key twice (YAML itself keeps the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = lines.setdefault(key, line)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != line:
                raise _DuplicateKey(problem=f"key `{key}` appears twice (lines {first} and {line}): "
                                            "keep one", problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, what: str = "config file") -> DictConfig:
    """A YAML mapping; a missing, malformed or non-mapping file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" if not path.exists()
                                else f"{what} {path} is not a file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as err:
        raise InputFileError(f"{what} {path}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputFileError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{what} {path} is not a text (YAML) file") from None
    if data is None:
        raise InputFileError(f"{what} {path} is empty")
    if not isinstance(data, dict):
        raise InputFileError(f"{what} {path} must hold a mapping of keys, not a {type(data).__name__}")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as err:
        raise InputFileError(f"{what} {path}: {str(err).splitlines()[0]}") from None


def _field_type(schema: type, key: str) -> Any:
    """The declared type of dotted ``key`` in ``schema`` (None if it is not a schema field)."""
    tp: Any = schema
    for part in key.split("."):
        sub = _sub_schema(tp)
        if sub is None:
            return None
        tp = _hints(sub).get(part)
    return tp


def _container_kind(tp: Any) -> str | None:
    """``"mapping"`` or ``"list"`` for a field declared as one (``dict``/dataclass, ``list``/
    ``tuple``, optionally ``| None``), else None."""
    for t in (tp, *typing.get_args(tp)):
        origin = typing.get_origin(t) or t
        if origin is dict or (isinstance(t, type) and dataclasses.is_dataclass(t)):
            return "mapping"
        if origin in (list, tuple):
            return "list"
    return None


def _check_containers(schema: type, layer: Any, prefix: str = "") -> None:
    """A mapping where the schema has a list, or a list where it has a mapping, is one error
    naming the key (OmegaConf's merge says only "Cannot merge incompatible container types")."""
    if not isinstance(layer, DictConfig):
        return
    for key in layer:
        dotted = f"{prefix}{key}"
        tp = _field_type(schema, dotted)
        want = _container_kind(tp)
        value = layer._get_node(key)
        got = "mapping" if isinstance(value, DictConfig) else "list" if isinstance(value, ListConfig) else None
        if want and got and want != got:
            raise ConfigError(f"`{dotted}` must be a {want}, not a {got}")
        if got == "mapping" and _sub_schema(tp) is not None:
            _check_containers(schema, value, f"{dotted}.")


def _parse_dotlist(items: Sequence[str], shorthands: Sequence[str], schema: type) -> DictConfig:
    layer = OmegaConf.create()
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {item!r} must look like key=value")
        if key in shorthands and not value.lstrip().startswith("{"):
            key, item = f"{key}.name", f"{key}.name={value}"
        try:
            if _field_type(schema, key) is str:  # kept as written: devices=[0,1], name=1.5
                parsed = OmegaConf.create()
                OmegaConf.update(parsed, key, value, force_add=True)
            else:
                parsed = OmegaConf.from_dotlist([item])
            layer = OmegaConf.merge(layer, parsed)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"`{key}`: cannot read the value {value!r} ({problem})") from None
        except OmegaConfBaseException as err:
            raise ConfigError(f"`{key}`: {str(err).splitlines()[0]}") from None
    return layer


#: An unknown key's error lists the valid keys up to this many; beyond, it points to ``--help``.
MAX_LISTED = 20


def unknown_key(key: str, keys: list[str], parent: str = "") -> str:
    """``unknown key `k`; did you mean `x`? (valid keys: ...)``: the keys of ``parent`` (all when
    empty), or, when there are more than :data:`MAX_LISTED`, their number and ``--help``."""
    siblings = [k[len(parent) + 1:] for k in keys if k.startswith(f"{parent}.")] if parent else keys
    of = f" of `{parent}`" if parent else ""
    if len(siblings) > MAX_LISTED:
        return f"unknown key `{key}`{_near(key, keys)} ({len(siblings)} valid keys{of}: `--help` lists them)"
    return f"unknown key `{key}`{_near(key, keys)} (valid keys{of}: {', '.join(siblings) or 'none'})"


def _near(key: str, keys: list[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def describe(err: OmegaConfBaseException, schema: type, where: str = "") -> ConfigError:
    """One-line :class:`ConfigError` for an OmegaConf error, naming the key."""
    key = str(getattr(err, "full_key", None) or "")
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    pre = f"{where}: " if where else ""
    if isinstance(err, ConfigKeyError) and key:
        keys = schema_keys(schema)
        parent = key.rpartition(".")[0]
        return ConfigError(pre + unknown_key(key, keys, parent))
    if isinstance(err, MissingMandatoryValue):
        return ConfigError(f"{pre}`{key}` is required")
    if isinstance(err, ValidationError):
        m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", first)
        if m:
            want = _TYPE_WORDS.get(m.group(2), m.group(2))
            return ConfigError(f"{pre}`{key}` must be {want}, got {m.group(1)!r}")
        if "is not a ListConfig" in first or "Invalid value assigned" in first:
            return ConfigError(f"{pre}`{key}` has the wrong type: {first}")
    return ConfigError(f"{pre}`{key}`: {first}" if key else f"{pre}{first}")


def load_structured(
    schema: type[T],
    overrides: Sequence[str] = (),
    *,
    base: Any = None,
    shorthands: Sequence[str] = (),
    where: str = "",
) -> T:
    """Merge ``schema``'s defaults, ``base`` and ``key=value`` ``overrides``; validate.

    Parameters
    ----------
    schema : a dataclass whose fields (with their docstrings) are the keys.
    overrides : ``key=value`` strings; ``key=X`` for a key in ``shorthands`` means ``key.name=X``.
    base : a schema instance, a mapping, or a YAML path, merged under the overrides.
    where : prefix of error messages (e.g. a file name).

    Raises
    ------
    ConfigError
        Unknown key (with the nearest valid one), wrong type, missing value, or a value that
        ``__post_init__`` rejects.
    """
    layers: list[Any] = [OmegaConf.structured(schema)]
    if isinstance(base, (str, Path)):
        layers.append(load_yaml(base))
        where = where or str(base)
    elif dataclasses.is_dataclass(base) and not isinstance(base, type):
        layers.append(OmegaConf.structured(base))
    elif isinstance(base, (dict, DictConfig)):
        try:
            layers.append(OmegaConf.create(base))
        except OmegaConfBaseException as err:
            raise describe(err, schema, where) from None
    elif base is not None:
        raise ConfigError(f"a config must be a {schema.__name__}, a mapping, a YAML path or a "
                          f"list of key=value strings, not {type(base).__name__}")
    if overrides:
        layers.append(_parse_dotlist(overrides, shorthands, schema))
    try:
        for layer in layers[1:]:
            _check_containers(schema, layer)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as err:
        raise describe(err, schema, where) from None
    except UserError:
        raise
    except (ValueError, TypeError) as err:  # __post_init__ names the field
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None
    return cfg  # type: ignore[return-value]
