"""One analysis end to end: collect attention, tabulate, write ``<name>.csv`` and ``<name>.png``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from avl_lab.analysis import measures, plots
from avl_lab.analysis.collect import SampleAttention, collect
from avl_lab.evaluation import EvalConfig

ANALYSES = ("modality-attention", "sparsity", "layer-ppci", "step-ppci")


def tabulate(name: str, samples: list[SampleAttention], out: Path) -> pd.DataFrame:
    """Compute analysis ``name`` from recorded ``samples``; write its CSV and PNG to ``out``."""
    if name not in ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; choose one of {list(ANALYSES)}")
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    if name == "modality-attention":
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
    """Collect attention once for ``cfg`` and run each analysis in ``names``."""
    samples = collect(cfg)
    return {n: tabulate(n, samples, out) for n in names}
