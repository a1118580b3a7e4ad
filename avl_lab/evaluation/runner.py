"""``evaluate(cfg) -> Summary``: one model on one dataset under one policy, resumable."""

from __future__ import annotations

import json
import logging
import resource
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from avl_lab import models
from avl_lab.evaluation.config import ConfigError, EvalConfig, load_config, result_key, to_dict
from avl_lab.evaluation.datamodule import EvalDataModule
from avl_lab.evaluation.module import EvalModule
from avl_lab.evaluation.records import RecordLog
from avl_lab.evaluation.summary import Summary, summarize

log = logging.getLogger(__name__)


def _devices(value: str) -> Any:
    try:
        parsed = yaml.safe_load(str(value))
    except yaml.YAMLError:
        parsed = value
    return parsed if isinstance(parsed, (int, list)) else str(value)


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


def _check_out_dir(out: Path, cfg: EvalConfig) -> None:
    """Refuse to mix results of different configs in one ``out_dir``."""
    meta = out / "run.json"
    key = result_key(cfg)
    if meta.exists():
        old = json.loads(meta.read_text()).get("result_key")
        if old != key:
            raise ConfigError(
                f"`out_dir` {out} holds results of another configuration (key {old}, this one "
                f"{key}); use a new out_dir or delete the old one"
            )
    else:
        meta.write_text(json.dumps({"result_key": key}) + "\n")


def evaluate(cfg: EvalConfig | dict | str | Path | list[str] | None = None, **overrides: Any) -> Summary:
    """Evaluate and write ``samples.jsonl``, ``summary.json`` and ``config.yaml`` to ``out_dir``.

    Parameters
    ----------
    cfg : EvalConfig, dict, YAML path or list of ``key=value`` strings
        The run; ``overrides`` (``key=value`` as keyword arguments, dots as ``__``) on top.

    Re-running with the same ``out_dir`` resumes: samples already in ``samples.jsonl`` are not
    recomputed, and the summary is computed from the whole file.
    """
    dotlist = [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    if isinstance(cfg, list):
        cfg = load_config(cfg + dotlist)
    elif not isinstance(cfg, EvalConfig) or dotlist:
        cfg = load_config(dotlist, base=cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_out_dir(out, cfg)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    samples, skipped = RecordLog(out / "samples.jsonl"), RecordLog(out / "skipped.jsonl")
    samples.repair()
    skipped.repair()
    done = samples.ids() | skipped.ids()
    dm = EvalDataModule(cfg.data, cfg.batch_size, done)
    total = set(dm.load()["id"])
    rank = 0
    if total - done:
        model, processor = _load_model(cfg)
        module = EvalModule(model, processor, cfg, dm.metric, samples, skipped)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*LightningModule.configure_optimizers.*")
            warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
            trainer = L.Trainer(
                accelerator=cfg.accelerator, devices=_devices(cfg.devices), strategy=cfg.strategy,
                logger=False, enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=cfg.progress, use_distributed_sampler=False,
            )
            trainer.test(module, datamodule=dm, verbose=False)
        trainer.strategy.barrier()
        rank = trainer.global_rank
    records = [r for r in samples.read() if r["id"] in total]
    n_skipped = len(skipped.ids() & total)
    summary = summarize(records, dm.metric, n_skipped, to_dict(cfg), _peak_memory_mb())
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
