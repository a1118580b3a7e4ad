"""``config=FILE``: a YAML file of a verb's keys, under the command line's ``key=value``.

Every verb takes ``config=FILE`` (or ``--config FILE``). The file holds the same keys as the
command line, nested or dotted (``data: {name: synth-ocr, limit: 8}`` or ``data.limit: 8``;
``model: avl-tiny`` is ``model.name``), and its values come first: ``key=value`` arguments
override them; its ``plugins`` (paths relative to the file's folder) are imported first.
The file is read by :func:`avl_lab.cli.loader.load_yaml` and its keys go
through the verb's own loading, so unknown keys, wrong types and invalid values are the same
errors as on the command line; an error about a key that only the file sets names the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from avl_lab.cli.loader import load_yaml
from avl_lab.errors import ConfigError

__all__ = ["CONFIG_KEY", "file_items", "with_config_file"]

T = TypeVar("T")

#: The key that names a config file (``config=FILE``, ``--config FILE``).
CONFIG_KEY = "config"


def _value(value: Any) -> str:
    """A dotlist value that reads back as ``value`` (strings as written, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def _flatten(data: Mapping[Any, Any], prefix: str, path: Path) -> list[str]:
    items: list[str] = []
    for key, value in data.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ConfigError(f"config file {path}: {key!r} is not a key name")
        if not prefix and key == CONFIG_KEY:
            raise ConfigError(f"config file {path}: `{CONFIG_KEY}` cannot name another config file")
        if isinstance(value, Mapping) and value:
            items += _flatten(value, f"{prefix}{key}.", path)
        else:
            items.append(f"{prefix}{key}={_value(value)}")
    return items


def file_items(path: str | Path) -> list[str]:
    """The ``key=value`` items of a config file, in file order.

    Raises
    ------
    FileNotFoundError, InputFileError, ConfigError
        The file is missing, not YAML, not a mapping, or has a key that is not a name.
    """
    from omegaconf import OmegaConf

    cfg = load_yaml(path, "config file")
    return _flatten(OmegaConf.to_container(cfg), "", Path(path))


def _covers(a: str, b: str) -> bool:
    """Keys ``a`` and ``b`` are one key, or one holds the other (``model`` and ``model.name``)."""
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _named_key(message: str) -> str | None:
    """The first key an error message names (``\\`key\\``)."""
    m = re.search(r"`([A-Za-z_][\w.]*)`", message)
    return m.group(1) if m else None


def with_config_file(load: Callable[[list[str]], T], dotlist: Sequence[str]) -> T:
    """``load(file items + the other items)`` where ``dotlist`` has a ``config=FILE`` item.

    ``load`` is a verb's configuration step (keys to validated configs, nothing written). An
    error it raises about a key that the file sets and the command line does not is prefixed
    with ``config file FILE:``.

    Raises
    ------
    ConfigError
        ``config`` given twice or empty; the file's own errors (see :func:`file_items`).
    """
    from avl_lab import plugins

    paths = [item.partition("=")[2] for item in dotlist if item.partition("=")[0] == CONFIG_KEY]
    specs, rest = plugins.take([item for item in dotlist if item.partition("=")[0] != CONFIG_KEY])
    plugins.load(specs)
    if not paths:
        return load(rest)
    if len(paths) > 1:
        raise ConfigError(f"`{CONFIG_KEY}` is given {len(paths)} times ({', '.join(paths)}); "
                          "give one file and key=value overrides on top")
    if not paths[0]:
        raise ConfigError(f"`{CONFIG_KEY}` needs a file name (config=FILE)")
    specs, items = plugins.take(file_items(paths[0]))
    try:
        plugins.load(specs, base=Path(paths[0]).expanduser().resolve().parent)
    except plugins.PluginError as err:
        raise plugins.PluginError(f"config file {paths[0]}: {err}") from None
    try:
        return load([*items, *rest])
    except ConfigError as err:
        key = _named_key(str(err))
        from_file = key is not None and any(_covers(key, i.partition("=")[0]) for i in items)
        from_cli = key is not None and any(_covers(key, i.partition("=")[0]) for i in rest)
        if from_file and not from_cli:
            raise ConfigError(f"config file {paths[0]}: {err}") from None
        raise
