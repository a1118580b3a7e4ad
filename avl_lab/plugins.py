"""Policies, tasks and metrics from outside the package: entry points and ``plugins=[...]``.

Two ways in, one effect (the plugin's module is imported, and its ``@register``,
``data.register`` and ``register_metric`` decorators run):

- **Installed packages** declare entry points in the groups of :data:`GROUPS`; they are
  loaded the first time a registry is looked up (``policies.names()``, ``data.get(...)``,
  ``metrics.metric_names()`` ...), once per process. In a ``pyproject.toml``::

      [project.entry-points."avl_lab.policies"]
      top_image = "avl_top_image.policy"      # a module that registers the policy

- **``plugins=[module.name, path/to/file.py, ...]``** on every verb's command line, in a
  ``config=FILE`` and in study files: imported before anything is validated, so ``--help``,
  ``--check`` and the policy checks see what they register. A file is imported under its
  stem as module name (``my_policy.py`` -> ``my_policy``); a relative path in a YAML file is
  resolved against that file's folder first.

A plugin that cannot be found, fails to import, or registers a name that is already taken is
one :class:`PluginError` (a :class:`~avl_lab.errors.ConfigError`: one ``error:`` line, exit 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from avl_lab.errors import ConfigError

__all__ = ["GROUPS", "KEY", "Plugin", "PluginError", "load", "load_installed", "loaded",
           "parse_specs", "take"]

log = logging.getLogger(__name__)

#: Entry-point group -> what its plugins register; loaded in this order (a task names a metric).
GROUPS = {"avl_lab.metrics": "metrics", "avl_lab.tasks": "tasks", "avl_lab.policies": "policies"}


#: The key that names plugins on a command line, in a config file and in a study file.
KEY = "plugins"


class PluginError(ConfigError):
    """A plugin is missing, fails to import, or registers a name that is already taken."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: its module and where it came from (a file, a module, an entry point)."""

    module: str
    source: str


_LOADED: dict[str, Plugin] = {}  # key: resolved file path, module name or entry point
_INSTALLED_DONE = False


def loaded() -> list[Plugin]:
    """The plugins imported in this process, in load order (for run summaries)."""
    return list(_LOADED.values())


def _why(err: BaseException) -> str:
    """One line on an import failure: the exception and, where known, the plugin's own line."""
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "importlib" not in f.filename and f.filename != __file__]
    if frames:
        text += f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"
    return text.rstrip(": ")


def _import(what: str, run) -> None:
    """Run an import; map its failures to one :class:`PluginError` naming ``what``."""
    try:
        run()
    except PluginError:
        raise
    except ValueError as err:  # the registries' "already registered"
        if "already registered" in str(err):
            raise PluginError(f"plugin {what}: {err}; give it another name") from None
        raise PluginError(f"plugin {what} failed to import: {_why(err)}") from None
    except Exception as err:  # noqa: BLE001 - any failure of user code is the user's to fix
        raise PluginError(f"plugin {what} failed to import: {_why(err)}") from None


def _import_file(path: Path) -> str:
    name = path.stem
    if not name.isidentifier():
        raise PluginError(f"`plugins`: {path.name} cannot be imported: its name is not a Python "
                          "identifier (rename the file, e.g. my_policy.py)")
    old = sys.modules.get(name)
    if old is not None:
        where = getattr(old, "__file__", None)
        if where is None or Path(where).resolve() != path:
            raise PluginError(f"`plugins`: {path} would be imported as module {name!r}, but a "
                              f"module of that name is already loaded ({where or 'built in'}); "
                              "rename the file")
        return name
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"`plugins`: {path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module

    def run() -> None:
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except BaseException:
            sys.modules.pop(name, None)
            raise

    _import(str(path), run)
    return name


def _resolve_file(spec: str, bases: Sequence[Path]) -> Path:
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [b / path for b in bases] + [Path.cwd() / path]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    looked = ", ".join(dict.fromkeys(str(c.parent) for c in candidates))
    raise PluginError(f"`plugins`: no plugin file {spec} (looked in {looked})")


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def load(specs: Iterable[str], base: str | Path | None = None) -> list[Plugin]:
    """Import plugins given as module names or ``.py`` paths (each once per process).

    Parameters
    ----------
    specs : module names (``my_pkg.policy``) or paths of ``.py`` files.
    base : the folder relative paths are resolved against first (a YAML file's folder);
        the current directory is tried after it.

    Raises
    ------
    PluginError
        Not found, failed to import (the message gives the exception and the plugin's line),
        or a registration under a name that is already taken.
    """
    load_installed()
    bases = [Path(base)] if base is not None else []
    out = []
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            raise PluginError("`plugins`: an entry is empty; give module names or .py paths")
        if _is_file(spec):
            path = _resolve_file(spec, bases)
            key = str(path)
            if key not in _LOADED:
                _LOADED[key] = Plugin(_import_file(path), str(path))
        else:
            key = spec
            if key not in _LOADED:
                if importlib.util.find_spec(spec.split(".")[0]) is None:
                    raise PluginError(f"`plugins`: no module {spec!r} (not installed, not on "
                                      "PYTHONPATH; give a .py path for a file)")
                _import(spec, lambda s=spec: importlib.import_module(s))
                _LOADED[key] = Plugin(spec, "module")
        out.append(_LOADED[key])
        log.debug("plugin %s loaded (%s)", out[-1].module, out[-1].source)
    return out


def load_installed() -> None:
    """Import the entry points of installed packages (every group of :data:`GROUPS`), once.

    Raises
    ------
    PluginError
        An entry point fails to import or registers a name that is taken (the message names
        the entry point, its group and its package).
    """
    global _INSTALLED_DONE
    if _INSTALLED_DONE:
        return
    _INSTALLED_DONE = True  # before loading: a plugin importing avl_lab must not recurse here
    for group in GROUPS:
        for ep in metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            package = f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
            key = f"{group}:{ep.name}"
            if key in _LOADED:
                continue
            _import(f"entry point {ep.name!r} ({group}, from {package})", ep.load)
            _LOADED[key] = Plugin(ep.value.partition(":")[0], f"entry point {key} ({package})")


def take(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(plugin specs, the other items)`` of a dotlist (``plugins=[a.py, b]`` items removed)."""
    specs, rest = [], []
    for item in items:
        key, _, value = item.partition("=")
        if key == KEY:
            specs += parse_specs(value)
        else:
            rest.append(item)
    return specs, rest


def parse_specs(value: object, key: str = KEY) -> list[str]:
    """A ``plugins`` value as a list of specs: a YAML list, or one name / path.

    Raises
    ------
    ConfigError
        Neither a string nor a list of strings.
    """
    if value is None:
        return []
    if isinstance(value, str):
        import yaml

        try:
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else value
        except yaml.YAMLError:
            raise PluginError(f"`{key}`: cannot read {value!r}; give [a.py, my.module]") from None
        value = parsed
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise PluginError(f"`{key}` must be a module name, a .py path or a list of them, got {value!r}")
