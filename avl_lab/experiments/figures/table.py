"""The paper's Table 2/3 on one model: score / stored / used of full, FastV, H2O, A-VL, the
head-wise baselines (SnapKV, PyramidKV, AdaKV), the in-LLM token methods (PyramidDrop,
SparseVLM, DART) and the pre-LLM ones (VisionZip, VisPruner, DivPrune) per task.

Each cell is one cached, resumable evaluation (:func:`avl_lab.evaluation.cached.evaluate_policy`);
the rows are :data:`METHODS` (about 50% stored cache for the compressed ones), the columns
the tasks. Each score carries a 95% percentile bootstrap interval over the task's samples
(``score_lo``, ``score_hi``; 1000 draws, seed 0). Writes ``table.csv`` (tidy) and ``table.md``
(the README's layout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from avl_lab.evaluation import EvalConfig
from avl_lab.evaluation.cached import evaluate_policy
from avl_lab.experiments.study.config import BootstrapConfig
from avl_lab.experiments.study.uncertainty import score_interval

__all__ = ["METHODS", "TASKS", "markdown", "run_table"]


def at_depth(layers: list[int], depth: int, paper_depth: int = 32, first: int = 0) -> list[int]:
    """Layers a method places in a ``paper_depth``-layer decoder (LLaVA-1.5-7B's 32), moved to a
    ``depth``-layer one: proportionally, rounded, kept increasing and ≥ ``first``
    (PyramidDrop's [8, 16, 24] → [1, 2, 3] on 4 layers; SparseVLM's [2, 6, 15] → [0, 1, 2])."""
    out: list[int] = []
    for layer in layers:
        at = max(first, round(layer * depth / paper_depth), out[-1] + 1 if out else first)
        out.append(min(at, depth - 1))
    return out


Spec = dict[str, Any] | Callable[[int], dict[str, Any]]

#: Row label -> policy: the paper's Table 2 (Full, FastV, H2O, A-VL = S=45 C=30 K=3) and the
#: settings of its Table 3 (S=40; + P=90; + T=50), A-VL with each other ranking signal of
#: VisionTiering (``signal``: the last prompt token's attention is the paper's), then the head-wise baselines at ~50% stored
#: (ratio 0.5 of the prompt per KV head; decode keeps every new row). Baselines as the official
#: code runs them: H2O and the text window T per KV head; "(shared)" rows keep one set of rows
#: for all heads, scored by the head-averaged attention (avl_lab's earlier baselines). The
#: in-LLM token methods at their papers' keep settings (PyramidDrop λ = 0.5; SparseVLM's 192-
#: and 64-token tables, without recycling; DART's 128 of 576 tokens), their layers placed for
#: the model's depth (:func:`at_depth`; a row given as a function of the depth), and at about
#: 50% stored. The pre-LLM methods (VisionZip, VisPruner, DivPrune) at 64 of 576 tokens
#: (DivPrune's own 9.8%) and at 45% of the image (~50% stored), positions renumbered as their
#: code does and kept, and VisionZip followed by A-VL's decode tiering.
METHODS: dict[str, Spec] = {
    "Full": {"name": "full"},
    "FastV keep=50": {"name": "fastv", "keep": 50},
    "H2O ratio=0.5 (per head)": {"name": "h2o", "ratio": 0.5},
    "H2O ratio=0.5 (shared)": {"name": "h2o", "ratio": 0.5, "per_head": False},
    "A-VL S=40": {"name": "avl", "S": 40},
    "A-VL": {"name": "avl", "S": 45, "C": 30, "K": 3},
    **{f"A-VL signal={s}": {"name": "avl", "S": 45, "C": 30, "K": 3, "signal": s}
       for s in ("window", "colsum", "attn_vnorm", "key_norm")},
    "A-VL + P=90": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90},
    "A-VL + P=90 T=50 (T per head)": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50},
    "A-VL + P=90 T=50 (T shared)": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50,
                                    "text_per_head": False},
    "SnapKV ratio=0.5": {"name": "snapkv", "ratio": 0.5},
    "PyramidKV ratio=0.5": {"name": "pyramidkv", "ratio": 0.5},
    "AdaKV ratio=0.5": {"name": "adakv", "ratio": 0.5},
    "PyramidDrop λ=0.5": lambda L: {"name": "pyramiddrop", "stages": at_depth([8, 16, 24], L, first=1),
                                    "lam": 0.5},
    "SparseVLM 192": lambda L: {"name": "sparsevlm", "stages": at_depth([2, 6, 15], L), "tokens": 192},
    "SparseVLM 64": lambda L: {"name": "sparsevlm", "stages": at_depth([2, 6, 15], L), "tokens": 64},
    "DART 128/576": lambda L: {"name": "dart", "layer": at_depth([2], L, first=1)[0], "keep": 22.2},
    "PyramidDrop λ=0.5, positions kept": lambda L: {
        "name": "pyramiddrop", "stages": at_depth([8, 16, 24], L, first=1), "lam": 0.5,
        "positions": "keep"},
    "SparseVLM 192, positions kept": lambda L: {
        "name": "sparsevlm", "stages": at_depth([2, 6, 15], L), "tokens": 192, "positions": "keep"},
    "PyramidDrop λ=0.6 (~50%)": lambda L: {"name": "pyramiddrop", "lam": 0.6,
                                           "stages": at_depth([8, 16, 24], L, first=1)},
    "DART 33% (~50%)": lambda L: {"name": "dart", "layer": at_depth([2], L, first=1)[0], "keep": 33.0},
    "VisionZip 64/576": {"name": "visionzip", "keep": 11.1, "contextual_share": 15.6},
    "VisPruner 64/576": {"name": "vispruner", "keep": 11.1},
    "DivPrune 9.8%": {"name": "divprune", "keep": 9.8},
    "VisionZip 45% (~50%)": {"name": "visionzip", "keep": 45.0, "contextual_share": 15.6},
    "VisPruner 45% (~50%)": {"name": "vispruner", "keep": 45.0},
    "DivPrune 45% (~50%)": {"name": "divprune", "keep": 45.0},
    "VisionZip 45%, positions kept": {"name": "visionzip", "keep": 45.0, "contextual_share": 15.6,
                                      "positions": "keep"},
    "VisPruner 45%, positions kept": {"name": "vispruner", "keep": 45.0, "positions": "keep"},
    "DivPrune 45%, positions kept": {"name": "divprune", "keep": 45.0, "positions": "keep"},
    "VisionZip 45%, kept + A-VL S=45 C=20 K=3": {
        "name": "visionzip", "keep": 45.0, "contextual_share": 15.6, "positions": "keep",
        "S": 45, "C": 20, "K": 3},
}


def spec_of(method: str, depth: int) -> dict[str, Any]:
    """The policy of row ``method`` on a decoder of ``depth`` layers."""
    spec = METHODS[method]
    return spec(depth) if callable(spec) else spec


def model_depth(cfg: EvalConfig) -> int:
    """The decoder layers of ``cfg``'s model (from its config; a random model is built)."""
    from avl_lab.evaluation.preflight import check_model

    layers = check_model(cfg)
    if layers is None:
        from avl_lab.engine.families import family_of
        from avl_lab.models import load

        model, _ = load(cfg.model.name, seed=cfg.model.seed)
        layers = len(family_of(model).decoder_layers(model))
    return layers


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
    depth = model_depth(base)
    cells = [(t, m) for t in (tasks or TASKS) for m in (methods or METHODS)]
    for task, method in tqdm(cells, desc="table", unit="cell", disable=not progress):
        cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, name=task))
        res = evaluate_policy(cfg, spec_of(method, depth), out)
        lo, hi = score_interval(res["out_dir"], res["metric"], BootstrapConfig())
        rows.append({"task": task, "method": method, **res, "score_lo": lo, "score_hi": hi})
    df = pd.DataFrame(rows)
    df.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown(df))
    return df


def markdown(df: pd.DataFrame) -> str:
    """``method | task1 | ...`` with ``score [95% interval] / stored / used`` in each cell."""
    tasks = list(dict.fromkeys(df["task"]))
    metrics = {t: df[df["task"] == t]["metric"].iloc[0] for t in tasks}
    head = "| method | " + " | ".join(f"{t} ({metrics[t]})" for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 1) + "|"]
    for method in dict.fromkeys(df["method"]):
        cells = []
        for t in tasks:
            r = df[(df["task"] == t) & (df["method"] == method)].iloc[0]
            cells.append(f"{r['score']:.3f} [{r['score_lo']:.2f}, {r['score_hi']:.2f}] / "
                         f"{r['stored']:.3f} / {r['used']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    n = int(df["n"].min())
    lines.append(f"\nscore [95% bootstrap interval over samples] / stored / used; n = {n} samples "
                 "per task.")
    return "\n".join(lines) + "\n"
