"""Study definitions (``sweeps/*.yaml``), validated against a dataclass schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from avl_lab.evaluation.config import ConfigError, EvalConfig, load_config

PARAMS = ("S", "C", "K", "P", "T")
OBJECTIVES = {"used": "minimize", "stored": "minimize", "score": "maximize"}
SAMPLERS = ("nsga2", "tpe", "random")
#: The paper's default configuration (Table 3), marked on the Pareto plot.
PAPER_DEFAULT = {"S": 45, "C": 30, "K": 3, "P": 90, "T": 50}


@dataclass
class RangeConfig:
    low: int = MISSING
    """Smallest value (percent for S/C/P/T, steps for K)."""
    high: int = MISSING
    """Largest value."""
    step: int = 1
    """Grid step."""


@dataclass
class SamplerConfig:
    name: str = "nsga2"
    """nsga2 | tpe | random."""
    seed: int = 0
    """Seed of the sampler."""
    population_size: int = 8
    """NSGA-II population size."""


@dataclass
class StudyConfig:
    """An Optuna study over A-VL's parameters."""

    name: str = MISSING
    """Study name (also the Optuna study name)."""
    description: str = ""
    eval: dict[str, Any] = field(default_factory=dict)
    """Evaluation settings with the keys of `python -m avl_lab.evaluate` (model, data, ...)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Policy parts held fixed, e.g. {K: 3}."""
    space: dict[str, RangeConfig] = field(default_factory=dict)
    """Searched parameters among S, C, K, P, T; C ≤ S ≤ P is enforced by clipping."""
    objectives: list[str] = field(default_factory=lambda: ["used", "score"])
    """Two or more of used (minimised), stored (minimised), score (maximised)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    n_trials: int = 24
    """Completed trials the study should hold in total."""
    heartbeat_interval: int = 10
    """Seconds between a running trial's heartbeats."""
    grace_period: int = 30
    """A running trial without a heartbeat for this long is failed and retried."""
    max_retry: int = 3
    """How often a failed trial is retried."""


def sweeps_dir() -> Path:
    """The ``sweeps/`` folder: next to the package (a checkout), else the current directory."""
    here = Path(__file__).resolve().parents[2] / "sweeps"
    return here if here.is_dir() else Path.cwd() / "sweeps"


def study_names() -> list[str]:
    return sorted(p.stem for p in sweeps_dir().glob("*.yaml"))


def study_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = sweeps_dir() / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown study {name!r}; studies in {sweeps_dir()}: {study_names()}")
    return path


def load_study(name: str, overrides: list[str] | None = None) -> tuple[StudyConfig, EvalConfig]:
    """Load and validate a study; ``overrides`` use the evaluate CLI's keys.

    Returns the study and its base evaluation config (policy and out_dir are set per trial).
    """
    path = study_path(name)
    try:
        cfg: StudyConfig = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(StudyConfig), OmegaConf.load(path))
        )  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{path}: invalid key `{key}`: {str(err).splitlines()[0]}") from None
    _validate(cfg, path)
    try:
        base = load_config(list(overrides or []), base=dict(cfg.eval))
    except ConfigError as err:
        raise ConfigError(f"{path}: `eval` or override: {err}") from None
    return cfg, base


def _validate(cfg: StudyConfig, path: Path) -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{path}: `{key}` {msg}")

    for key in cfg.space:
        if key not in PARAMS:
            raise bad(f"space.{key}", f"is not a searchable parameter; allowed: {list(PARAMS)}")
        if key in cfg.fixed:
            raise bad(f"space.{key}", "is also in `fixed`")
        r = cfg.space[key]
        lo, hi = (1, 10**6) if key == "K" else (1, 100)
        if not lo <= r.low <= r.high <= hi:
            raise bad(f"space.{key}", f"needs {lo} ≤ low ≤ high ≤ {hi}, got low={r.low} high={r.high}")
        if r.step < 1:
            raise bad(f"space.{key}.step", f"must be ≥ 1, got {r.step}")
    for key in cfg.fixed:
        if key not in (*PARAMS, "layer"):
            raise bad(f"fixed.{key}", f"is not an A-VL parameter; allowed: {[*PARAMS, 'layer']}")
    params = set(cfg.space) | set(cfg.fixed)
    if not cfg.space:
        raise bad("space", "is empty: nothing to search")
    if "C" in params and "S" not in params:
        raise bad("space.C", "needs S (searched or fixed)")
    if "K" in params and "C" not in params:
        raise bad("space.K", "needs C (searched or fixed)")
    if len(cfg.objectives) < 2 or any(o not in OBJECTIVES for o in cfg.objectives):
        raise bad("objectives", f"must be two or more of {list(OBJECTIVES)}, got {cfg.objectives}")
    if len(set(cfg.objectives)) != len(cfg.objectives):
        raise bad("objectives", f"has duplicates: {cfg.objectives}")
    if cfg.sampler.name not in SAMPLERS:
        raise bad("sampler.name", f"must be one of {list(SAMPLERS)}, got {cfg.sampler.name!r}")
    if cfg.n_trials < 1:
        raise bad("n_trials", f"must be ≥ 1, got {cfg.n_trials}")
