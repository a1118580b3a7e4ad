"""Nothing silently wrong: each case that used to run on quietly (or give a wrong result) now
stops with a clear error, or does what it says; plus quiet output, aliases and storage URLs."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from avl_lab.__main__ import main
from avl_lab.cli.args import parse_argv
from avl_lab.errors import ConfigError, UserError
from avl_lab.evaluation.policy_spec import check_policy
from avl_lab.experiments.study import driver
from avl_lab.experiments.study.config import load_study
from avl_lab.experiments.study.methods import resolve

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model=tiny-random-llava", "data.limit=2", "generation.max_new_tokens=2", "progress=false"]
NOISE = ("Warning", "warning:", "Tip", "GPU available", "TPU available", "deprecated",
         "Traceback", "litlogger")


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AVL_LAB_CACHE", str(tmp_path / "avl-cache"))


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_a_non_numeric_seed_is_refused_before_any_policy_is_built(monkeypatch):
    from avl_lab.policies import random_evict

    built = []
    monkeypatch.setattr(random_evict.RandomEvict, "__post_init__", lambda self: built.append(1))
    for seed in ("abc", 1.5, True):
        with pytest.raises(ConfigError, match="`policy.seed` must be an integer"):
            check_policy({"name": "random", "seed": seed})
    assert not built  # never reached hash_uniform's `seed * constant` ("abc" * 3e9 = 9 GB)


def test_no_scorable_rows_exits_2_and_writes_no_nan_summary(tmp_path, capsys):
    from datasets import Dataset

    from tests.test_data_lmms import _docvqa

    rows = _docvqa(2).to_dict()
    rows["image"] = [{"bytes": b"not an image", "path": None}] * 2
    (tmp_path / "bad" / "DocVQA").mkdir(parents=True)
    Dataset.from_dict(rows, features=_docvqa(0).features).to_parquet(
        str(tmp_path / "bad" / "DocVQA" / "validation-00000-of-00001.parquet"))
    out = tmp_path / "out"
    rc = main(["evaluate", *TINY, "data=docvqa", f"data.path={tmp_path / 'bad'}", f"out_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "could be scored" in _errors(err)[0]
    assert not out.exists()  # no summary.json with a bare NaN, no run.json to refuse a re-run


def test_duplicate_sample_ids_are_an_error_not_a_smaller_n():
    from avl_lab.evaluation.config import load_config
    from avl_lab.evaluation.preflight import check_rows

    cfg = load_config(TINY)
    check_rows(["a", "b"], cfg)
    with pytest.raises(UserError, match="duplicate sample id"):
        check_rows(["a", "b", "a"], cfg)


def _study_file(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "sweeps" / "docvqa_pareto.yaml").read_text())
    spec.update(name="silent", **changes)
    path = tmp_path / "silent.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_fixed_values_are_rejected_not_clipped(tmp_path):
    space = {"S": {"low": 10, "high": 50}, "P": {"low": 50, "high": 100}}
    with pytest.raises(ConfigError, match="`fixed.C` is invalid for policy 'avl': `C` must be a percentage"):
        load_study(str(_study_file(tmp_path, space=space, fixed={"C": 200})))
    with pytest.raises(ConfigError, match="`fixed.C` is 60, above every S"):
        load_study(str(_study_file(tmp_path, space=space, fixed={"C": 60})))
    with pytest.raises(ConfigError, match="`fixed.P` is 30, below every S"):
        load_study(str(_study_file(tmp_path, space={"S": {"low": 40, "high": 50}}, fixed={"P": 30},
                                   relations=["S <= P"])))
    cfg, _ = load_study(str(_study_file(tmp_path, space=space, fixed={"C": 10})))
    assert cfg.fixed == {"C": 10}


def _stored_study(tmp_path: Path, storage: str, settings: dict | None, full_dir: str | None):
    cfg, base = load_study(str(_study_file(tmp_path)))
    study = driver.load(cfg, resolve(cfg)[0], storage)
    if settings is not None:
        study.set_user_attr("settings", settings)
    if full_dir is not None:
        study.set_user_attr("full", {"score": 1.0, "stored": 1.0, "used": 1.0, "out_dir": full_dir})
    return cfg, base


@pytest.mark.parametrize("legacy", [False, True])
def test_a_sweep_rerun_with_other_eval_settings_refuses(tmp_path, capsys, legacy):
    out = tmp_path / "sweep"
    out.mkdir()
    storage = driver.default_storage(out)
    cfg, base = _stored_study(tmp_path, storage, None, None)
    if legacy:  # a study from before settings were recorded: its full baseline tells
        _stored_study(tmp_path, storage, None, driver._full_dir(base, out))
    else:
        _stored_study(tmp_path, storage, driver.settings(cfg, resolve(cfg)[0], base), None)
    args = ["sweep", "--study", str(tmp_path / "silent.yaml"), "--out", str(out), "--no-progress"]
    before = sorted(p.name for p in out.iterdir())
    rc = main([*args, "data.limit=3"])  # the study ran with data.limit=16
    err = capsys.readouterr().err
    assert rc == 2 and len(_errors(err)) == 1 and "other" in _errors(err)[0]
    if not legacy:
        assert "eval.data.limit: 16 there, 3 now" in _errors(err)[0]
    assert sorted(p.name for p in out.iterdir()) == before  # no evals/ for the new settings
    study = optuna.load_study(study_name="silent", storage=storage)
    assert not study.trials


def test_report_on_a_study_without_completed_trials(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    _stored_study(tmp_path, driver.default_storage(out), None, None)
    rc = main(["sweep", "--study", str(tmp_path / "silent.yaml"), "--out", str(out), "--report"])
    err = capsys.readouterr().err
    assert rc == 2 and "no completed trial" in _errors(err)[0]
    assert not (out / "pareto.csv").exists()


def test_a_resuming_sweep_says_what_it_waits_for(tmp_path, capsys):
    """Another worker's running trial: the sweep says it waits for it, fails it when its
    heartbeat stops, and runs it again."""
    path = _study_file(tmp_path, heartbeat_interval=1, grace_period=2, n_trials=1,
                       space={"S": {"low": 40, "high": 50}}, relations=[], reference={"S": 45})
    out = tmp_path / "sweep"
    out.mkdir()
    cfg, base = load_study(str(path), TINY[:-1])
    storage = driver.make_storage(driver.default_storage(out), cfg)
    method = resolve(cfg)[0]
    study = driver.load(cfg, method, storage)
    study.set_user_attr("settings", driver.settings(cfg, method, base))
    for attr in ("full", "reference"):
        study.set_user_attr(attr, {"score": 1.0, "stored": 1.0, "used": 1.0, "n": 2,
                                   "out_dir": driver._full_dir(base, out), "metric": "anls"})
    trial = study.ask()  # "another worker" that is then killed
    storage.record_heartbeat(trial._trial_id)
    rc = main(["sweep", "--study", str(path), "--out", str(out), "--no-progress", *TINY[:-1]])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "waiting for 1 trial(s) running elsewhere (#0)" in err
    states = [t.state for t in optuna.load_study(study_name="silent", storage=driver.default_storage(out)).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 1


def test_figure_labels_say_what_ran(tmp_path, monkeypatch):
    from avl_lab.evaluation.config import load_config
    from avl_lab.experiments.figures import Grids, fig9, run

    g = Grids(S=[20], C=[10, 50], S_core=50, K=[3])
    for p in fig9(g):
        if p.method.startswith("core"):
            assert p.method == f"core (S={p.policy['S']}, K={p.policy['K']})"
    with pytest.raises(ValueError, match="`grid.C` values \\[60\\] exceed `grid.S_core`"):
        Grids(C=[60], S_core=50)
    seen = {}
    monkeypatch.setattr(run, "evaluate_policy", lambda base, policy, out: {
        "score": 0.5, "stored": 0.5, "used": 0.5, "n": 4, "metric": "anls", "out_dir": "x"})
    monkeypatch.setattr(run, "plot_figure", lambda df, path, x="value", title=None:
                        seen.update(title=title))
    base = load_config(["model=tiny-random-llava", "data=synth-ocr", "generation.max_new_tokens=7"])
    run.run_figure("fig9", base, g, tmp_path / "fig", progress=False)
    assert seen["title"] == "fig9: tiny-random-llava on synth-ocr (anls), n=4, 7 new tokens"


def test_a_failed_run_leaves_nothing_and_the_corrected_run_is_quiet(tmp_path, capfd):
    out = tmp_path / "run"
    rc = main(["evaluate", *TINY, "policy=streaming", "policy.ratio=0.01", f"out_dir={out}"])
    err = capfd.readouterr().err
    assert rc == 2 and "sinks" in _errors(err)[0]
    assert not out.exists()  # no run.json that would refuse the corrected run
    rc = main(["evaluate", *TINY, "policy=streaming", "policy.ratio=0.9", f"out_dir={out}"])
    captured = capfd.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["n"] == 2
    assert not [n for n in NOISE if n in captured.err], captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["policy"] == {"name": "streaming", "ratio": 0.9}


@pytest.mark.slow
def test_a_sweep_of_the_shipped_model_is_quiet_with_a_bar_and_the_front(tmp_path, capfd):
    """What `make sweep` shows, shortened: no warnings, no transformers loading bars, the
    trials' progress bar and the front table."""
    from avl_lab.models import embedded_path

    if not (embedded_path() / "model.safetensors").exists():
        pytest.skip("avl-tiny weights not shipped")
    rc = main(["sweep", "--study", "docvqa_pareto", "--n-trials", "2", "model=avl-tiny",
               "data.limit=1", "generation.max_new_tokens=2", "--out", str(tmp_path / "s")])
    captured = capfd.readouterr()
    assert rc == 0, captured.err
    assert not [n for n in (*NOISE, "Loading weights") if n in captured.err], captured.err
    assert "2/2" in captured.err  # the trials' bar
    assert "Pareto front:" in captured.out and " trial " in captured.out


