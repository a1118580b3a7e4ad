"""A study's report: each method's Pareto front on stdout and in ``pareto.csv`` (every trial,
with its score's bootstrap interval), ``methods.csv`` (hypervolume with its interval),
``paired.csv`` (each method against the baseline at matched budgets, from the same draws) and
a seaborn ``pareto.png`` with one front per method."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from avl_lab.errors import ConfigError
from avl_lab.evaluation.plotting import pyplot, save
from avl_lab.experiments.study.config import OBJECTIVES, StudyConfig
from avl_lab.experiments.study.space import SCOPE, Method, first_layer
from avl_lab.experiments.study.uncertainty import (
    method_table,
    paired_table,
    resampled,
    trial_intervals,
)

_TAIL = ["stored", "used", "score", "n", "front", "seconds"]


@dataclass
class Report:
    """What :func:`write_report` wrote: every trial, the per-method table, the paired table."""

    trials: pd.DataFrame
    methods: pd.DataFrame
    paired: pd.DataFrame
    samples: int | None
    """Samples resampled for the intervals (None: no intervals)."""


def _cell(value: Any) -> Any:
    """A field's value as a table cell: lists and mappings (e.g. fixed ``stages``) as text."""
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def trials_frame(study: optuna.Study, objectives: list[str], method: Method | None = None) -> pd.DataFrame:
    """One row per completed trial: the method, its fields, stored, used, score, on the front."""
    front = {t.number for t in study.best_trials}
    params = method.params() if method is not None else []
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        policy = t.user_attrs.get("policy", {})
        row: dict[str, Any] = {"method": method.name if method else policy.get("name"),
                               "trial": t.number}
        row.update({p: _cell(policy.get(p)) for p in params if p != SCOPE})
        if SCOPE in params:
            row[SCOPE] = first_layer(policy)
        row.update({k: t.user_attrs.get(k) for k in ("stored", "used", "score", "n")})
        row["front"] = t.number in front
        row["seconds"] = t.duration.total_seconds() if t.duration else None
        row["out_dir"] = t.user_attrs.get("out_dir")
        rows.append(row)
    cols = ["method", "trial", *[p for p in params if p != SCOPE],
            *([SCOPE] if SCOPE in params else []), *_TAIL, "out_dir"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["front", objectives[0]], ascending=[False, True]).reset_index(drop=True)


def dominates(a: pd.Series, b: pd.Series, objectives: list[str]) -> bool:
    """Whether trial ``a`` dominates ``b`` (no worse in every objective, better in one)."""
    sign = {o: (1 if OBJECTIVES[o] == "minimize" else -1) for o in objectives}
    no_worse = all(sign[o] * a[o] <= sign[o] * b[o] for o in objectives)
    better = any(sign[o] * a[o] < sign[o] * b[o] for o in objectives)
    return no_worse and better


def _param_columns(df: pd.DataFrame) -> list[str]:
    fixed = {"method", "trial", "out_dir", "score_lo", "score_hi", *_TAIL}
    return [c for c in df.columns if c not in fixed]


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in reading order (method, trial, fields, results, where), and integer fields
    shown as integers (a column that other methods leave empty is float in pandas)."""
    params = _param_columns(df)
    head = ["method", "trial", *params, "stored", "used", "score"]
    cols = [c for c in [*head, "score_lo", "score_hi", "n", "front", "seconds", "out_dir"] if c in df]
    df = df[cols].copy()
    for c in params:
        vals = df[c].dropna()
        if len(vals) and pd.api.types.is_float_dtype(df[c]) and (vals == vals.round()).all():
            df[c] = df[c].astype("Int64")
    return df


def front_table(df: pd.DataFrame) -> str:
    """The front, one row per distinct configuration (samplers may propose one twice; the
    evaluation cache makes the repeat free, and ``pareto.csv`` keeps every trial); with
    several methods, one block per method."""
    if df.empty:
        return "(no completed trials)"
    methods = list(dict.fromkeys(df["method"])) if "method" in df else [None]
    blocks = []
    for method in methods:
        part = df if method is None else df[df["method"] == method]
        params = _param_columns(part)
        front = part[part["front"]].drop_duplicates(subset=params or None)
        drop = ["front", "method", "out_dir", *[p for p in params if front[p].isna().all()]]
        front = front.drop(columns=[c for c in drop if c in front])
        text = front.to_string(index=False, float_format=lambda x: f"{x:.4f}")
        blocks.append(text if len(methods) == 1 else f"[{method}]\n{text}")
    return "\n".join(blocks)


def _points(studies: list[tuple[Method, optuna.Study]]) -> list[tuple[str, dict, str]]:
    """``(label, point, kind)`` of full (once) and each method's reference point."""
    points = []
    full = studies[0][1].user_attrs.get("full")
    if full:
        points.append(("full", full, "full"))
    for method, study in studies:
        ref = study.user_attrs.get("reference") or study.user_attrs.get("paper_default")
        if ref:
            points.append((f"{method.name} reference", ref, method.name))
    return points


