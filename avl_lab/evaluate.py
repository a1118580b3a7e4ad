"""``python -m avl_lab.evaluate key=value ...``: evaluate a model on a task under a policy.

Example::

    python -m avl_lab.evaluate model=tiny-random-llava data=synth-docvqa data.limit=16 \\
        policy=avl policy.S=45 policy.C=30 batch_size=8 out_dir=runs/demo

The same as a function: :func:`avl_lab.evaluation.evaluate`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from avl_lab.cli.app import checked, run_verb
from avl_lab.cli.args import parse_argv
from avl_lab.cli.config_file import with_config_file
from avl_lab.cli.helptext import Section, help_text
from avl_lab.evaluation.config import EvalConfig, load_config
from avl_lab.evaluation.runner import check_results_owner, evaluate
from avl_lab.evaluation.summary import Summary

__all__ = ["Summary", "evaluate", "main", "usage"]

BOOL_KEYS = ("progress",)


def usage() -> str:
    return help_text(
        "python -m avl_lab evaluate [key=value ...]",
        "Evaluate a model on a task under a KV-cache policy; writes samples.jsonl (appended as it "
        "goes), summary.json and config.yaml to out_dir. Re-running with the same out_dir resumes.",
        [Section("Keys", EvalConfig)],
        ["Shorthands: model=X, data=X, policy=X set model.name, data.name, policy.name; policy "
         "fields are policy.FIELD=VALUE (see Policies below). Flags: --progress/--no-progress, "
         "--out-dir DIR."],
    )


def _main(argv: list[str]) -> int:
    args = parse_argv(argv, bool_keys=BOOL_KEYS)
    if args.help:
        print(usage())
        return 0
    cfg = with_config_file(load_config, args.dotlist)
    if args.check:
        from avl_lab.evaluation.preflight import check_out_dir, preflight

        check_out_dir(cfg.out_dir)
        check_results_owner(Path(cfg.out_dir).expanduser(), cfg)
        preflight(cfg)
        return checked("evaluate")
    summary = evaluate(cfg)
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        short = {k: v for k, v in summary.to_dict().items() if k not in ("config", "versions")}
        print(json.dumps(short, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m avl_lab evaluate``: 0 on success, 2 on bad input (one ``error:`` line)."""
    return run_verb(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
