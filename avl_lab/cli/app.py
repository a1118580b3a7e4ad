"""How every verb runs: quiet output (one line per event, ``-v`` for more) and user errors as
one ``error:`` line with exit code 2."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from avl_lab.errors import USER_ERRORS

__all__ = ["checked", "output", "run_verb", "verbosity_of"]

#: Libraries whose INFO chatter (banners, tips, "GPU available") is hidden unless ``-v``.
THIRD_PARTY = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
               "optuna", "datasets", "torch", "huggingface_hub", "httpx", "urllib3",
               "matplotlib", "PIL", "fsspec", "filelock", "sqlalchemy", "numexpr")
#: Hidden unless ``-v``: deprecation notices of the libraries, not ours to fix per call.
QUIET_WARNINGS = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)
QUIET_MESSAGES = (".*does not have many workers.*", ".*LightningModule.configure_optimizers.*",
                  ".*isinstance.treespec, LeafSpec.*", ".*progress bar.*experimental.*",
                  ".*is experimental.*")


class _Format(logging.Formatter):
    """``message`` for INFO, ``warning: message`` for warnings (one line per event)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            msg += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        if record.levelno < logging.INFO:
            return f"{record.name}: {msg}"
        return msg


def verbosity_of(argv: Sequence[str]) -> int:
    """``-v``/``-vv``/``--verbose`` up, ``-q``/``--quiet`` down."""
    level = 0
    for a in argv:
        if a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}):
            level += 1 if a == "--verbose" else len(a) - 1
        elif a in ("-q", "--quiet"):
            level -= 1
    return level


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextmanager
def output(verbosity: int = 0) -> Iterator[None]:
    """Logging and warnings for one command; restores everything on exit.

    0: our INFO events, everyone's warnings (deprecations hidden), one line each;
    1: our DEBUG, the libraries' INFO and their deprecations; -1: warnings only.
    """
    import optuna

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    optuna.logging.disable_default_handler()  # through our handler, one format
    optuna.logging.enable_propagation()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    root = logging.getLogger()
    ours = logging.INFO if verbosity == 0 else logging.DEBUG if verbosity > 0 else logging.WARNING
    theirs = logging.INFO if verbosity > 0 else logging.WARNING
    levels = {"avl_lab": ours, "transformers": theirs if verbosity > 0 else logging.ERROR,
              **dict.fromkeys(THIRD_PARTY, theirs)}
    saved = {name: logging.getLogger(name).level for name in levels}
    saved_root, show = root.level, warnings.showwarning
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show
            # data.images logs each undecodable row; its CorruptImageWarning would repeat it
            warnings.filterwarnings("ignore", message="skipping row .*: cannot decode its image")
            if verbosity <= 0:
                for cat in QUIET_WARNINGS:
                    warnings.filterwarnings("ignore", category=cat)
                for msg in QUIET_MESSAGES:
                    warnings.filterwarnings("ignore", message=msg)
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.disable_propagation()
        optuna.logging.enable_default_handler()
        warnings.showwarning = show
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def run_verb(body: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``body(argv)`` with quiet output; a user error is one ``error:`` line, exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    with output(verbosity_of(args)):
        try:
            return body(args)
        except USER_ERRORS as err:
            text = str(err).strip() or type(err).__name__
            first, _, rest = text.partition("\n")
            print(f"error: {first}" + (f"\n{rest}" if rest else ""), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def checked(verb: str) -> int:
    """The end of a ``--check`` run: one line on stdout, exit code 0."""
    print(f"ok: the {verb} command is valid (--check: nothing was run or written)")
    return 0
