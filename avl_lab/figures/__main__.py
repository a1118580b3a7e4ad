"""``python -m avl_lab.figures {fig9,fig10,table} [key=value ...]``.

Keys: the evaluate CLI's (``model=...``, ``data=...``, ``data.limit=16``, ...), ``out=DIR`` and
grids such as ``grid.S=[10,40,100]`` (see :class:`avl_lab.figures.Grids`). ``table`` (the
paper's Table 2/3 over the embedded tasks) takes ``tasks=[synth-ocr,easy-vqa]`` instead of
``data=``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from avl_lab.evaluation.config import ConfigError, load_config
from avl_lab.figures.run import run_figure
from avl_lab.figures.specs import FIGURES, Grids
from avl_lab.figures.table import run_table
from avl_lab.models import default_model

COMMANDS = [*FIGURES, "table"]


def split_args(argv: list[str]) -> tuple[list[str], list[str], str | None]:
    """``(evaluate overrides, grid overrides, out)`` from ``key=value`` arguments."""
    eval_args, grid_args, out = [], [], None
    for a in argv:
        if a.startswith("grid."):
            grid_args.append(a[len("grid."):])
        elif a.startswith("tasks="):
            grid_args.append(a)
        elif a.startswith("out="):
            out = a[len("out="):]
        else:
            eval_args.append(a)
    return eval_args, grid_args, out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m avl_lab.figures {{{','.join(COMMANDS)}}} [key=value ...]\n{__doc__}",
              file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    eval_args, grid_args, out = split_args(rest)
    try:
        new_tokens = 32 if name == "table" else 16  # synth-ocr answers run to 17 tokens
        base = load_config([f"model={default_model()}", "data=synth-docvqa", "data.limit=32",
                            f"generation.max_new_tokens={new_tokens}", *eval_args])
        extra = OmegaConf.from_dotlist(grid_args)
        tasks = extra.pop("tasks", None)
        grids = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Grids), extra))
    except (ConfigError, Exception) as err:  # OmegaConf errors name the grid key
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        target = Path(out or f"runs/figures/{name}")
        if name == "table":
            df = run_table(base, target, None if tasks is None else [str(t) for t in tasks])
        else:
            df = run_figure(name, base, grids, target)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(df.drop(columns=["out_dir"]).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
