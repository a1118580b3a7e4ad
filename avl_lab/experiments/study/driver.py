"""Running a study: Optuna storage with heartbeats and retries, workers, cached evaluations.

Each method of a study is one Optuna study in the storage (the study's own name for a
single-policy study, ``<study>/<method>`` for each of several), with its own sampler and trial
budget; the ``full`` baseline is evaluated once (the evaluation cache serves it to every method).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from avl_lab.errors import ConfigError
from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.cached import evaluate_policy
from avl_lab.evaluation.config import result_key, to_dict
from avl_lab.experiments.study.config import OBJECTIVES, StudyConfig
from avl_lab.experiments.study.methods import resolve
from avl_lab.experiments.study.space import Method, reference_policy, suggest, to_policy

log = logging.getLogger(__name__)


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _postgres_driver() -> str | None:
    """The PostgreSQL driver installed here: psycopg (v3, SQLAlchemy 2.1's default for a plain
    ``postgresql://``) or psycopg2; None if neither is."""
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        try:
            __import__(module)
            return driver
        except ImportError:
            continue
    return None


def storage_url(url: str | None, out: Path) -> str:
    """The storage URL to use: SQLite in ``out`` by default; a given URL checked (one clear
    error for a malformed one or a missing driver), ``postgresql://`` given the installed driver.

    Raises
    ------
    ConfigError
        Not a database URL, an unknown database, or its driver is not installed.
    """
    if url is None:
        return default_storage(out)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "e.g. sqlite:///runs/study.db or postgresql://user@host/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"`storage` {url!r} is not a database URL ({example})") from None
    if parsed.drivername == "postgresql" or parsed.drivername == "postgres":
        driver = _postgres_driver()
        if driver is None:
            raise ConfigError("`storage`: PostgreSQL needs a driver: pip install 'avl_lab[postgres]' "
                              "(psycopg2-binary) or psycopg[binary]")
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ConfigError(f"`storage` {url!r}: unknown database {parsed.drivername!r} ({example})") from None
    except ImportError as err:
        raise ConfigError(f"`storage` {url!r}: its driver is not installed ({err})") from None
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"`storage` {url!r}: the folder {folder} does not exist")
    return parsed.render_as_string(hide_password=False)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def make_storage(url: str, cfg: StudyConfig, attempts: int = 6) -> RDBStorage:
    """The study's storage. Workers starting together on a fresh database race to create
    Optuna's schema (one gets "already exists"); the loser retries and finds it made.

    Raises
    ------
    ConfigError
        The database cannot be reached (after the retries).
    """
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
                first = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
                raise ConfigError(f"`storage` {_shown(url)}: cannot open the database "
                                  f"({first})") from None
            log.warning("storage %s not ready (%s); retrying", _shown(url), type(err).__name__)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def load_existing(cfg: StudyConfig, url: str) -> list[tuple[Method, optuna.Study]]:
    """Each method's study as stored, for ``--report``; a clear error when there is nothing to
    report.

    Raises
    ------
    ConfigError
        A method's study is not in the storage (an SQLite file is not created to find out),
        or has no completed trial yet.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    hint = "run the sweep first (without --report)"
    if parsed.drivername.startswith("sqlite") and not Path(parsed.database or "").is_file():
        raise ConfigError(f"no study {cfg.name!r} to report: {parsed.database} does not exist; {hint}")
    storage = make_storage(url, cfg)
    names = optuna.get_all_study_names(storage=storage)
    out = []
    for method in resolve(cfg):
        if method.study_name not in names:
            raise ConfigError(f"no study {method.study_name!r} in {_shown(url)} (it holds: "
                              f"{', '.join(names) or 'none'}); {hint}")
        study = optuna.load_study(study_name=method.study_name, storage=storage)
        if not _count(study, TrialState.COMPLETE):
            raise ConfigError(f"study {method.study_name!r} in {_shown(url)} has no completed trial "
                              f"yet; {hint}")
        out.append((method, study))
    return out


def settings(cfg: StudyConfig, method: Method, base: EvalConfig) -> dict[str, Any]:
    """What a method's results depend on: the evaluation (less where and how it runs), the
    policy, its fixed fields, space and relations, and the objectives. Stored with the study;
    a re-run must match."""
    d = to_dict(base)
    for k in ("out_dir", "accelerator", "devices", "strategy", "progress", "batch_size", "policy"):
        d.pop(k, None)
    return json.loads(json.dumps({
        "eval": d, "policy": method.policy, "fixed": dict(method.fixed),
        "space": {dim.name: dim.describe() for dim in method.space},
        "relations": [str(r) for r in method.relations], "objectives": list(cfg.objectives),
    }, default=str))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def check_settings(study: optuna.Study, wanted: dict[str, Any], url: str, full_dir: str,
                   record: bool = True) -> None:
    """Refuse to add trials of other settings to a study (it would mix them, and keep a
    ``full`` reference of the old ones); record the settings on a new study (unless ``record``
    is False: ``--check``). A study from before settings were recorded is checked by its
    ``full`` baseline's cache key."""
    old = study.user_attrs.get("settings")
    if old is None:
        full = study.user_attrs.get("full")
        if full is not None and Path(full.get("out_dir", "")).name != Path(full_dir).name:
            raise ConfigError(f"study {study.study_name!r} in {_shown(url)} was run with other "
                              "evaluation settings (its `full` baseline differs); use another "
                              "out_dir (or --storage) for these, or the same settings to resume it")
        if record:
            study.set_user_attr("settings", wanted)
        return
    a, b = _flat(old), _flat(wanted)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in diff[:4])
        raise ConfigError(f"study {study.study_name!r} in {_shown(url)} was run with other "
                          f"settings ({shown}); use another out_dir (or --storage) for these, or "
                          "the same settings to resume it")


