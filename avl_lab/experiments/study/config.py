"""Study definitions (``sweeps/*.yaml``), validated against a dataclass schema.

A study searches one registered policy (``policy`` + ``space``, the fields it searches, and
``fixed``, those it holds) or several (``methods``: one entry per method, each with its own
policy, space and trial budget); :mod:`avl_lab.experiments.study.methods` checks each space
against its policy's dataclass fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from avl_lab.errors import ConfigError
from avl_lab.evaluation.config import EvalConfig, load_config

OBJECTIVES = {"used": "minimize", "stored": "minimize", "score": "maximize"}
SAMPLERS = ("nsga2", "tpe", "random")


@dataclass
class DimConfig:
    """One searched field: a range (``low``, ``high``, ``step``, ``log``) or ``choices``."""

    low: Any = None
    """Smallest value. Integer low, high and step search integers; any float searches floats."""
    high: Any = None
    """Largest value."""
    step: Any = None
    """Grid step (integers: 1 by default; floats: continuous by default)."""
    log: bool = False
    """Sample on a log scale (low > 0, no step)."""
    choices: list[Any] | None = None
    """The values of a categorical dimension (instead of a range)."""
    type: str | None = None
    """int | float | categorical; inferred from the values when unset."""


@dataclass
class MethodConfig:
    """One method of a multi-method study (an entry of ``methods``)."""

    policy: str = MISSING
    """The registered policy searched (plugins included)."""
    space: dict[str, DimConfig] = field(default_factory=dict)
    """Searched fields of the policy (and `L`, the first decoder layer it acts in)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Fields held fixed."""
    relations: list[str] = field(default_factory=list)
    """Clipping relations such as "C <= S", applied in order."""
    reference: dict[str, Any] | None = None
    """A point marked on the plot (e.g. the method's paper default)."""
    n_trials: int | None = None
    """Completed trials of this method (default: the study's `n_trials`)."""


@dataclass
class SamplerConfig:
    name: str = "nsga2"
    """nsga2 | tpe | random."""
    seed: int = 0
    """Seed of the sampler."""
    population_size: int = 8
    """NSGA-II population size."""


@dataclass
class BootstrapConfig:
    """Intervals of the report: resampling the evaluated samples, jointly across trials."""

    resamples: int = 1000
    """Bootstrap resamples (0: no intervals)."""
    seed: int = 0
    """Seed of the resampling."""
    level: float = 0.95
    """Coverage of the percentile intervals."""
    budgets: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    """Cache-used budgets at which methods are compared (best score with used ≤ budget)."""
    baseline: str | None = None
    """The method the others are compared with (default: the first)."""


@dataclass
class StudyConfig:
    """An Optuna study over the fields of one registered policy, or of several (`methods`)."""

    name: str = MISSING
    """Study name (also the Optuna study name)."""
    description: str = ""
    """One line on what the study measures."""
    plugins: list[str] = field(default_factory=list)
    """Plugins to import first (module names or .py paths, relative to this file's folder)."""
    eval: dict[str, Any] = field(default_factory=dict)
    """Evaluation settings with the keys of `python -m avl_lab.evaluate` (model, data, ...)."""
    policy: str | None = None
    """The registered policy searched (default avl); not with `methods`."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Policy fields held fixed, e.g. {K: 3}."""
    space: dict[str, DimConfig] = field(default_factory=dict)
    """Searched policy fields: {low, high, step, log} or {choices}; `L` is the first decoder layer
    the policy acts in (`layers: "L-"`; earlier layers keep and use every row)."""
    relations: list[str] = field(default_factory=list)
    """Clipping relations between fields, in order: "S <= P" clips a trial's S to its P (A-VL's
    studies keep C ≤ S ≤ P with [S <= P, C <= S]); a fixed value that every trial would clip is
    an error."""
    reference: dict[str, Any] | None = None
    """A point marked on the plot, e.g. the paper's default {S: 45, C: 30, K: 3, P: 90, T: 50}."""
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    """Several methods, each with its own policy, space and trial budget (one Optuna study each,
    named <study>/<method>); the report draws one front per method."""
    objectives: list[str] = field(default_factory=lambda: ["used", "score"])
    """Two or more of used (minimised), stored (minimised), score (maximised)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """The Optuna sampler (one per method)."""
    n_trials: int = 24
    """Completed trials the study (each method) should hold in total."""
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    """Intervals of the report (paired across trials and methods)."""
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
    """Load and validate a study (its plugins imported first); ``overrides`` use the evaluate
    CLI's keys.

    Returns the study and its base evaluation config (policy and out_dir are set per trial).

    Raises
    ------
    ConfigError, InputFileError
        The study file is malformed, a plugin fails, or a value is out of range (the message
        names the file and the key), or an override is invalid.
    """
    from avl_lab import plugins
    from avl_lab.cli.loader import load_structured, load_yaml
    from avl_lab.experiments.study.methods import resolve

    path = study_path(name)
    cfg = load_structured(StudyConfig, base=load_yaml(path, "study file"), where=str(path))
    try:
        plugins.load(cfg.plugins, base=path.resolve().parent)
    except plugins.PluginError as err:
        raise plugins.PluginError(f"{path}: {err}") from None
    _validate(cfg, path)
    resolve(cfg, str(path))
    for key in ("policy", "out_dir"):
        if key in cfg.eval:
            raise ConfigError(f"{path}: `eval.{key}` is set by the sweep per trial; remove it "
                              "(fixed policy parts go in `fixed`)")
    try:
        base = load_config([], base=dict(cfg.eval))
    except ConfigError as err:
        raise ConfigError(f"{path}: `eval`: {err}") from None
    return cfg, load_config(list(overrides or []), base=base) if overrides else base


def _validate(cfg: StudyConfig, path: Path) -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{path}: `{key}` {msg}")

    if not cfg.name or not str(cfg.name).strip():
        raise bad("name", "is empty")
    _check_run(cfg, bad)


def _check_run(cfg: StudyConfig, bad: Callable[[str, str], ConfigError]) -> None:
    """Objectives, sampler, trial count, intervals and the workers' heartbeat settings."""
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
    b = cfg.bootstrap
    if b.resamples < 0:
        raise bad("bootstrap.resamples", f"must be ≥ 0 (0: no intervals), got {b.resamples}")
    if not 0 < b.level < 1:
        raise bad("bootstrap.level", f"must be in (0, 1), e.g. 0.95; got {b.level}")
    if any(not 0 < u <= 1 for u in b.budgets):
        raise bad("bootstrap.budgets", f"must be cache-used fractions in (0, 1], got {b.budgets}")


def check_layers(cfg: StudyConfig, num_layers: int | None, model: str, path: str = "study") -> None:
    """The first tiered layer ``L`` (searched or fixed, in every method) is a decoder layer of
    the model (``num_layers`` None: not known before the model is built; checked when it runs).

    Raises
    ------
    ConfigError
        ``L`` can reach a layer the model does not have (the message names the key).
    """
    from avl_lab.experiments.study.methods import resolve
    from avl_lab.experiments.study.space import SCOPE

    if num_layers is None:
        return
    for m, prefix in resolve(cfg, path, with_prefix=True):
        dim = next((d for d in m.space if d.name == SCOPE), None)
        key, top = ((f"{prefix}space.L", max(dim.values())) if dim is not None
                    else (f"{prefix}fixed.L", m.fixed.get(SCOPE)))
        if top is not None and top >= num_layers:
            raise ConfigError(f"{path}: `{key}` reaches layer {top}, but {model} has {num_layers} "
                              f"decoder layers (0..{num_layers - 1})")
