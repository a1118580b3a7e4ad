"""``python -m avl_lab figures {fig9,fig10,table} [key=value ...]``: the paper's parameter
studies (Figure 9: S, core vs evict, K; Figure 10: P, T) and its Table 2/3, each point a cached,
resumable evaluation; a tidy CSV and a seaborn PNG (or ``table.md``) in ``out_dir``."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from avl_lab.cli.app import checked, run_verb
from avl_lab.cli.args import parse_argv
from avl_lab.cli.config_file import with_config_file
from avl_lab.cli.helptext import Section, help_text
from avl_lab.cli.loader import load_structured, split_keys
from avl_lab.errors import ConfigError
from avl_lab.evaluation.config import EvalConfig, load_config
from avl_lab.experiments.figures.specs import FIGURES, Grids

__all__ = ["FiguresArgs", "main"]

COMMANDS = [*FIGURES, "table"]


@dataclass
class FiguresArgs:
    """What ``figures`` takes besides the evaluation keys."""

    figure: str = MISSING
    """fig9 | fig10 | table (the first bare word)."""
    out_dir: str | None = None
    """Output directory: <figure>.csv, <figure>.png (table.md), evals/ (default:
    runs/figures/<figure>); `out=` is a deprecated spelling."""
    grid: Grids = field(default_factory=Grids)
    """fig9 / fig10: the parameter grids."""
    tasks: list[str] | None = None
    """table: the task columns (default: the embedded tasks)."""
    methods: list[str] | None = None
    """table: the rows to run, by label (default: every row; see the table's methods)."""
    progress: bool = True
    """Show a progress bar over the points."""


#: Evaluation keys a figure sets itself.
SET_BY_FIGURES = {"policy": "each point of a figure sets its own policy",
                  "progress": "the figure's own `progress` is used"}


def usage() -> str:
    return help_text(
        "python -m avl_lab figures {fig9,fig10,table} [key=value ...]",
        __doc__.split("\n\n")[0].split(": ", 1)[1],
        [Section("Figure keys", FiguresArgs, skip=("figure",)),
         Section("Evaluation keys (defaults: model=avl-tiny data=synth-docvqa data.limit=32 "
                 "generation.max_new_tokens=16, 32 for table)", EvalConfig,
                 skip=("policy", "out_dir", "progress"))],
        ["table takes tasks=[...] instead of data=; fig9/fig10 take grid.* (e.g. grid.S=[10,50])."],
    )


def configure(dotlist: list[str]) -> tuple[FiguresArgs, EvalConfig]:
    """``(figure args, the evaluation config every point starts from)``; nothing is written."""
    own, rest = split_keys(dotlist, FiguresArgs, EvalConfig, SET_BY_FIGURES)
    fig: FiguresArgs = load_structured(FiguresArgs, own)
    if fig.figure not in COMMANDS:
        raise ConfigError(f"`figure`: unknown figure {fig.figure!r}; choose one of {', '.join(COMMANDS)}")
    is_table = fig.figure == "table"
    keys = [item.partition("=")[0] for item in dotlist]
    if is_table and any(k == "grid" or k.startswith("grid.") for k in keys):
        raise ConfigError("`grid` is not taken by table (it evaluates fixed methods); use tasks=[...]")
    if is_table and any(k in ("data", "data.name", "data.path") for k in keys):
        raise ConfigError("`data` is not taken by table: it runs every task in `tasks`; give "
                          "tasks=[synth-docvqa,...] (data.limit and data.split still apply)")
    for key in ("tasks", "methods"):
        if not is_table and (key in keys or any(k.startswith(f"{key}.") for k in keys)):
            raise ConfigError(f"`{key}` is only taken by table; {fig.figure} runs one task (data=...)")
    if fig.methods is not None:
        from avl_lab.experiments.figures.table import METHODS

        unknown = [m for m in fig.methods if m not in METHODS]
        if not fig.methods or unknown:
            raise ConfigError(f"`methods` must list rows of the table, got {unknown or '[]'}; "
                              f"rows: {', '.join(METHODS)}")
    from avl_lab import data
    from avl_lab.models import default_model

    if fig.tasks is not None:
        unknown = [t for t in fig.tasks if t not in data.names()]
        if not fig.tasks or unknown:
            raise ConfigError(f"`tasks` must list registered tasks, got {unknown or '[]'}; "
                              f"registered: {', '.join(data.names())}")
    new_tokens = 32 if is_table else 16  # synth-ocr answers run to 17 tokens
    base = load_config([f"model={default_model()}", "data=synth-docvqa", "data.limit=32",
                        f"generation.max_new_tokens={new_tokens}", *rest])
    return fig, base


def _main(argv: list[str]) -> int:
    args = parse_argv(argv, bool_keys=("progress",), positional=("figure",))
    if args.help:
        print(usage())
        return 0
    from avl_lab.evaluation.preflight import check_out_dir, preflight
    from avl_lab.experiments.figures.table import TASKS

    fig, base = with_config_file(configure, args.dotlist)
    is_table = fig.figure == "table"
    target = Path(fig.out_dir or f"runs/figures/{fig.figure}")
    check_out_dir(target)
    for task in (fig.tasks or TASKS) if is_table else [base.data.name]:
        preflight(dataclasses.replace(base, data=dataclasses.replace(base.data, name=task)))
    if args.check:
        return checked("figures")
    if is_table:
        from avl_lab.experiments.figures.table import run_table

        df = run_table(base, target, fig.tasks, progress=fig.progress, methods=fig.methods)
    else:
        from avl_lab.experiments.figures.run import run_figure

        df = run_figure(fig.figure, base, fig.grid, target, progress=fig.progress)
    print(df.drop(columns=["out_dir"]).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m avl_lab figures``: 0 on success, 2 on bad input (one ``error:`` line)."""
    return run_verb(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
