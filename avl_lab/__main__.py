"""``python -m avl_lab {evaluate,sweep,figures,analyze,train} [key=value ...]``: one front door.

``python -m avl_lab <verb> --help`` lists the verb's keys with their docs, and the registered
models, tasks and policies. ``python -m avl_lab.<verb>`` is the same command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from avl_lab.cli import VERBS

SUMMARIES = {
    "evaluate": "one model on one task under one KV-cache policy (samples.jsonl, summary.json)",
    "sweep": "an Optuna study of any policy's fields, one method or several: Pareto fronts",
    "figures": "the paper's Figure 9 / Figure 10 parameter studies and Table 2/3",
    "analyze": "the paper's attention observations (Figs 1, 3, 4, 5)",
    "train": "train and export the embedded avl-tiny model",
}


def usage() -> str:
    lines = ["usage: python -m avl_lab <verb> [key=value ...]", "", "verbs:"]
    lines += [f"  {verb:<9} {SUMMARIES[verb]}" for verb in VERBS]
    lines += ["", "`python -m avl_lab <verb> --help` lists a verb's keys, models, tasks and policies."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; choose one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    from avl_lab.torchvision_check import torchvision_problem

    problem = torchvision_problem()  # before Lightning or transformers import it and fail
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return importlib.import_module(VERBS[verb]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
