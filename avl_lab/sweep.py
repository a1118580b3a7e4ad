"""``python -m avl_lab.sweep --study NAME``: search A-VL's S/C/K/P/T for Pareto fronts.

Examples::

    python -m avl_lab.sweep --study docvqa_pareto
    python -m avl_lab.sweep --study docvqa_pareto --n-trials 8 model=tiny-random-llava data.limit=4
    python -m avl_lab.sweep --study docvqa_pareto --storage postgresql://user@host/db   # workers
    python -m avl_lab.sweep --study docvqa_pareto --report
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import optuna

from avl_lab.evaluation.config import ConfigError
from avl_lab.study import config as study_config
from avl_lab.study import driver, report


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m avl_lab.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--study", required=True, help=f"a study in sweeps/ ({', '.join(study_config.study_names())}) or a YAML path")
    p.add_argument("--n-trials", type=int, default=None, help="completed trials the study should hold in total")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in the output dir)")
    p.add_argument("--out", default=None, help="output directory (default: runs/sweeps/<study>)")
    p.add_argument("--report", action="store_true", help="only print and write the Pareto report")
    p.add_argument("--no-progress", action="store_true", help="hide Optuna's progress bar")
    p.add_argument("overrides", nargs="*", help="key=value overrides with the evaluate CLI's keys")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one Trainer per trial
    try:
        cfg, base = study_config.load_study(args.study, args.overrides)
        out = Path(args.out or f"runs/sweeps/{cfg.name}")
        if args.report:
            study = optuna.load_study(study_name=cfg.name, storage=args.storage or driver.default_storage(out))
        else:
            study = driver.run(cfg, base, out, args.storage, args.n_trials, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    df = report.write_report(study, cfg.objectives, out)
    full = study.user_attrs.get("full", {})
    print(f"study {cfg.name}: {len(df)} completed trials; full: score={full.get('score')} "
          f"stored={full.get('stored')} used={full.get('used')}")
    print("Pareto front:")
    print(report.front_table(df))
    print(f"wrote {out / 'pareto.csv'} and {out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
