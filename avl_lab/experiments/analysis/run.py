"""One analysis end to end: collect attention, tabulate, write ``<name>.csv`` and ``<name>.png``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from avl_lab.evaluation import EvalConfig
from avl_lab.experiments.analysis import head_measures, measures, plots
from avl_lab.experiments.analysis.collect import SampleAttention, collect
from avl_lab.experiments.analysis.heads import HeadAttention, collect_heads

log = logging.getLogger(__name__)

#: Read through the engine's recording policy (head-averaged).
ENGINE_ANALYSES = ("modality-attention", "sparsity", "layer-ppci", "step-ppci")
#: Read per head from the stock model (:mod:`avl_lab.experiments.analysis.heads`).
HEAD_ANALYSES = ("coverage", "drift")
ANALYSES = ENGINE_ANALYSES + HEAD_ANALYSES


def tabulate(name: str, samples: list[SampleAttention] | list[HeadAttention], out: Path) -> pd.DataFrame:
    """Compute analysis ``name`` from recorded ``samples``; write its CSV and PNG to ``out``."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; choose one of {list(ANALYSES)}")
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    if name == "coverage":
        df = head_measures.coverage(samples)
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


def analyze(names: list[str], cfg: EvalConfig, out: Path) -> dict[str, pd.DataFrame]:
    """Collect attention once per kind for ``cfg`` and run each analysis in ``names``."""
    engine = collect(cfg) if set(names) & set(ENGINE_ANALYSES) else []
    heads = collect_heads(cfg) if set(names) & set(HEAD_ANALYSES) else []
    return {n: tabulate(n, heads if n in HEAD_ANALYSES else engine, out) for n in names}
