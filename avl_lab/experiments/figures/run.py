"""Run a figure's points through the (cached, resumable) evaluation runner; tidy CSV + PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.cached import evaluate_policy
from avl_lab.evaluation.plotting import pyplot, save
from avl_lab.experiments.figures.specs import FIGURES, Grids, Point

log = logging.getLogger(__name__)

COLUMNS = ["figure", "panel", "method", "param", "value", "score", "stored", "used", "n", "metric",
           "out_dir"]


def run_figure(name: str, base: EvalConfig, grids: Grids, out: Path,
               progress: bool = True) -> pd.DataFrame:
    """Evaluate every point of figure ``name`` plus the ``full`` reference; write
    ``<out>/<name>.csv`` and ``<out>/<name>.png``."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose one of {sorted(FIGURES)}")
    return run_points(name, FIGURES[name](grids), base, out, progress=progress)


def run_points(name: str, points: list[Point], base: EvalConfig, out: Path,
               x: str = "value", progress: bool = True) -> pd.DataFrame:
    """Evaluate ``points`` (cached by configuration) plus ``full``; write ``<name>.csv`` and a
    ``<name>.png`` of score against ``x`` (``value``, ``used`` or ``stored``) per panel."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    full = evaluate_policy(base, {"name": "full"}, out)
    rows = [{"figure": name, "panel": "reference", "method": "full", "param": "", "value": 100.0,
             **full}]
    for p in tqdm(points, desc=name, unit="point", disable=not progress):
        res = evaluate_policy(base, p.policy, out)
        rows.append({"figure": name, "panel": p.panel, "method": p.method, "param": p.param,
                     "value": p.value, **res})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.to_csv(out / f"{name}.csv", index=False)
    title = (f"{name}: {base.model.name} on {base.data.name} ({full['metric']}), "
             f"n={int(full['n'])}, {base.generation.max_new_tokens} new tokens")
    plot_figure(df, out / f"{name}.png", x=x, title=title)
    return df


def plot_figure(df: pd.DataFrame, path: Path, x: str = "value", title: str | None = None) -> None:
    plt, sns = pyplot()
    full = df[df["method"] == "full"].iloc[0]
    panels = [p for p in dict.fromkeys(df["panel"]) if p != "reference"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        sub = df[df["panel"] == panel]
        lines = sub[sub["method"] != "no update"]
        sns.lineplot(data=lines, x=x, y="score", hue="method", style="method", markers=True,
                     dashes=False, ax=ax)
        for _, row in sub[sub["method"] == "no update"].iterrows():
            ax.axhline(row["score"], color="C2", ls=":", label="no update (K=∞)")
        ax.axhline(full["score"], color="black", ls="--", lw=1, label="full")
        ax.set_title(panel)
        param = sub["param"].iloc[0]
        ax.set_xlabel(f"cache {x} (fraction of full)" if x != "value"
                      else "K (steps)" if param == "K" else f"{param} (%)")
        ax.set_ylabel(f"{full['metric']}")
        ax.legend(fontsize=7)
    fig.suptitle(title or f"{df['figure'].iloc[0]}: score vs A-VL parameters "
                 f"(n={int(full['n'])} samples)")
    save(fig, path)
