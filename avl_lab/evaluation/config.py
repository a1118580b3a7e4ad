"""Structured configs of an evaluation run: dataclasses are the schema, YAML and dotlists values."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avl_lab.errors import ConfigError

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "GenerationConfig", "ModelConfig",
           "load_config", "result_key", "validate"]


@dataclass
class ModelConfig:
    name: str = "tiny-random-llava"
    """`avl-tiny`, `tiny-random-<kind>` (see Models), a local checkpoint directory of a supported
    family, or a Hugging Face id already in the local cache (nothing is downloaded)."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    seed: int = 0
    """Seed of the random models."""


@dataclass
class DataConfig:
    name: str = "synth-docvqa"
    """A registered task (see Tasks)."""
    split: str = "eval"
    """Split to evaluate (`eval` works for every task; see Tasks)."""
    limit: int | None = None
    """Evaluate only the first N rows."""
    path: str | None = None
    """Local copy of a real benchmark (parquet files or a `save_to_disk` directory); not for the
    synthetic tasks."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    """Tokens generated per sample."""
    num_beams: int = 1
    """Beam width (1 = greedy)."""


@dataclass
class EvalConfig:
    """One evaluation: a model on a dataset under a KV-cache policy."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    policy: dict[str, Any] = field(default_factory=lambda: {"name": "full"})
    """Policy spec: `policy=avl policy.S=45 policy.C=30` (see Policies)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch_size: int = 8
    """Samples per generate call (left padding)."""
    out_dir: str = "runs/eval"
    """Output directory: samples.jsonl, summary.json, config.yaml; re-running resumes."""
    seed: int = 0
    """Seed of policies that draw random numbers."""
    accelerator: str = "auto"
    """Lightning accelerator: auto | cpu | gpu | cuda | mps."""
    devices: str = "auto"
    """Lightning devices: auto, a count (-1 = all), or a list of device ids such as `[0,1]`."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ddp_spawn, ... (any name Lightning registers)."""
    progress: bool = True
    """Show the Trainer's progress bar."""


SHORTHANDS = ("model", "data", "policy")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def load_config(
    overrides: list[str] | None = None, base: EvalConfig | dict | str | Path | None = None
) -> EvalConfig:
    """Merge the schema defaults, an optional base (config object, dict or YAML path) and
    ``key=value`` overrides (``model=X`` is ``model.name=X``, same for data and policy);
    validate types and values.

    Raises
    ------
    ConfigError
        Unknown key, wrong type or invalid value; the message names the key.
    """
    from avl_lab.cli.loader import load_structured

    if overrides is not None and isinstance(overrides, (str, bytes)):
        raise ConfigError(f"overrides must be a list of key=value strings, not {overrides!r}")
    cfg = load_structured(EvalConfig, list(overrides or []), base=base, shorthands=SHORTHANDS)
    validate(cfg)
    return cfg


def parse_devices(value: str) -> Any:
    """``devices`` as Lightning takes it: ``auto``, a count (``-1`` = all) or a list of ids."""
    import yaml

    try:
        parsed = yaml.safe_load(str(value))
    except yaml.YAMLError:
        parsed = None
    if parsed == "auto":
        return "auto"
    if isinstance(parsed, int) and not isinstance(parsed, bool) and (parsed >= 1 or parsed == -1):
        return parsed
    if (isinstance(parsed, list) and parsed
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in parsed)):
        return parsed
    raise ConfigError(f"`devices` must be auto, a count ≥ 1 (-1 = all), or a list of device ids "
                      f"such as [0,1]; got {value!r}")


def validate(cfg: EvalConfig) -> None:
    """Value checks that types alone cannot express (no file is touched, no model loaded)."""
    from avl_lab import data
    from avl_lab.evaluation.policy_spec import check_policy

    if not cfg.model.name.strip():
        raise ConfigError("`model.name` is empty; give `model=avl-tiny`, a tiny-random-<kind> name "
                          "or a checkpoint directory")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"`model.dtype` must be float32 | bfloat16 | float16, got {cfg.model.dtype!r}")
    if cfg.data.name not in data.names():
        raise ConfigError(f"`data.name`: unknown task {cfg.data.name!r}; registered: "
                          f"{', '.join(data.names())}")
    spec = data.get(cfg.data.name)
    try:
        spec.canonical_split(cfg.data.split)
    except ValueError as err:
        raise ConfigError(f"`data.split`: {err}") from None
    if cfg.data.path is not None and spec.kind != "benchmark":
        benchmarks = [n for n in data.names() if data.get(n).kind == "benchmark"]
        raise ConfigError(f"`data.path` is only for the real benchmarks ({', '.join(benchmarks)}); "
                          f"{cfg.data.name} is {spec.kind} data and reads no files")
    if cfg.data.path is not None and not Path(cfg.data.path).expanduser().is_dir():
        state = "is not a directory" if Path(cfg.data.path).exists() else "does not exist"
        raise ConfigError(f"`data.path` {cfg.data.path} {state}; give the directory of the local "
                          f"copy of {cfg.data.name}")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise ConfigError(f"`data.limit` must be ≥ 1 or null, got {cfg.data.limit}")
    if cfg.batch_size < 1:
        raise ConfigError(f"`batch_size` must be ≥ 1, got {cfg.batch_size}")
    if cfg.generation.max_new_tokens < 1:
        raise ConfigError(f"`generation.max_new_tokens` must be ≥ 1, got {cfg.generation.max_new_tokens}")
    if cfg.generation.num_beams < 1:
        raise ConfigError(f"`generation.num_beams` must be ≥ 1 (1 = greedy), got {cfg.generation.num_beams}")
    if not cfg.out_dir.strip():
        raise ConfigError("`out_dir` is empty; give a directory for the results")
    if cfg.accelerator not in ACCELERATORS:
        raise ConfigError(f"`accelerator` must be one of {' | '.join(ACCELERATORS)}, got {cfg.accelerator!r}")
    parse_devices(cfg.devices)
    if cfg.strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        known = StrategyRegistry.available_strategies()
        if cfg.strategy not in known:
            raise ConfigError(f"`strategy` must be auto or one of Lightning's: {', '.join(known)}; "
                              f"got {cfg.strategy!r}")
    check_policy(cfg.policy)


def to_dict(cfg: EvalConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def result_key(cfg: EvalConfig) -> str:
    """A hash of everything that determines the results (not where they go or how they run)."""
    d = to_dict(cfg)
    for k in ("out_dir", "accelerator", "devices", "strategy", "progress", "batch_size"):
        d.pop(k)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]
