"""Collect issue 32's measurements (docs/issue32/measure.sh) into tables and one figure.

    python docs/issue32/summarize.py RUNS OUT

RUNS holds ``<model>/coverage/<task>/coverage_intervals.csv`` and ``<model>/table/table.csv``;
OUT receives ``coverage.csv`` (every signal x layer x head x S, with intervals, per model and
task), ``coverage.png`` (head-average coverage at S=45), ``table.csv`` and ``summary.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from avl_lab.evaluation.plotting import pyplot, save
from avl_lab.experiments.analysis.head_measures import complete_in_every_layer
from avl_lab.experiments.figures.table import markdown
from avl_lab.experiments.study import bootstrap
from avl_lab.experiments.study.config import BootstrapConfig
from avl_lab.experiments.study.uncertainty import per_sample, score_interval

S = 45


def load_coverage(runs: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every group's means with intervals, the share of samples complete in every layer)."""
    frames, whole = [], []
    for path in sorted(runs.glob("*/coverage/*/coverage_intervals.csv")):
        where = {"model": path.parts[-4], "task": path.parts[-2]}
        frames.append(pd.read_csv(path).assign(**where))
        whole.append(complete_in_every_layer(pd.read_csv(path.parent / "coverage.csv")).assign(**where))
    df = pd.concat(frames, ignore_index=True)
    return df.assign(head=df["head"].astype(str)), pd.concat(whole, ignore_index=True)


def coverage_markdown(df: pd.DataFrame, whole: pd.DataFrame) -> str:
    """Per model: rows (task, signal); per layer the head average's coverage [interval], then
    the best KV head's of the layer where it is highest, then the share of samples whose answer
    tokens every layer keeps (head average)."""
    out = []
    layers = sorted(df["layer"].unique())
    whole = whole[whole["S"] == S].set_index(["model", "task", "signal"])["complete"]
    for model, m in df[df["S"] == S].groupby("model", sort=False):
        out.append(f"\n**{model}**, top {S}% by each signal (random: "
                   f"{m['random'].mean():.2f}; n = {int(m['n'].min())} samples per task)\n")
        out.append("| task | signal | " + " | ".join(f"layer {i}" for i in layers)
                   + " | mean over layers | best KV head (layer) | answer whole in every layer |")
        out.append("|---" * (len(layers) + 5) + "|")
        for task, t in m.groupby("task", sort=False):
            for signal, g in t.groupby("signal", sort=False):
                mean = g[g["head"] == "mean"].set_index("layer")
                cells = [f"{mean.loc[i, 'coverage']:.2f} [{mean.loc[i, 'lo']:.2f}, {mean.loc[i, 'hi']:.2f}]"
                         for i in layers]
                heads = g[g["head"] != "mean"]
                best = heads.loc[heads["coverage"].idxmax()]
                out.append(f"| {task} | {signal} | " + " | ".join(cells)
                           + f" | {mean['coverage'].mean():.2f} | {best['coverage']:.2f} "
                           f"(L{int(best['layer'])} h{best['head']}) | "
                           f"{whole[(model, task, signal)]:.2f} |")
    return "\n".join(out) + "\n"


def plot(df: pd.DataFrame, path: Path) -> None:
    plt, sns = pyplot()
    sub = df[(df["S"] == S) & (df["head"] == "mean")]
    models, tasks = list(dict.fromkeys(sub["model"])), list(dict.fromkeys(sub["task"]))
    signals = list(dict.fromkeys(sub["signal"]))
    fig, axes = plt.subplots(len(models), len(tasks), figsize=(4 * len(tasks), 3 * len(models)),
                             squeeze=False)
    rand = float(sub["random"].mean())
    for i, model in enumerate(models):
        for j, task in enumerate(tasks):
            g = sub[(sub["model"] == model) & (sub["task"] == task)]
            grid = g.pivot(index="signal", columns="layer", values="coverage").loc[signals]
            sns.heatmap(grid, ax=axes[i][j], annot=True, fmt=".2f", cmap="RdBu", center=rand,
                        vmin=0, vmax=1, cbar=False)
            axes[i][j].set(title=f"{model} / {task}", ylabel="" if j else "signal")
    fig.suptitle(f"answer tokens in the top {S}% by each signal (head average; random {rand:.2f})")
    fig.tight_layout()
    save(fig, path)


