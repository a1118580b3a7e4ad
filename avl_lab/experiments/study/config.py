"""Study definitions (``sweeps/*.yaml``), validated against a dataclass schema."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from avl_lab.errors import ConfigError
from avl_lab.evaluation.config import EvalConfig, load_config

PARAMS = ("S", "C", "K", "P", "T", "L")
OBJECTIVES = {"used": "minimize", "stored": "minimize", "score": "maximize"}
SAMPLERS = ("nsga2", "tpe", "random")
#: The paper's default configuration (Table 3), marked on the Pareto plot (L=0: every layer).
PAPER_DEFAULT = {"S": 45, "C": 30, "K": 3, "P": 90, "T": 50, "L": 0}
#: Parameters that are not percentages: their smallest allowed value.
_NOT_PERCENT = {"K": 1, "L": 0}


@dataclass
class RangeConfig:
    low: int = MISSING
    """Smallest value (percent for S/C/P/T, steps for K, a decoder layer for L)."""
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
    """One line on what the study measures."""
    eval: dict[str, Any] = field(default_factory=dict)
    """Evaluation settings with the keys of `python -m avl_lab.evaluate` (model, data, ...)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Policy parts held fixed, e.g. {K: 3}."""
    space: dict[str, RangeConfig] = field(default_factory=dict)
    """Searched parameters among S, C, K, P, T and L (the first decoder layer the policy acts
    in: ``layers: "L-"``; earlier layers keep and use every row); C ≤ S ≤ P is kept by clipping
    a searched S to P and a searched C to S (fixed values are never clipped: out-of-range ones
    are rejected)."""
    objectives: list[str] = field(default_factory=lambda: ["used", "score"])
    """Two or more of used (minimised), stored (minimised), score (maximised)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """The Optuna sampler."""
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
    here = Path(__file__).resolve().parents[3] / "sweeps"
    return here if here.is_dir() else Path.cwd() / "sweeps"


def study_names() -> list[str]:
    return sorted(p.stem for p in sweeps_dir().glob("*.yaml"))


def study_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"`study`: no study file {path}" + (" (a directory)" if path.exists()
                                                                  else ""))
        return path
    path = sweeps_dir() / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"`study`: unknown study {name!r}; studies in {sweeps_dir()}: "
                          f"{', '.join(study_names())} (or the path of a .yaml file)")
    return path


def load_study(name: str, overrides: list[str] | None = None) -> tuple[StudyConfig, EvalConfig]:
    """Load and validate a study; ``overrides`` use the evaluate CLI's keys.

    Returns the study and its base evaluation config (policy and out_dir are set per trial).

    Raises
    ------
    ConfigError, InputFileError
        The study file is malformed or a value is out of range (the message names the file
        and the key), or an override is invalid.
    """
    from avl_lab.cli.loader import load_structured, load_yaml

    path = study_path(name)
    cfg = load_structured(StudyConfig, base=load_yaml(path, "study file"), where=str(path))
    _validate(cfg, path)
    for key in ("policy", "out_dir"):
        if key in cfg.eval:
            raise ConfigError(f"{path}: `eval.{key}` is set by the sweep per trial; remove it "
                              "(fixed policy parts go in `fixed`)")
    try:
        base = load_config([], base=dict(cfg.eval))
    except ConfigError as err:
        raise ConfigError(f"{path}: `eval`: {err}") from None
    return cfg, load_config(list(overrides or []), base=base) if overrides else base


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fixed(cfg: StudyConfig, bad) -> None:
    """Fixed values in range, and never clipped by the searched ones (C ≤ S ≤ P for every trial)."""
    for key, value in cfg.fixed.items():
        if key in ("S", "C", "P", "T") and not (_number(value) and 0 < value <= 100):
            raise bad(f"fixed.{key}", f"must be a percentage in (0, 100], got {value!r}")
        if key in _NOT_PERCENT and not (isinstance(value, int) and not isinstance(value, bool)
                                        and value >= _NOT_PERCENT[key]):
            raise bad(f"fixed.{key}", f"must be an integer ≥ {_NOT_PERCENT[key]}, got {value!r}")
        if key == "layer" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise bad("fixed.layer", f"must be an integer ≥ 0, got {value!r}")

    def lowest(k: str) -> float | None:
        return cfg.fixed[k] if k in cfg.fixed else cfg.space[k].low if k in cfg.space else None

    def highest(k: str) -> float | None:
        return cfg.fixed[k] if k in cfg.fixed else cfg.space[k].high if k in cfg.space else None

    for small, big in (("C", "S"), ("S", "P")):
        if small in cfg.fixed and highest(big) is not None and cfg.fixed[small] > highest(big):
            raise bad(f"fixed.{small}", f"is {cfg.fixed[small]}, above every {big} the study can "
                      f"use (at most {highest(big)}); {small} ≤ {big} is required")
        if big in cfg.fixed and lowest(small) is not None and lowest(small) > cfg.fixed[big]:
            raise bad(f"fixed.{big}", f"is {cfg.fixed[big]}, below every {small} the study can "
                      f"use (at least {lowest(small)}); {small} ≤ {big} is required")


