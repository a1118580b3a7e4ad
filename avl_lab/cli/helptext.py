"""``--help`` for every verb, generated from the schemas' field docstrings and the registries."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from avl_lab.cli.loader import _hints, _sub_schema

__all__ = ["Section", "field_docs", "help_text", "registries"]


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (``a: int = 1`` then ``\"\"\"doc\"\"\"``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


@dataclass
class Section:
    """A block of ``--help``: the keys of ``schema`` (nested ones dotted) under a title."""

    title: str
    schema: type
    skip: Sequence[str] = ()
    """Top-level keys not to list (set by the verb, or rejected)."""


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    if value is MISSING or value == MISSING:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _lines(schema: type, prefix: str = "", skip: Sequence[str] = ()) -> list[str]:
    docs, hints, out = field_docs(schema), _hints(schema), []
    for f in dataclasses.fields(schema):
        if f.name in skip or not f.init:
            continue
        sub = _sub_schema(hints.get(f.name))
        if sub is not None:
            out += _lines(sub, f"{prefix}{f.name}.")
            continue
        doc = docs.get(f.name, "")
        out.append(f"  {prefix}{f.name} [{_default(f)}]")
        if doc:
            out += textwrap.wrap(doc, 96, initial_indent="      ", subsequent_indent="      ",
                                 break_on_hyphens=False)
    return out


def registries() -> list[str]:
    """The registered models, tasks and policies (with their fields), for ``--help``."""
    from avl_lab import data, models, policies
    from avl_lab.policies.registry import fields

    lines = ["Models (model=NAME, or a local checkpoint directory):"]
    lines += textwrap.wrap(", ".join(models.names()), 96, initial_indent="  ",
                           subsequent_indent="  ", break_on_hyphens=False)
    lines.append("Tasks (data=NAME; metric; splits):")
    for name in data.names():
        spec = data.get(name)
        splits = ", ".join(sorted(set(spec.splits) | set(spec.aliases)))
        lines.append(f"  {name:<14} {spec.metric:<17} {splits}")
    lines.append("Policies (policy=NAME policy.FIELD=VALUE):")
    for name in policies.names():
        lines.append(f"  {name:<14} {', '.join(fields(name)) or '-'}")
    return lines


def help_text(
    usage: str,
    summary: str,
    sections: Sequence[Section],
    notes: Sequence[str] = (),
    with_registries: bool = True,
) -> str:
    """The help of one verb: usage, summary, each section's keys with defaults and docs,
    notes, and the registered models, tasks and policies."""
    lines = [f"usage: {usage}", "", *textwrap.wrap(summary, 100), ""]
    for sec in sections:
        lines += [f"{sec.title} [default]:", *_lines(sec.schema, skip=sec.skip), ""]
    for note in notes:
        lines += [*textwrap.wrap(note, 100, break_on_hyphens=False), ""]
    lines += [*textwrap.wrap("Common options: config=FILE (a YAML file of these keys, nested or "
                             "dotted; key=value arguments override it), --check (validate the command: keys, "
                             "values, files, checkpoint and data; run and write nothing), "
                             "plugins=[my_policy.py, my.module] (import policies, tasks and metrics "
                             "from outside the package first; installed packages' entry points "
                             "in the groups avl_lab.policies, avl_lab.tasks, avl_lab.metrics load "
                             "by themselves), -h/--help, -v/--verbose (more output), -q/--quiet.",
                             100, break_on_hyphens=False), ""]
    if with_registries:
        lines += registries()
    return "\n".join(lines).rstrip() + "\n"