def plot(df: pd.DataFrame, studies: list[tuple[Method, optuna.Study]], objectives: list[str],
         path: Path, title: str) -> None:
    plt, sns = pyplot()
    x, y = objectives[0], "score" if "score" in objectives else objectives[1]
    methods = list(dict.fromkeys(df["method"]))
    palette = "tab10" if len(methods) <= 10 else "tab20"
    colors = dict(zip(methods, sns.color_palette(palette, max(len(methods), 3))))
    fig, ax = plt.subplots(figsize=(9.5, 5.5) if len(methods) > 1 else (7, 5))
    sns.scatterplot(data=df[~df["front"]], x=x, y=y, hue="method", palette=colors, s=30, alpha=0.35,
                    ax=ax, legend=False, zorder=3)
    for method in methods:
        front = df[(df["method"] == method) & df["front"]].sort_values(x)
        label = f"{method} front" if len(methods) > 1 else "Pareto front"
        ax.plot(front[x], front[y], color=colors[method], drawstyle="steps-post", lw=1.4,
                marker="o", ms=6, label=label, zorder=4)
        if "score_lo" in front and y == "score" and front["score_lo"].notna().any():
            ax.errorbar(front[x], front[y], yerr=[front[y] - front["score_lo"], front["score_hi"] - front[y]],
                        fmt="none", ecolor=colors[method], alpha=0.5, lw=1, zorder=3)
    for label, point, kind in _points(studies):
        full = kind == "full"
        ax.scatter([point[x]], [point[y]], marker="*" if full else "D", s=160 if full else 90,
                   facecolors="none", edgecolors="black" if full else colors.get(kind, "C0"),
                   linewidths=1.8, zorder=5, label=label)
    metric = studies[0][1].user_attrs.get("metric", "score")
    ax.set_xlabel(f"cache {x} (fraction of full)")
    ax.set_ylabel(f"task score ({metric}); bars: bootstrap interval")
    ax.set_title(title)
    if len(methods) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=8)
    save(fig, path)


#: The file naming the study whose report ``out`` holds (see :func:`check_owner`).
OWNER = "report.json"


def check_owner(out: Path, study: str) -> None:
    """Refuse an ``out_dir`` that holds another study's report (``pareto.csv`` and the rest would
    be overwritten), as ``evaluate`` refuses another configuration's results."""
    marker = out / OWNER
    if not marker.is_file():
        return
    try:
        owner = json.loads(marker.read_text()).get("study")
    except (json.JSONDecodeError, AttributeError):
        owner = None
    if owner != study:
        raise ConfigError(f"`out_dir` {out} holds the report of study {owner!r}; sweeping "
                          f"{study!r} there would overwrite its pareto.csv and pareto.png: give "
                          "another out_dir")


def write_report(studies: list[tuple[Method, optuna.Study]], cfg: StudyConfig, out: Path) -> Report:
    """Write ``pareto.csv``, ``methods.csv``, ``paired.csv`` and ``pareto.png`` under ``out``
    (and :data:`OWNER`, naming the study)."""
    out.mkdir(parents=True, exist_ok=True)
    check_owner(out, cfg.name)
    (out / OWNER).write_text(json.dumps({"study": cfg.name}) + "\n")
    frames = [trials_frame(study, cfg.objectives, method) for method, study in studies]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    metric = studies[0][1].user_attrs.get("metric", "score")
    res = resampled(df, metric, cfg.bootstrap, out)
    df = _tidy(trial_intervals(df, res))
    methods, paired = method_table(df, res), paired_table(df, res, cfg.bootstrap)
    df.to_csv(out / "pareto.csv", index=False)
    methods.assign(resamples=cfg.bootstrap.resamples if res else 0, seed=cfg.bootstrap.seed,
                   level=cfg.bootstrap.level, samples=res.n if res else None).to_csv(
        out / "methods.csv", index=False)
    if len(paired):
        paired.to_csv(out / "paired.csv", index=False)
    if len(df):
        title = f"{cfg.name}: {len(df)} trials, {int(df['front'].sum())} on the front"
        if len(studies) > 1:
            title = f"{cfg.name}: {len(studies)} methods, {len(df)} trials"
        plot(df, studies, cfg.objectives, out / "pareto.png", title)
    return Report(df, methods, paired, res.n if res else None)