def _validate(cfg: StudyConfig, path: Path) -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{path}: `{key}` {msg}")

    if not cfg.name or not str(cfg.name).strip():
        raise bad("name", "is empty")
    _check_space(cfg, bad)
    _check_fixed(cfg, bad)
    _check_run(cfg, bad)


def _check_space(cfg: StudyConfig, bad: Callable[[str, str], ConfigError]) -> None:
    """The searched and fixed parameters: known, in range, and each with what it needs."""
    for key in cfg.space:
        if key not in PARAMS:
            raise bad(f"space.{key}", f"is not a searchable parameter; allowed: {list(PARAMS)}")
        if key in cfg.fixed:
            raise bad(f"space.{key}", "is also in `fixed`")
        r = cfg.space[key]
        lo, hi = (_NOT_PERCENT[key], 10**6) if key in _NOT_PERCENT else (1, 100)
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
    if "L" in params and not params & {"S", "P", "T"}:
        where = "space.L" if "L" in cfg.space else "fixed.L"
        raise bad(where, "needs S, P or T (searched or fixed): a layer scope alone is Full")


def _check_run(cfg: StudyConfig, bad: Callable[[str, str], ConfigError]) -> None:
    """Objectives, sampler, trial count and the workers' heartbeat settings."""
    if len(cfg.objectives) < 2 or any(o not in OBJECTIVES for o in cfg.objectives):
        raise bad("objectives", f"must be two or more of {list(OBJECTIVES)}, got {cfg.objectives}")
    if len(set(cfg.objectives)) != len(cfg.objectives):
        raise bad("objectives", f"has duplicates: {cfg.objectives}")
    if cfg.sampler.name not in SAMPLERS:
        raise bad("sampler.name", f"must be one of {list(SAMPLERS)}, got {cfg.sampler.name!r}")
    if cfg.sampler.population_size < 2:
        raise bad("sampler.population_size", f"must be ≥ 2, got {cfg.sampler.population_size}")
    if cfg.n_trials < 1:
        raise bad("n_trials", f"must be ≥ 1, got {cfg.n_trials}")
    if cfg.heartbeat_interval < 1:
        raise bad("heartbeat_interval", f"must be ≥ 1 second, got {cfg.heartbeat_interval}")
    if cfg.grace_period <= cfg.heartbeat_interval:
        raise bad("grace_period", f"must exceed `heartbeat_interval` ({cfg.heartbeat_interval}), "
                  f"got {cfg.grace_period}")
    if cfg.max_retry < 0:
        raise bad("max_retry", f"must be ≥ 0, got {cfg.max_retry}")


def check_layers(cfg: StudyConfig, num_layers: int | None, model: str, path: str = "study") -> None:
    """The first tiered layer ``L`` (searched or fixed) is a decoder layer of the model
    (``num_layers`` None: not known before the model is built; checked when it runs).

    Raises
    ------
    ConfigError
        ``L`` can reach a layer the model does not have (the message names the key).
    """
    if num_layers is None:
        return
    key, top = ("space.L", cfg.space["L"].high) if "L" in cfg.space else ("fixed.L", cfg.fixed.get("L"))
    if top is not None and top >= num_layers:
        raise ConfigError(f"{path}: `{key}` reaches layer {top}, but {model} has {num_layers} "
                          f"decoder layers (0..{num_layers - 1})")
