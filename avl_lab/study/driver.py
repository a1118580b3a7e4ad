"""Running a study: Optuna storage with heartbeats and retries, workers, cached evaluations."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.cached import evaluate_policy
from avl_lab.study.config import OBJECTIVES, PAPER_DEFAULT, StudyConfig
from avl_lab.study.space import suggest, to_policy

log = logging.getLogger(__name__)


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def make_storage(url: str, cfg: StudyConfig, attempts: int = 6) -> RDBStorage:
    """The study's storage. Workers starting together on a fresh database race to create
    Optuna's schema (one gets "already exists"); the loser retries and finds it made."""
    from sqlalchemy.exc import SQLAlchemyError

    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=cfg.max_retry),
            )
        except SQLAlchemyError as err:
            if attempt == attempts - 1:
                raise
            log.warning("storage %s not ready (%s); retrying", url, type(err).__name__)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def make_sampler(cfg: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    seed = cfg.sampler.seed + offset  # a resumed or second worker does not replay the same draws
    if cfg.sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.sampler.population_size)
    if cfg.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def load(cfg: StudyConfig, storage: str | RDBStorage, offset: int = 0) -> optuna.Study:
    study = optuna.create_study(
        study_name=cfg.name, storage=storage, load_if_exists=True,
        directions=[OBJECTIVES[o] for o in cfg.objectives], sampler=make_sampler(cfg, offset),
    )
    study.set_metric_names(list(cfg.objectives))
    return study


def eval_point(base: EvalConfig, policy: dict[str, Any], out: Path) -> dict[str, Any]:
    """Evaluate ``policy`` once; results are cached under ``out/evals/<config hash>``."""
    return evaluate_policy(base, policy, out)


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def run(cfg: StudyConfig, base: EvalConfig, out: Path, storage_url: str | None,
        n_trials: int | None = None, progress: bool = True) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` completed ones (several workers may share
    ``storage_url``). The ``full`` baseline and the paper's default point are evaluated once
    and stored as study attributes."""
    out.mkdir(parents=True, exist_ok=True)
    target = cfg.n_trials if n_trials is None else n_trials
    storage = make_storage(storage_url or default_storage(out), cfg)
    study = load(cfg, storage)
    study.sampler = make_sampler(cfg, offset=len(study.trials))
    for attr, policy in (("full", {"name": "full"}), ("paper_default", _paper_default(cfg))):
        if attr not in study.user_attrs:
            point = eval_point(base, policy, out)
            study.set_user_attr(attr, {"policy": policy, **point})
            study.set_user_attr("metric", point["metric"])

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        earlier = [t for t in study.get_trials(deepcopy=False, states=states)
                   if t.number < trial.number]
        if len(earlier) >= target:  # another worker got there first: don't overshoot
            study.stop()
            raise optuna.TrialPruned(f"the study already has {target} trials")
        policy = to_policy(suggest(trial, cfg), cfg.fixed)
        res = eval_point(base, policy, out)
        trial.set_user_attr("policy", policy)
        for key in ("score", "stored", "used", "n", "out_dir"):
            trial.set_user_attr(key, res[key])
        return tuple(res[o] for o in cfg.objectives)

    while (done := _count(study, TrialState.COMPLETE)) < target:
        running = _count(study, TrialState.RUNNING)  # WAITING (retried) trials are asked first
        todo = target - done - running
        if todo <= 0:  # other workers are on the rest; wait for them (or for their retries)
            fail_stale_trials(study)  # a killed worker's trial is failed, then retried
            time.sleep(min(5, cfg.heartbeat_interval))
            continue
        study.optimize(objective, n_trials=todo, show_progress_bar=progress, gc_after_trial=True)
    return study


def _paper_default(cfg: StudyConfig) -> dict[str, Any]:
    params = {k: v for k, v in PAPER_DEFAULT.items() if k in cfg.space or k in cfg.fixed}
    return to_policy({k: v for k, v in params.items() if k not in cfg.fixed}, cfg.fixed)


def study_summary(study: optuna.Study) -> dict[str, Any]:
    return json.loads(json.dumps({"name": study.study_name, **study.user_attrs}, default=str))