def no_core(runs: Path) -> pd.DataFrame:
    """A-VL S=45 without the core tier, per model, signal and task (``<model>/no_core/<signal>/
    <task>/summary.json``), with the score's bootstrap interval."""
    rows = []
    for path in sorted(runs.glob("*/no_core/*/*/summary.json")):
        res = json.loads(path.read_text())
        lo, hi = score_interval(str(path.parent), res["metric"], BootstrapConfig())
        rows.append({"model": path.parts[-5], "method": f"A-VL S=45 signal={path.parts[-3]}",
                     "task": path.parts[-2], **{k: res[k] for k in ("score", "stored", "used", "n", "metric")},
                     "score_lo": lo, "score_hi": hi})
    return pd.DataFrame(rows)


def paired(table: pd.DataFrame, base: str = "A-VL") -> pd.DataFrame:
    """Each ``A-VL signal=...`` row minus ``base`` (the paper's signal) per model and task: the
    score difference on the same samples with a paired 95% bootstrap interval (1000 draws)."""
    cfg = BootstrapConfig()
    rows = []
    for (model, task), t in table.groupby(["model", "task"], sort=False):
        ref = t[t["method"] == base].iloc[0]
        a = per_sample(ref["out_dir"], ref["metric"])
        for _, r in t[t["method"].str.startswith(f"{base} signal=")].iterrows():
            b = per_sample(r["out_dir"], r["metric"])
            ids = sorted(set(a) & set(b))
            diff = np.array([[b[i][0] - a[i][0] for i in ids]])
            lo, hi = bootstrap.interval(bootstrap.resample(diff, bootstrap.draws(len(ids), cfg.resamples, cfg.seed))[0])
            rows.append({"model": model, "task": task, "signal": r["method"].split("=", 1)[1],
                         "difference": float(diff.mean()), "lo": float(lo), "hi": float(hi), "n": len(ids)})
    return pd.DataFrame(rows)


def paired_markdown(df: pd.DataFrame) -> str:
    out = []
    for model, m in df.groupby("model", sort=False):
        tasks = list(dict.fromkeys(m["task"]))
        out += [f"\n**{model}**\n", "| signal | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for signal, g in m.groupby("signal", sort=False):
            g = g.set_index("task")
            cells = [f"{g.loc[t, 'difference']:+.3f} [{g.loc[t, 'lo']:+.2f}, {g.loc[t, 'hi']:+.2f}]" for t in tasks]
            out.append(f"| {signal} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(runs: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cov, whole = load_coverage(runs)
    cov.to_csv(out / "coverage.csv", index=False)
    plot(cov, out / "coverage.png")
    tables = [pd.read_csv(p).assign(model=p.parts[-3]) for p in sorted(runs.glob("*/table/table.csv"))]
    table = pd.concat(tables, ignore_index=True)
    table.drop(columns=["out_dir"]).to_csv(out / "table.csv", index=False)
    parts = ["# Issue 32: ranking signals, measured\n", "## Coverage\n", coverage_markdown(cov, whole),
             "## Table 2/3 rows\n"]
    for model, t in table.groupby("model", sort=False):
        parts += [f"\n**{model}**\n", markdown(t)]
    diffs = paired(table)
    diffs.to_csv(out / "paired.csv", index=False)
    parts += ["\n## Each signal minus the paper's (A-VL S=45 C=30 K=3), same samples, paired 95% "
              "bootstrap intervals\n", paired_markdown(diffs)]
    nc = no_core(runs)
    if not nc.empty:
        nc.to_csv(out / "no_core.csv", index=False)
        parts.append("\n## A-VL S=45 without the core tier (the prefill ranking alone)\n")
        for model, t in nc.groupby("model", sort=False):
            parts += [f"\n**{model}**\n", markdown(t)]
    (out / "summary.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
