"""Evaluate a policy once per configuration: results live under ``root/evals/<config hash>``."""

from __future__ import annotations

import dataclasses
import fcntl
from pathlib import Path
from typing import Any

from avl_lab.evaluation.config import EvalConfig, result_key
from avl_lab.evaluation.runner import evaluate


def evaluate_policy(base: EvalConfig, policy: dict[str, Any], root: Path) -> dict[str, Any]:
    """Evaluate ``policy`` with the rest of ``base``; a second call with the same configuration
    reads the finished results (and an interrupted one resumes).

    Returns ``score``, ``stored``, ``used``, ``n``, ``metric`` and ``out_dir``.
    """
    cfg = dataclasses.replace(base, policy=dict(policy), progress=False)
    cfg = dataclasses.replace(cfg, out_dir=str(Path(root) / "evals" / result_key(cfg)))
    lock = Path(f"{cfg.out_dir}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:  # one process at a time per configuration (sweep workers): the
        fcntl.flock(f, fcntl.LOCK_EX)  # next one waits, then reads the finished results
        s = evaluate(cfg)
    return {"score": s.score, "stored": s.stored, "used": s.used, "n": s.n, "metric": s.metric,
            "out_dir": cfg.out_dir}
