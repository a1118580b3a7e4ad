"""One analysis end to end: collect attention, tabulate, write ``<name>.csv`` and ``<name>.png``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from avl_lab.evaluation import EvalConfig
from avl_lab.experiments.analysis import head_measures, measures, plots
from avl_lab.experiments.analysis.collect import SampleAttention, collect
from avl_lab.experiments.analysis.heads import HeadAttention, collect_heads
from avl_lab.experiments.analysis.signals import SignalRanks, collect_signals

log = logging.getLogger(__name__)

#: Read through the engine's recording policy (head-averaged).
ENGINE_ANALYSES = ("modality-attention", "sparsity", "layer-ppci", "step-ppci")
#: Read per query head from the stock model (:mod:`avl_lab.experiments.analysis.heads`).
HEAD_ANALYSES = ("drift",)
#: Every ranking signal per KV head (:mod:`avl_lab.experiments.analysis.signals`).
SIGNAL_ANALYSES = ("coverage",)
ANALYSES = (*ENGINE_ANALYSES, "coverage", "drift")

Samples = list[SampleAttention] | list[HeadAttention] | list[SignalRanks]


def tabulate(name: str, samples: Samples, out: Path) -> pd.DataFrame:
    """Compute analysis ``name`` from recorded ``samples``; write its CSV and PNG to ``out``
    (and, for coverage, ``coverage_intervals.csv``: means over samples with intervals)."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; choose one of {list(ANALYSES)}")
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    if name == "coverage":
        df = head_measures.coverage(samples)
        head_measures.coverage_intervals(df).to_csv(out / "coverage_intervals.csv", index=False)
        if df.empty:  # e.g. `all` on a task without grid answers: an empty table, no figure
            log.warning("coverage: no sample has known answer tokens (the grid tasks on a model "
                        "with a square patch grid); %s not drawn", png.name)
        else:
            plots.plot_coverage(df, png)
    elif name == "drift":
        df = head_measures.drift(samples)
        plots.plot_drift(df, png)
    elif name == "modality-attention":
        df = measures.modality_attention(samples)
        plots.plot_modality(df, png)
    elif name == "sparsity":
        df = measures.sparsity(samples)
        plots.plot_sparsity(df, samples[0].prefill_image, png)
    elif name == "layer-ppci":
        df = measures.layer_ppci(samples)
        plots.plot_layer_ppci(df, png)
    else:
        df = measures.step_ppci(samples)
        plots.plot_step_ppci(df, png)
    df.to_csv(out / f"{name}.csv", index=False)
    return df


def collect_for(names: list[str], cfg: EvalConfig) -> dict[str, Samples]:
    """Each analysis in ``names`` → its recorded samples, collected once per kind."""
    kinds = {ENGINE_ANALYSES: collect, HEAD_ANALYSES: collect_heads, SIGNAL_ANALYSES: collect_signals}
    got = {kind: fn(cfg) for kind, fn in kinds.items() if set(names) & set(kind)}
    return {n: next(v for kind, v in got.items() if n in kind) for n in names}


def analyze(names: list[str], cfg: EvalConfig, out: Path) -> dict[str, pd.DataFrame]:
    """Collect attention once per kind for ``cfg`` and run each analysis in ``names``."""
    return {n: tabulate(n, samples, out) for n, samples in collect_for(names, cfg).items()}
