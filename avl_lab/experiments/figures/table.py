"""The paper's Table 2/3 on one model: score / stored / used of full, FastV, H2O, A-VL and the
head-wise baselines (SnapKV, PyramidKV, AdaKV) per task.

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
#: settings of its Table 3 (S=40; + P=90; + T=50), then the head-wise baselines at ~50% stored
#: (ratio 0.5 of the prompt per KV head; decode keeps every new row). Baselines as the official
#: code runs them: H2O and the text window T per KV head; "(shared)" rows keep one set of rows
#: for all heads, scored by the head-averaged attention (avl_lab's earlier baselines).
METHODS: dict[str, dict[str, Any]] = {
    "Full": {"name": "full"},
    "FastV keep=50": {"name": "fastv", "keep": 50},
    "H2O ratio=0.5 (per head)": {"name": "h2o", "ratio": 0.5},
    "H2O ratio=0.5 (shared)": {"name": "h2o", "ratio": 0.5, "per_head": False},
    "A-VL S=40": {"name": "avl", "S": 40},
    "A-VL": {"name": "avl", "S": 45, "C": 30, "K": 3},
    "A-VL + P=90": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90},
    "A-VL + P=90 T=50 (T per head)": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50},
    "A-VL + P=90 T=50 (T shared)": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50,
                                    "text_per_head": False},
    "SnapKV ratio=0.5": {"name": "snapkv", "ratio": 0.5},
    "PyramidKV ratio=0.5": {"name": "pyramidkv", "ratio": 0.5},
    "AdaKV ratio=0.5": {"name": "adakv", "ratio": 0.5},
}
#: Default columns: the embedded tasks.
TASKS = ["synth-docvqa", "synth-textvqa", "synth-ocr", "synth-caption", "easy-vqa"]


def run_table(base: EvalConfig, out: Path, tasks: list[str] | None = None,
              progress: bool = True, methods: list[str] | None = None) -> pd.DataFrame:
    """Evaluate every method of :data:`METHODS` (or the row labels ``methods``, in that order)
    on every task (``base`` gives the model, sample count and generation); write
    ``<out>/table.csv`` and ``<out>/table.md``."""
    unknown = [m for m in methods or [] if m not in METHODS]
    if unknown:
        raise ValueError(f"`methods`: unknown rows {unknown}; rows: {list(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    cells = [(t, m) for t in (tasks or TASKS) for m in (methods or METHODS)]
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