def test_old_spellings_map_to_out_dir_and_flags_to_keys(caplog):
    args = parse_argv(["fig9", "out=x", "--n-trials", "3", "--no-progress", "--report", "-vv"],
                      bool_keys=("progress", "report"), positional=("figure",))
    assert args.dotlist == ["figure=fig9", "out_dir=x", "n_trials=3", "progress=false",
                            "report=true"]
    assert args.verbosity == 2 and args.deprecated == ["`out=` is deprecated; use `out_dir=`"]
    assert parse_argv(["--out", "y"]).dotlist == ["out_dir=y"] and not parse_argv(["--out", "y"]).deprecated


def test_postgresql_urls_work_as_written(tmp_path):
    url = driver.storage_url("postgresql://user@host/db", tmp_path)
    assert url.startswith("postgresql+psycopg") and url.endswith("://user@host/db")
    assert driver.storage_url(None, tmp_path) == driver.default_storage(tmp_path)
    with pytest.raises(ConfigError, match="not a database URL"):
        driver.storage_url("postgresql//nope", tmp_path)


def test_every_verb_has_help_from_the_field_docs(capsys):
    expect = {"evaluate": "Evaluate only the first N rows", "sweep": "Completed trials the study",
              "figures": "Fig 9a", "analyze": "modality-attention", "train": "Peak AdamW"}
    for verb, doc in expect.items():
        assert main([verb, "--help"]) == 0
        out = capsys.readouterr().out
        assert doc in out and ("Policies" in out) == (verb != "train"), verb
    assert main(["--help"]) == 0 and "figures" in capsys.readouterr().out
