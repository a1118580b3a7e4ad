"""``python -m avl_lab sweep --study NAME``: Pareto fronts of cache used vs quality, for A-VL's
S/C/K/P/T or any registered policy's fields, one method or several side by side.

Examples::

    python -m avl_lab.sweep --study docvqa_pareto
    python -m avl_lab.sweep --study docvqa_pareto --n-trials 8 model=tiny-random-llava data.limit=4
    python -m avl_lab.sweep --study docvqa_pareto --storage postgresql://user@host/db   # workers
    python -m avl_lab.sweep --study docvqa_pareto --report
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import MISSING

from avl_lab.cli.app import checked, run_verb
from avl_lab.cli.args import parse_argv
from avl_lab.cli.config_file import with_config_file
from avl_lab.cli.helptext import Section, help_text
from avl_lab.cli.loader import load_structured, split_keys
from avl_lab.errors import ConfigError
from avl_lab.evaluation.config import EvalConfig

if TYPE_CHECKING:
    from avl_lab.experiments.study.config import StudyConfig

__all__ = ["SweepArgs", "main"]


@dataclass
class SweepArgs:
    """What ``sweep`` takes besides the evaluation keys (each also a ``--flag``)."""

    study: str = MISSING
    """A study in sweeps/ (docvqa_pareto, ...) or the path of a study YAML file."""
    n_trials: int | None = None
    """Completed trials the study should hold in total (default: the study's `n_trials`); a
    re-run after a crash runs only what is missing."""
    storage: str | None = None
    """Optuna storage URL, e.g. postgresql://user@host/db for several workers (default: SQLite
    in out_dir)."""
    out_dir: str | None = None
    """Output directory: study.db, evals/, pareto.csv, pareto.png (default: runs/sweeps/<study>);
    `--out` is the same."""
    report: bool = False
    """Only print and write the Pareto report of the trials already in the study."""
    progress: bool = True
    """Show Optuna's progress bar (`--no-progress` hides it)."""


#: Evaluation keys a sweep takes on top of the study's `eval` (the policy is chosen per trial,
#: the output directory and progress bar are the sweep's own).
SET_BY_SWEEP = {"policy": "the policy is set per trial by the study (fixed parts go in the "
                          "study's `fixed`, searched ones in its `space`)"}


def usage() -> str:
    from avl_lab.experiments.study.config import StudyConfig, study_names

    return help_text(
        "python -m avl_lab sweep --study NAME [--n-trials N] [--storage URL] [--report] "
        "[key=value ...]",
        "An Optuna multi-objective study over a registered policy's fields, or several methods "
        "each with its own space (minimise cache used, maximise the task score); prints and saves "
        "each method's Pareto front with bootstrap intervals (pareto.csv, methods.csv, paired.csv, "
        f"pareto.png). Studies: {', '.join(study_names())}.",
        [Section("Sweep keys (also --study, --n-trials, --storage, --out, --report, "
                 "--no-progress)", SweepArgs),
         Section("Evaluation keys (override the study's `eval`)", EvalConfig,
                 skip=("policy", "out_dir", "progress")),
         Section("Study file keys (sweeps/*.yaml)", StudyConfig)],
        ["`policy` cannot be overridden: " + SET_BY_SWEEP["policy"] + "."],
    )


def split(dotlist: list[str]) -> tuple[SweepArgs, list[str]]:
    """``(sweep args, evaluation overrides)`` of a dotlist."""
    own, rest = split_keys(dotlist, SweepArgs, EvalConfig, SET_BY_SWEEP)
    sweep: SweepArgs = load_structured(SweepArgs, own)
    if sweep.n_trials is not None and sweep.n_trials < 1:
        raise ConfigError(f"`n_trials` (--n-trials) must be ≥ 1, got {sweep.n_trials}")
    return sweep, rest


def configure(dotlist: list[str]) -> tuple[SweepArgs, StudyConfig, EvalConfig]:
    """The sweep's args, its study and the study's evaluation config with the overrides."""
    from avl_lab.experiments.study.config import load_study

    sweep, overrides = split(dotlist)
    return sweep, *load_study(sweep.study, overrides)


def _main(argv: list[str]) -> int:
    args = parse_argv(argv, bool_keys=("report", "progress"), positional=("study",))
    if args.help:
        print(usage())
        return 0
    from avl_lab.evaluation.preflight import check_model, check_out_dir, preflight
    from avl_lab.experiments.study import config as study_config
    from avl_lab.experiments.study import driver, report
    from avl_lab.experiments.study.methods import corner_policies, resolve

    sweep, cfg, base = with_config_file(configure, args.dotlist)
    out = Path(sweep.out_dir or f"runs/sweeps/{cfg.name}")
    check_out_dir(out)
    report.check_owner(out, cfg.name)  # another study's report there is not overwritten
    url = driver.storage_url(sweep.storage, out)  # checked before any evaluation runs
    if not sweep.report:  # model files, data, the layers: before the storage is written
        where = str(study_config.study_path(sweep.study))
        preflight(base, [p for m in resolve(cfg, where) for p in corner_policies(m)])
        study_config.check_layers(cfg, check_model(base), base.model.name, where)
    if args.check:
        if not sweep.report:
            driver.check_stored(cfg, base, out, sweep.storage)
        return checked("sweep")
    if sweep.report:
        studies = driver.load_existing(cfg, url)
    else:
        studies = driver.run(cfg, base, out, sweep.storage, sweep.n_trials, progress=sweep.progress)
    _print(report.write_report(studies, cfg, out), studies, cfg, out)
    return 0


def _print(rep, studies, cfg, out: Path) -> None:
    """The report on stdout: full, each method's front, and the tables with intervals."""
    from avl_lab.experiments.study import report

    first = studies[0][1]
    full = first.user_attrs.get("full", {})
    metric = first.user_attrs.get("metric", "score")
    print(f"study {cfg.name}: {len(rep.trials)} completed trials; full: score={full.get('score')} "
          f"({metric}) stored={full.get('stored')} used={full.get('used')}")
    print("Pareto front:" if len(studies) == 1 else "Pareto fronts:")
    shown = rep.trials.drop(columns=["score_lo", "score_hi"]) if rep.samples is None else rep.trials
    print(report.front_table(shown))
    if rep.samples is not None:
        b = cfg.bootstrap
        print(f"intervals: {b.level:.0%} percentile bootstrap, {b.resamples} resamples of the "
              f"{rep.samples} samples (seed {b.seed}), paired across trials and methods")
        print(rep.methods.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        if len(rep.paired):
            print("paired differences (method - baseline; best score with used <= budget):")
            print(rep.paired.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    files = ["pareto.csv", "methods.csv", *(["paired.csv"] if len(rep.paired) else []), "pareto.png"]
    print(f"wrote {', '.join(str(out / f) for f in files)}")


def main(argv: list[str] | None = None) -> int:
    """``python -m avl_lab sweep``: 0 on success, 2 on bad input (one ``error:`` line)."""
    return run_verb(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
