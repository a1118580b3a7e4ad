"""``python -m avl_lab.evaluate key=value ...``: evaluate a model on a task under a policy.

Example::

    python -m avl_lab.evaluate model=tiny-random-llava data=synth-docvqa data.limit=16 \\
        policy=avl policy.S=45 policy.C=30 batch_size=8 out_dir=runs/demo

``avl_lab.evaluate(cfg)`` is the same as a function (this module is callable).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import logging
import os
import sys
import types
from typing import Any

from avl_lab.evaluation.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    GenerationConfig,
    ModelConfig,
    load_config,
)
from avl_lab.evaluation.runner import evaluate
from avl_lab.evaluation.summary import Summary

__all__ = ["Summary", "evaluate", "main"]

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, FileNotFoundError)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (``a: int = 1`` then ``\"\"\"doc\"\"\"``)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())  # type: ignore[union-attr]
    return docs


def help_text(root: type = EvalConfig, title: str = "python -m avl_lab.evaluate") -> str:
    lines = [f"usage: {title} [key=value ...]", "", "Fields (defaults in brackets):"]
    subs = {"model": ModelConfig, "data": DataConfig, "generation": GenerationConfig}
    for f in dataclasses.fields(root):
        if f.name in subs:
            sub_docs = field_docs(subs[f.name])
            for sf in dataclasses.fields(subs[f.name]):
                default = sf.default if sf.default is not dataclasses.MISSING else None
                lines.append(f"  {f.name}.{sf.name} [{default}]: {sub_docs.get(sf.name, '')}")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} [{default}]: {field_docs(root).get(f.name, '')}")
    lines += ["", "Shorthands: model=X, data=X, policy=X set model.name, data.name, policy.name."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = evaluate(load_config(argv))
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        short = {k: v for k, v in summary.to_dict().items() if k not in ("config", "versions")}
        print(json.dumps(short, indent=2))
    return 0


class _CallableModule(types.ModuleType):
    """``avl_lab.evaluate(cfg)`` calls :func:`evaluate` even though this is a module."""

    def __call__(self, cfg: Any = None, **overrides: Any) -> Summary:
        return evaluate(cfg, **overrides)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
