"""Structured configs of an evaluation run: dataclasses are the schema, YAML and dotlists values."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


@dataclass
class ModelConfig:
    name: str = "tiny-random-llava"
    """`avl-tiny`, `tiny-random-llava`, `tiny-random-llava-next`, a local checkpoint directory or a
    Hugging Face id in the local cache."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    seed: int = 0
    """Seed of the random models."""


@dataclass
class DataConfig:
    name: str = "synth-docvqa"
    """A registered dataset (see `avl_lab.data.names()`)."""
    split: str = "eval"
    """Split to evaluate (`eval` works for every dataset)."""
    limit: int | None = None
    """Evaluate only the first N rows."""
    path: str | None = None
    """Local copy of a real benchmark (parquet files or a `save_to_disk` directory)."""


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
    """Policy spec: `policy=avl policy.S=45 policy.C=30` (see `avl_lab.policies.names()`)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch_size: int = 8
    """Samples per generate call (left padding)."""
    out_dir: str = "runs/eval"
    """Output directory: samples.jsonl, summary.json, config.yaml; re-running resumes."""
    seed: int = 0
    """Seed of policies that draw random numbers."""
    accelerator: str = "auto"
    """Lightning accelerator: auto | cpu | gpu."""
    devices: str = "auto"
    """Lightning devices: auto, a count, or a list such as `[0,1]`."""
    strategy: str = "auto"
    """Lightning strategy: auto | ddp | ddp_spawn ..."""
    progress: bool = True
    """Show the Trainer's progress bar."""


_SHORTHANDS = ("model", "data", "policy")


def _expand_shorthands(overrides: list[str]) -> list[str]:
    """``model=X`` → ``model.name=X`` (same for data and policy)."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        out.append(f"{key}.name={value}" if key in _SHORTHANDS else item)
    return out


def load_config(
    overrides: list[str] | None = None, base: EvalConfig | dict | str | Path | None = None
) -> EvalConfig:
    """Merge the schema defaults, an optional base (config object, dict or YAML path) and
    ``key=value`` overrides; validate types and values.

    Raises
    ------
    ConfigError
        Unknown key, wrong type or invalid value; the message names the key.
    """
    schema = OmegaConf.structured(EvalConfig)
    try:
        layers: list[Any] = [schema]
        if isinstance(base, (str, Path)):
            layers.append(OmegaConf.load(base))
        elif isinstance(base, EvalConfig):
            layers.append(OmegaConf.structured(base))
        elif base is not None:
            layers.append(OmegaConf.create(base))
        if overrides:
            layers.append(OmegaConf.from_dotlist(_expand_shorthands(list(overrides))))
        merged = OmegaConf.merge(*layers)
        cfg: EvalConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        msg = str(err).splitlines()[0]
        raise ConfigError(
            f"invalid config key `{key}`: {msg} Allowed keys: {', '.join(allowed_keys())}"
        ) from None
    validate(cfg)
    return cfg


def validate(cfg: EvalConfig) -> None:
    """Value checks that types alone cannot express."""
    from avl_lab import data, models, policies

    if cfg.data.name not in data.names():
        raise ConfigError(f"`data.name` must be one of {data.names()}, got {cfg.data.name!r}")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise ConfigError(f"`data.limit` must be ≥ 1 or null, got {cfg.data.limit}")
    if cfg.batch_size < 1:
        raise ConfigError(f"`batch_size` must be ≥ 1, got {cfg.batch_size}")
    if cfg.generation.max_new_tokens < 1:
        raise ConfigError(f"`generation.max_new_tokens` must be ≥ 1, got {cfg.generation.max_new_tokens}")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"`model.dtype` must be float32 | bfloat16 | float16, got {cfg.model.dtype!r}")
    if "name" not in cfg.policy:
        raise ConfigError(f"`policy.name` is required; registered policies: {policies.names()}")
    try:
        policies.build(dict(cfg.policy))
    except ValueError as err:
        raise ConfigError(f"`policy`: {err}") from None
    del models  # model names are checked when loading (local paths are allowed)


def allowed_keys(cls: type = EvalConfig, prefix: str = "") -> list[str]:
    """Dotted keys of the schema (for error messages and ``--help``)."""
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = {"ModelConfig": ModelConfig, "DataConfig": DataConfig,
                   "GenerationConfig": GenerationConfig}[str(f.type).split(".")[-1]]
            keys += allowed_keys(sub, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def to_dict(cfg: EvalConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: EvalConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def result_key(cfg: EvalConfig) -> str:
    """A hash of everything that determines the results (not where they go or how they run)."""
    d = to_dict(cfg)
    for k in ("out_dir", "accelerator", "devices", "strategy", "progress", "batch_size"):
        d.pop(k)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def as_dictconfig(cfg: EvalConfig) -> DictConfig:
    return OmegaConf.structured(cfg)