def make_sampler(cfg: StudyConfig, offset: int) -> optuna.samplers.BaseSampler:
    seed = cfg.sampler.seed + offset  # a resumed or second worker does not replay the same draws
    if cfg.sampler.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.sampler.population_size)
    if cfg.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def load(cfg: StudyConfig, method: Method, storage: str | RDBStorage, offset: int = 0) -> optuna.Study:
    try:
        study = optuna.create_study(
            study_name=method.study_name, storage=storage, load_if_exists=True,
            directions=[OBJECTIVES[o] for o in cfg.objectives],
            sampler=make_sampler(cfg, method.seed_offset + offset),
        )
    except ValueError as err:  # e.g. other directions than the stored study's
        raise ConfigError(f"study {method.study_name!r}: {err}") from None
    study.set_metric_names(list(cfg.objectives))
    return study


def check_stored(cfg: StudyConfig, base: EvalConfig, out: Path, storage: str | None) -> None:
    """What :func:`run` refuses about the studies already in the storage (other settings),
    checked without writing, in a SQLite file that exists (one not there yet holds none; a
    database server is not contacted by ``--check``)."""
    url = storage_url(storage, out)
    if not url.startswith("sqlite:///") or not Path(url.removeprefix("sqlite:///")).exists():
        return
    rdb = make_storage(url, cfg)
    for method in resolve(cfg):
        try:
            study = optuna.load_study(study_name=method.study_name, storage=rdb)
        except KeyError:  # not there yet
            continue
        check_settings(study, settings(cfg, method, base), url, _full_dir(base, out), record=False)


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def run(cfg: StudyConfig, base: EvalConfig, out: Path, storage: str | None,
        n_trials: int | None = None, progress: bool = True) -> list[tuple[Method, optuna.Study]]:
    """Run each method's trials until it holds its number of completed ones (``n_trials``, when
    given, for every method; several workers may share the ``storage`` URL; default SQLite in
    ``out``). The ``full`` baseline and each method's reference point are evaluated once and
    stored as study attributes.

    Raises
    ------
    ConfigError
        A bad storage URL, or a stored study was run with other settings.
    """
    url = storage_url(storage, out)
    if storage is None:  # the SQLite file goes there
        out.mkdir(parents=True, exist_ok=True)
    rdb = make_storage(url, cfg)
    out.mkdir(parents=True, exist_ok=True)
    methods = resolve(cfg)
    studies = [load(cfg, method, rdb) for method in methods]
    for method, study in zip(methods, studies):  # every refusal before any evaluation
        check_settings(study, settings(cfg, method, base), url, _full_dir(base, out))
    full: dict[str, Any] | None = None
    for method, study in zip(methods, studies):
        if full is None and "full" not in study.user_attrs:
            log.info("study %s: evaluating the full point", cfg.name)
        full = full or study.user_attrs.get("full") or {
            "policy": {"name": "full"}, **evaluate_policy(base, {"name": "full"}, out)}
        _run_method(cfg, method, study, base, out, n_trials or method.n_trials, progress, full)
    return list(zip(methods, studies))


