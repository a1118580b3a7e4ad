"""Command lines to dotlists: every verb takes ``key=value`` and the same keys as flags.

``--n-trials 4``, ``--n-trials=4`` and ``n_trials=4`` are one thing; a boolean field is a bare
flag (``--report`` = ``report=true``, ``--no-progress`` = ``progress=false``); bare words fill
the verb's positional keys (``figures fig9`` = ``figure=fig9``); ``-v`` / ``-q`` set the
verbosity, ``-h`` / ``--help`` asks for help and ``--check`` for a dry run (the command is
validated — keys, values, files, the model's checkpoint and the data — and stops before it
loads weights, runs or writes anything). ``plugins=[a.py, my.module]`` (every verb) imports
those plugins as the command line is read, so that ``--help``, ``--check`` and every check
after see the policies, tasks and metrics they register (:mod:`avl_lab.plugins`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from avl_lab.errors import ConfigError

__all__ = ["Argv", "parse_argv"]

log = logging.getLogger(__name__)

#: Old spellings of keys: ``out=`` and ``--out`` mean ``out_dir``.
ALIASES = {"out": "out_dir"}


@dataclass
class Argv:
    """A parsed command line."""

    dotlist: list[str] = field(default_factory=list)
    """``key=value`` overrides, flags and positionals included, in command-line order."""
    verbosity: int = 0
    """``-v`` per step up, ``-q`` per step down."""
    help: bool = False
    """``-h`` or ``--help`` was given."""
    check: bool = False
    """``--check`` was given: validate the command, then stop before running it."""
    deprecated: list[str] = field(default_factory=list)
    """Old spellings that were used (``out=``), for one warning."""
    plugins: list[str] = field(default_factory=list)
    """``plugins=...`` given on the command line (imported by :func:`parse_argv`)."""

    def keys(self) -> list[str]:
        return [item.partition("=")[0] for item in self.dotlist]


def _key(name: str, aliases: Mapping[str, str], argv: Argv, given: str) -> str:
    key = name.replace("-", "_")
    if key in aliases:
        if given.startswith("out="):
            argv.deprecated.append(f"`{given.partition('=')[0]}=` is deprecated; use `{aliases[key]}=`")
        return aliases[key]
    return key


def _long_option(
    tok: str, rest: Sequence[str], bool_keys: Sequence[str], aliases: Mapping[str, str], out: Argv
) -> tuple[str, int]:
    """``--name``, ``--name=value`` or ``--name value`` as ``key=value``, and how many of the
    following words it consumed (0 or 1)."""
    name, eq, value = tok[2:].partition("=")
    key = _key(name, aliases, out, tok)
    if eq:
        return f"{key}={value}", 0
    if key in bool_keys:
        return f"{key}=true", 0
    if key.startswith("no_") and key[3:] in bool_keys:
        return f"{key[3:]}=false", 0
    if not rest or rest[0].startswith("--"):
        raise ConfigError(f"`--{name}` needs a value (`--{name} VALUE` or `{key}=VALUE`)")
    return f"{key}={rest[0]}", 1


def parse_argv(
    argv: Sequence[str],
    *,
    bool_keys: Sequence[str] = (),
    positional: Sequence[str] = (),
    aliases: Mapping[str, str] = ALIASES,
) -> Argv:
    """Turn ``argv`` into an :class:`Argv`.

    Parameters
    ----------
    bool_keys : the keys that are bare flags (``--report``, ``--no-progress``).
    positional : keys filled, in order, by bare words (``figure`` for ``figures fig9``).
    aliases : old key -> key.

    Raises
    ------
    ConfigError
        An unknown option, a flag without its value, or a surplus bare word.
    """
    out = Argv()
    free = list(positional)
    items = list(argv)
    i = 0
    while i < len(items):
        tok = items[i]
        i += 1
        if tok in ("-h", "--help"):
            out.help = True
        elif tok == "--check":
            out.check = True
        elif tok in ("-q", "--quiet"):
            out.verbosity -= 1
        elif tok == "--verbose" or (tok.startswith("-v") and set(tok[1:]) == {"v"}):
            out.verbosity += 1 if tok == "--verbose" else len(tok) - 1
        elif tok.startswith("--") and len(tok) > 2:
            item, used = _long_option(tok, items[i:], bool_keys, aliases, out)
            out.dotlist.append(item)
            i += used
        elif tok.startswith("-") and len(tok) > 1 and not tok[1].isdigit():
            raise ConfigError(f"unknown option `{tok}`; arguments are key=value (see --help)")
        elif "=" in tok:
            name, _, value = tok.partition("=")
            if not name:
                raise ConfigError(f"argument {tok!r} has no key; arguments are key=value")
            out.dotlist.append(f"{_key(name, aliases, out, tok)}={value}")
        elif free:
            out.dotlist.append(f"{free.pop(0)}={tok}")
        else:
            raise ConfigError(f"unexpected argument {tok!r}; arguments are key=value (see --help)")
    for note in dict.fromkeys(out.deprecated):
        log.warning(note)
    _take_plugins(out)
    return out


def _take_plugins(out: Argv) -> None:
    """Move ``plugins=`` items out of the dotlist and import them (one error if one fails)."""
    from avl_lab import plugins

    out.plugins, out.dotlist = plugins.take(out.dotlist)
    plugins.load(out.plugins)
