"""Markdown tables from ``docs/issue19/measure.sh``'s results: one or more result folders
side by side (``python docs/issue19/summarize.py runs/issue19/guided runs/issue19/unguided``).

Prints: quality under full (200 per task), Table 2/3 plus the other baselines (score / stored /
used), coverage (head average vs the best head, per layer, S=45), drift (head average, per
layer), Figures 9/10 points and the Pareto front. Missing parts print as "-".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def _summary(path: Path) -> dict | None:
    f = path / "summary.json"
    return json.loads(f.read_text()) if f.exists() else None


def _cell(d: dict | None, full: bool = True) -> str:
    if d is None:
        return "-"
    if not full:
        return f"{d['score']:.3f}"
    return f"{d['score']:.3f} / {d['stored']:.3f} / {d['used']:.3f}"


def quality(dirs: list[Path]) -> str:
    tasks = sorted({p.name for d in dirs for p in (d / "full200").glob("*")})
    lines = ["| task | " + " | ".join(d.name for d in dirs) + " |", "|---|" + "---|" * len(dirs)]
    for t in tasks:
        cells = [_cell(_summary(d / "full200" / t), full=False) for d in dirs]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(d: Path) -> str:
    rows: dict[str, dict[str, str]] = {}
    f = d / "table" / "table.csv"
    if f.exists():
        for r in pd.read_csv(f).itertuples():
            rows.setdefault(r.method, {})[r.task] = f"{r.score:.3f} / {r.stored:.3f} / {r.used:.3f}"
    for p in sorted((d / "baselines").glob("*")):
        for t in sorted(p.glob("*")):
            s = _summary(t)
            if s:
                rows.setdefault(f"{p.name} ratio=0.5", {})[t.name] = _cell(s)
    tasks = sorted({t for r in rows.values() for t in r})
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    lines += [f"| {m} | " + " | ".join(r.get(t, "-") for t in tasks) + " |" for m, r in rows.items()]
    return "\n".join(lines)


def coverage(d: Path, S: int = 45) -> str:
    f = d / "analysis" / "coverage.csv"
    if not f.exists():
        return "-"
    df = pd.read_csv(f)
    df = df[df.S == S]
    df["head"] = df["head"].astype(str)
    per = df.groupby(["layer", "head"])[["coverage", "answer_share", "blank_share"]].mean()
    lines = [f"| layer | head mean: coverage (S={S}) | answer share | blank share | best head: "
             "coverage | random |", "|---|---|---|---|---|---|"]
    rnd = df.random.mean()
    for layer in sorted(df.layer.unique()):
        m = per.loc[(layer, "mean")]
        heads = per.loc[layer].drop("mean")
        best = heads.coverage.idxmax()
        lines.append(f"| {layer} | {m.coverage:.2f} | {m.answer_share:.2f} | {m.blank_share:.2f} "
                     f"| {heads.coverage.max():.2f} (head {best}) | {rnd:.2f} |")
    return "\n".join(lines)


def drift(d: Path) -> str:
    f = d / "analysis" / "drift.csv"
    if not f.exists():
        return "-"
    df = pd.read_csv(f)
    df["head"] = df["head"].astype(str)
    m = df[df["head"] == "mean"]
    ppci = m.pivot_table(index="layer", columns="p", values="ppci", aggfunc="mean")
    share = m.groupby("layer").answer_share.mean()
    peak = df[df["head"] != "mean"].groupby("layer").peak_share.mean()
    lines = ["| layer | " + " | ".join(f"{p}% PPCI" for p in ppci.columns) +
             " | answer share in decode | mean peak share (heads) |",
             "|---|" + "---|" * (len(ppci.columns) + 2)]  # fmt: skip
    for layer in ppci.index:
        vals = " | ".join(f"{ppci.loc[layer, p]:.2f}" for p in ppci.columns)
        lines.append(f"| {layer} | {vals} | {share[layer]:.2f} | {peak[layer]:.2f} |")
    return "\n".join(lines)


def figure(d: Path, name: str) -> str:
    f = d / name / f"{name}.csv"
    if not f.exists():
        return "-"
    df = pd.read_csv(f)
    return "\n".join(f"- {r.panel}, {r.method} {r.param}={r.value:g}: {r.score:.3f} (used {r.used:.2f})"
                     for r in df.itertuples())  # fmt: skip


def pareto(d: Path) -> str:
    f = d / "pareto" / "pareto.csv"
    if not f.exists():
        return "-"
    df = pd.read_csv(f)
    df = df[df.front].drop_duplicates(["S", "C", "K", "P", "T"]).sort_values("used")
    return "\n".join(f"- S={r.S} C={r.C} K={r.K} P={r.P} T={r.T}: used {r.used:.2f}, "
                     f"score {r.score:.3f}" for r in df.itertuples())  # fmt: skip


def main(argv: list[str]) -> None:
    dirs = [Path(a) for a in argv]
    print("## Quality under full\n\n" + quality(dirs))
    for d in dirs:
        print(f"\n## {d.name}\n\n### Table 2/3 + baselines\n\n{table(d)}")
        print(f"\n### Coverage\n\n{coverage(d)}\n\n### Drift\n\n{drift(d)}")
        for name in ("fig9", "fig10"):
            print(f"\n### {name}\n\n{figure(d, name)}")
        print(f"\n### Pareto front\n\n{pareto(d)}")


if __name__ == "__main__":
    main(sys.argv[1:])
