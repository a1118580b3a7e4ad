"""``python -m avl_lab train [key=value ...]``: train and export ``avl-tiny``.

Examples::

    python -m avl_lab train max_minutes=95 out_dir=runs/train/avl-tiny
    python -m avl_lab train max_steps=20 model.num_hidden_layers=2 export_dir=/tmp/tiny
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from avl_lab.cli.app import checked, run_verb
from avl_lab.cli.args import parse_argv
from avl_lab.cli.config_file import with_config_file
from avl_lab.cli.helptext import Section, help_text
from avl_lab.errors import ConfigError
from avl_lab.train.config import TASKS, TrainConfig, load_train_config

__all__ = ["main"]

BOOL_KEYS = ("resume", "export", "export_only", "progress")


def usage() -> str:
    return help_text(
        "python -m avl_lab train [key=value ...]",
        "Train the embedded avl-tiny (a LLaVA-architecture model) with Lightning on the "
        f"synthetic tasks ({', '.join(TASKS)}); resumable from out_dir, exported with "
        "save_pretrained.",
        [Section("Keys", TrainConfig)],
        ["Flags: --resume/--no-resume, --export/--no-export, --export-only, "
         "--progress/--no-progress."],
        with_registries=False,
    )


def check_paths(cfg: TrainConfig) -> None:
    """The directories the run reads and writes, before anything is built."""
    from avl_lab.evaluation.preflight import check_out_dir

    check_out_dir(cfg.out_dir)
    if cfg.export_dir:
        check_out_dir(cfg.export_dir, "export_dir")
    if cfg.init_from and not (cfg.init_path() / "config.json").is_file():
        raise ConfigError(f"`init_from` {cfg.init_from}: no saved model (config.json) there")
    last = Path(cfg.out_dir) / "checkpoints" / "last.ckpt"
    if cfg.export_only and not last.is_file():
        raise ConfigError(f"`export_only` needs a checkpoint, none at {last}")


def configure(dotlist: list[str]) -> TrainConfig:
    """The validated config of a run, its paths checked; nothing is written."""
    cfg = load_train_config(dotlist)
    check_paths(cfg)
    return cfg


def _main(argv: list[str]) -> int:
    args = parse_argv(argv, bool_keys=BOOL_KEYS)
    if args.help:
        print(usage())
        return 0
    cfg = with_config_file(configure, args.dotlist)
    if args.check:
        return checked("train")
    from avl_lab.train.run import train

    summary = train(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m avl_lab train``: 0 on success, 2 on bad input (one ``error:`` line)."""
    return run_verb(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
