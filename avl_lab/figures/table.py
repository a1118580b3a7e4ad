"""The paper's Table 2/3 on one model: score / stored / used of full, FastV, H2O and A-VL per task.

Each cell is one cached, resumable evaluation (:func:`avl_lab.evaluation.cached.evaluate_policy`);
the rows are :data:`METHODS` (about 50% stored cache for the compressed ones), the columns
the tasks. Writes ``table.csv`` (tidy) and ``table.md`` (the README's layout).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.cached import evaluate_policy

__all__ = ["METHODS", "TASKS", "markdown", "run_table"]

#: Row label -> policy: the paper's Table 2 (Full, FastV, H2O, A-VL = S=45 C=30 K=3) and the
#: settings of its Table 3 (S=40; + P=90; + T=50). Baselines as the official code runs them.
METHODS: dict[str, dict[str, Any]] = {
    "Full": {"name": "full"},
    "FastV keep=50": {"name": "fastv", "keep": 50},
    "H2O ratio=0.5": {"name": "h2o", "ratio": 0.5},
    "A-VL S=40": {"name": "avl", "S": 40},
    "A-VL": {"name": "avl", "S": 45, "C": 30, "K": 3},
    "A-VL + P=90": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90},
    "A-VL + P=90 T=50": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50},
}
#: Default columns: the embedded tasks.
TASKS = ["synth-docvqa", "synth-textvqa", "synth-ocr", "synth-caption", "easy-vqa"]


def run_table(base: EvalConfig, out: Path, tasks: list[str] | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Evaluate every method of :data:`METHODS` on every task (``base`` gives the model,
    sample count and generation); write ``<out>/table.csv`` and ``<out>/table.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    cells = [(t, m) for t in (tasks or TASKS) for m in METHODS]
    for task, method in tqdm(cells, desc="table", unit="cell", disable=not progress):
        cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, name=task))
        res = evaluate_policy(cfg, METHODS[method], out)
        rows.append({"task": task, "method": method, **res})
    df = pd.DataFrame(rows)
    df.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown(df))
    return df


def markdown(df: pd.DataFrame) -> str:
    """``method | task1 | ...`` with ``score / stored / used`` in each cell."""
    tasks = list(dict.fromkeys(df["task"]))
    metrics = {t: df[df["task"] == t]["metric"].iloc[0] for t in tasks}
    head = "| method | " + " | ".join(f"{t} ({metrics[t]})" for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 1) + "|"]
    for method in dict.fromkeys(df["method"]):
        cells = []
        for t in tasks:
            r = df[(df["task"] == t) & (df["method"] == method)].iloc[0]
            cells.append(f"{r['score']:.3f} / {r['stored']:.3f} / {r['used']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    n = int(df["n"].min())
    lines.append(f"\nscore / stored / used; n = {n} samples per task.")
    return "\n".join(lines) + "\n"