def _reference_points(study: optuna.Study, method: Method, base: EvalConfig, out: Path,
                      full: dict[str, Any]) -> None:
    """``full`` and the method's reference point (evaluated once) as study attributes."""
    if "full" not in study.user_attrs:
        study.set_user_attr("full", full)
        study.set_user_attr("metric", full["metric"])
    ref = reference_policy(method)
    if ref is not None and "reference" not in study.user_attrs:
        log.info("study %s: evaluating the reference point (%s)", study.study_name,
                 " ".join(f"{k}={v}" for k, v in ref.items()))
        study.set_user_attr("reference", {"policy": ref, **evaluate_policy(base, ref, out)})


def _run_method(cfg: StudyConfig, method: Method, study: optuna.Study, base: EvalConfig, out: Path,
                target: int, progress: bool, full: dict[str, Any]) -> None:
    done = _count(study, TrialState.COMPLETE)
    if done:
        log.info("resuming study %s: %d of %d trials complete", study.study_name, done, target)
    study.sampler = make_sampler(cfg, offset=method.seed_offset + len(study.trials))
    _reference_points(study, method, base, out, full)

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        earlier = [t for t in study.get_trials(deepcopy=False, states=states)
                   if t.number < trial.number]
        if len(earlier) >= target:  # another worker got there first: don't overshoot
            study.stop()
            raise optuna.TrialPruned(f"the study already has {target} trials")
        policy = to_policy(suggest(trial, method), method)
        trial.set_user_attr("policy", policy)  # before the check: other workers compare it
        mine.add(trial.number)
        same = _same_configuration(study, trial, policy)
        if same is not None and same.state == TrialState.COMPLETE and same.number in mine:
            # this worker's sampler drew a configuration again: its results are reused, not re-run
            for key in ("score", "stored", "used", "n", "out_dir"):
                trial.set_user_attr(key, same.user_attrs[key])
            return tuple(same.values)
        if same is not None:  # another worker has it, done or running: this one's sampler is in
            repeats[0] += 1  # step with that worker's; leave its stream and draw again
            if repeats[0] > MAX_REPEATS:
                raise ConfigError(f"study {study.study_name!r}: the sampler proposed {MAX_REPEATS} "
                                  "configurations in a row that other workers had")
            study.sampler = make_sampler(cfg, offset=method.seed_offset + REPEAT_SEEDS + trial.number)
            raise optuna.TrialPruned(f"the configuration of trial #{same.number}, another worker's")
        repeats[0] = 0
        res = evaluate_policy(base, policy, out)
        for key in ("score", "stored", "used", "n", "out_dir"):
            trial.set_user_attr(key, res[key])
        return tuple(res[o] for o in cfg.objectives)

    repeats = [0]  # consecutive proposals pruned as repeats
    mine: set[int] = set()  # this worker's trial numbers
    waiting: list[int] | None = None
    while (done := _count(study, TrialState.COMPLETE)) < target:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        todo = target - done - len(running)  # WAITING (retried) trials are asked first
        if todo <= 0:  # other workers are on the rest; wait for them (or for their retries)
            numbers = sorted(t.number for t in running)
            if numbers != waiting:
                log.info("waiting for %d trial(s) running elsewhere (#%s) to reach %d complete "
                         "in %s; one without a heartbeat for %ds is failed and retried",
                         len(numbers), ", #".join(map(str, numbers)), target, study.study_name,
                         cfg.grace_period)
                waiting = numbers
            fail_stale_trials(study)  # a killed worker's trial is failed, then retried
            time.sleep(min(5, cfg.heartbeat_interval))
            continue
        waiting = None
        study.optimize(objective, n_trials=todo, show_progress_bar=progress, gc_after_trial=True)


#: A worker gives up after this many proposals in a row that other workers were evaluating.
MAX_REPEATS = 50
#: Sampler seeds of a stream moved off another worker's start here (past any trial count).
REPEAT_SEEDS = 1_000_003


def _same_configuration(study: optuna.Study, trial: optuna.Trial,
                        policy: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
    """Another trial of the same ``policy`` (parameters after the study's relations): a complete
    one (reused when this worker drew it before) before a running one. Each trial publishes its policy before it
    looks, so of two that draw one policy at once the later to look always sees the other and
    yields (both yield when each sees the other; neither goes on unseen)."""
    others = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
              if t.number != trial.number and t.user_attrs.get("policy") == policy]
    return min(others, key=lambda t: (t.state != TrialState.COMPLETE, t.number), default=None)


def _full_dir(base: EvalConfig, out: Path) -> str:
    """Where the ``full`` baseline of ``base`` is cached (its name hashes the settings)."""
    cfg = dataclasses.replace(base, policy={"name": "full"}, progress=False)
    return str(Path(out) / "evals" / result_key(cfg))
