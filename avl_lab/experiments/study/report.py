"""The Pareto front of a study: a table on stdout, ``pareto.csv`` and a seaborn ``pareto.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from avl_lab.evaluation.plotting import pyplot, save
from avl_lab.experiments.study.config import OBJECTIVES, PARAMS
from avl_lab.experiments.study.space import first_layer


def trials_frame(study: optuna.Study, objectives: list[str]) -> pd.DataFrame:
    """One row per completed trial: effective parameters, stored, used, score, on the front."""
    front = {t.number for t in study.best_trials}
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        policy = t.user_attrs.get("policy", {})
        row: dict[str, Any] = {"trial": t.number}
        row.update({p: policy.get(p) for p in PARAMS})
        row["L"] = first_layer(policy)
        row.update({k: t.user_attrs.get(k) for k in ("stored", "used", "score", "n")})
        row["front"] = t.number in front
        row["seconds"] = (t.duration.total_seconds() if t.duration else None)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["trial", *PARAMS, "stored", "used", "score", "n", "front", "seconds"])
    return df.sort_values(["front", objectives[0]], ascending=[False, True]).reset_index(drop=True)


def dominates(a: pd.Series, b: pd.Series, objectives: list[str]) -> bool:
    """Whether trial ``a`` dominates ``b`` (no worse in every objective, better in one)."""
    sign = {o: (1 if OBJECTIVES[o] == "minimize" else -1) for o in objectives}
    no_worse = all(sign[o] * a[o] <= sign[o] * b[o] for o in objectives)
    better = any(sign[o] * a[o] < sign[o] * b[o] for o in objectives)
    return no_worse and better


def front_table(df: pd.DataFrame) -> str:
    """The front, one row per distinct configuration (samplers may propose one twice; the
    evaluation cache makes the repeat free, and ``pareto.csv`` keeps every trial)."""
    if df.empty:
        return "(no completed trials)"
    front = df[df["front"]].drop_duplicates(subset=list(PARAMS)).drop(columns=["front"])
    unused = [p for p in PARAMS if front[p].isna().all()]  # parameters the study never set
    front = front.drop(columns=unused)
    return front.to_string(index=False, float_format=lambda x: f"{x:.4f}")


def plot(df: pd.DataFrame, study: optuna.Study, objectives: list[str], path: Path) -> None:
    plt, sns = pyplot()
    x, y = objectives[0], "score" if "score" in objectives else objectives[1]
    fig, ax = plt.subplots(figsize=(7, 5))
    kind = df["front"].map({True: "on the front", False: "dominated"})
    sns.scatterplot(data=df.assign(trial_kind=kind), x=x, y=y, hue="trial_kind", s=55, ax=ax,
                    palette={"on the front": "C3", "dominated": "0.65"}, zorder=4)
    front = df[df["front"]].sort_values(x)
    ax.plot(front[x], front[y], color="C3", drawstyle="steps-post", lw=1.2, label="Pareto front")
    for attr, marker, label in (("full", "*", "full"), ("paper_default", "D", "paper default (A-VL)")):
        point = study.user_attrs.get(attr)
        if point:
            ax.scatter([point[x]], [point[y]], marker=marker, s=140, facecolors="none",
                       edgecolors="black" if attr == "full" else "C0", linewidths=1.8, zorder=5,
                       label=label)
    ax.set_xlabel(f"cache {x} (fraction of full)")
    ax.set_ylabel(f"task score ({study.user_attrs.get('metric', 'score')})")
    ax.set_title(f"{study.study_name}: {len(df)} trials, {int(df['front'].sum())} on the front")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, path)


def write_report(study: optuna.Study, objectives: list[str], out: Path) -> pd.DataFrame:
    """Write ``pareto.csv`` and ``pareto.png`` under ``out``; return the trials frame."""
    out.mkdir(parents=True, exist_ok=True)
    df = trials_frame(study, objectives)
    df.to_csv(out / "pareto.csv", index=False)
    if len(df):
        plot(df, study, objectives, out / "pareto.png")
    return df
