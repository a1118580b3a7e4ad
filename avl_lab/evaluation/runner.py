"""``evaluate(cfg) -> Summary``: one model on one dataset under one policy, resumable."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from avl_lab import models
from avl_lab.errors import ConfigError, InputFileError, UserError
from avl_lab.evaluation.config import (
    EvalConfig,
    load_config,
    parse_devices,
    result_key,
    to_dict,
    validate,
)
from avl_lab.evaluation.datamodule import EvalDataModule
from avl_lab.evaluation.module import UNREADABLE, EvalModule
from avl_lab.evaluation.preflight import (
    check_accelerator,
    check_out_dir,
    check_policy_fits,
    check_rows,
    make_out_dir,
    model_facts,
)
from avl_lab.evaluation.records import RecordLog
from avl_lab.evaluation.summary import Summary, summarize

log = logging.getLogger(__name__)


def _peak_memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


_MODEL_CACHE: dict[tuple, tuple] = {}


def _load_model(cfg: EvalConfig):
    """Load the model, reusing the last one in this process (sweeps evaluate many configs)."""
    key = (cfg.model.name, cfg.model.dtype, cfg.model.seed)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = models.load(cfg.model.name, dtype=cfg.model.dtype, seed=cfg.model.seed)
    return _MODEL_CACHE[key]


def _has_results(out: Path) -> bool:
    return (RecordLog(out / "samples.jsonl").has_records()
            or RecordLog(out / "skipped.jsonl").has_records() or (out / "summary.json").exists())


def check_results_owner(out: Path, cfg: EvalConfig) -> None:
    """Refuse an ``out`` that holds results of another configuration (nothing written: also
    what ``--check`` runs)."""
    meta, key = out / "run.json", result_key(cfg)
    old = None
    if meta.exists():
        try:
            old = json.loads(meta.read_text()).get("result_key")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            old = "(unreadable run.json)"
    if old is not None and old != key and _has_results(out):
        raise ConfigError(
            f"`out_dir` {out} holds results of another configuration (key {old}, this one "
            f"{key}); use a new out_dir or delete the old one"
        )


def _prepare_out_dir(out: Path, cfg: EvalConfig) -> list[Path]:
    """Create ``out``; refuse one that holds results of another configuration. Returns what
    this call created (removed again if the run fails before its first sample)."""
    created = [p for p in [out, *out.parents] if not p.exists()][::-1]
    check_results_owner(out, cfg)
    make_out_dir(out)
    key = result_key(cfg)
    for name, text in (("run.json", json.dumps({"result_key": key}) + "\n"),
                       ("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))):
        path = out / name
        if not path.exists():
            created.append(path)
        path.write_text(text)
    for name in ("samples.jsonl", "skipped.jsonl"):
        if not (out / name).exists():
            created.append(out / name)
    return created


def _undo(created: list[Path], samples: RecordLog) -> None:
    """A run that fails before its first scored sample leaves nothing behind (a corrected
    re-run, e.g. after repairing the images, starts clean); once samples exist, they and
    ``run.json`` stay, for resuming."""
    if samples.has_records():
        return
    for path in reversed(created):
        with contextlib.suppress(OSError):  # a directory someone else wrote into stays
            path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)


def _as_config(cfg: Any, overrides: dict[str, Any]) -> EvalConfig:
    dotlist = [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    if isinstance(cfg, (list, tuple)):
        return load_config([*cfg, *dotlist])
    if isinstance(cfg, str) and "=" in cfg and not Path(cfg).exists():
        raise ConfigError(f"overrides go in a list, e.g. evaluate([{cfg!r}]); {cfg!r} is no file")
    if isinstance(cfg, EvalConfig) and not dotlist:
        validate(cfg)
        return cfg
    return load_config(dotlist, base=cfg)


def _load_checked(cfg: EvalConfig):
    """The model, and a clear error for a checkpoint that does not load or does not fit."""
    try:
        model, processor = _load_model(cfg)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputFileError(f"`model.name` {cfg.model.name}: the checkpoint does not load "
                             f"({first})") from None
    from avl_lab.engine.families import family_of

    check_policy_fits(cfg.policy, len(family_of(model).decoder_layers(model)), cfg.model.name)
    return model, processor


def evaluate(cfg: EvalConfig | dict | str | Path | list[str] | None = None, **overrides: Any) -> Summary:
    """Evaluate and write ``samples.jsonl``, ``summary.json`` and ``config.yaml`` to ``out_dir``.

    Parameters
    ----------
    cfg : EvalConfig, dict, YAML path or list of ``key=value`` strings
        The run; ``overrides`` (``key=value`` as keyword arguments, dots as ``__``) on top.

    Re-running with the same ``out_dir`` resumes: samples already in ``samples.jsonl`` are not
    recomputed, and the summary is computed from the whole file.

    Raises
    ------
    ConfigError, InputFileError, FileNotFoundError
        Bad input (a key, a value, the output directory, a checkpoint, a dataset), found before
        any model is loaded where possible; nothing is written then. Also when no row could be
        scored (no summary with a NaN score is written).
    """
    cfg = _as_config(cfg, overrides)
    out = Path(cfg.out_dir).expanduser()
    check_out_dir(out)
    check_accelerator(cfg)
    layers, kind = model_facts(cfg)
    check_policy_fits(cfg.policy, layers, cfg.model.name, kind)
    dm = EvalDataModule(cfg.data, cfg.batch_size, set())
    ids = list(dm.load()["id"])
    check_rows(ids, cfg)
    total = set(ids)
    samples, skipped = RecordLog(out / "samples.jsonl"), RecordLog(out / "skipped.jsonl")
    samples.ids(), skipped.ids()  # a corrupt line is an error before anything is written
    created = _prepare_out_dir(out, cfg)
    try:
        samples.repair()
        skipped.repair()
        dm.done = done = samples.ids() | skipped.ids()
        rank = _run(cfg, dm, samples, skipped) if total - done else 0
        records = [r for r in samples.read() if r["id"] in total]
        reasons = Counter(r.get("reason", UNREADABLE) for r in skipped.read() if r["id"] in total)
        n_skipped = sum(reasons.values())
        if not records:
            why = "; ".join(f"{n}: {reason}" for reason, n in reasons.items())
            raise InputFileError(
                f"`data`: no row of {cfg.data.name} could be scored: all {n_skipped} were skipped "
                f"({why}; warned above); no summary written")
        summary = summarize(records, dm.metric, n_skipped, to_dict(cfg), _peak_memory_mb(),
                            skipped_reasons=dict(reasons))
    except BaseException:
        _undo(created, samples)
        raise
    bad = [k for k in ("score", "stored", "used") if not math.isfinite(getattr(summary, k))]
    if bad:
        raise InputFileError(f"{samples.path}: the summary's {', '.join(bad)} is not a number; "
                             "check the records (no summary written)")
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n")
    return summary


def _run(cfg: EvalConfig, dm: EvalDataModule, samples: RecordLog, skipped: RecordLog) -> int:
    """Generate the rows not yet done (Lightning ``Trainer.test``); returns the global rank."""
    model, processor = _load_checked(cfg)
    module = EvalModule(model, processor, cfg, dm.metric, samples, skipped)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LightningModule.configure_optimizers.*")
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
        trainer = L.Trainer(
            accelerator=cfg.accelerator, devices=parse_devices(cfg.devices), strategy=cfg.strategy,
            logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=cfg.progress, use_distributed_sampler=False,
        )
        try:
            trainer.test(module, datamodule=dm, verbose=False)
        except ConfigError as err:  # a policy that does not fit this data (e.g. its budget)
            raise ConfigError(f"`policy` ({cfg.policy.get('name')}): {err}") from None
    trainer.strategy.barrier()
    return trainer.global_rank
