"""The paper's attention analyses (Figs 1, 3, 4, 5), read through the engine's hooks, and the
per-head analyses: coverage of every ranking signal (through the engine) and drift (read from
the stock model)."""

from avl_lab.experiments.analysis.collect import SampleAttention, collect
from avl_lab.experiments.analysis.head_measures import coverage, coverage_intervals, drift
from avl_lab.experiments.analysis.heads import HeadAttention, HeadProbe, collect_heads
from avl_lab.experiments.analysis.measures import (
    layer_ppci,
    mass_fraction,
    modality_attention,
    sparsity,
    step_ppci,
)
from avl_lab.experiments.analysis.probe import AttentionProbe
from avl_lab.experiments.analysis.signals import SignalProbe, SignalRanks, collect_signals

__all__ = [
    "AttentionProbe",
    "HeadAttention",
    "HeadProbe",
    "SampleAttention",
    "SignalProbe",
    "SignalRanks",
    "collect",
    "collect_heads",
    "collect_signals",
    "coverage",
    "coverage_intervals",
    "drift",
    "layer_ppci",
    "mass_fraction",
    "modality_attention",
    "sparsity",
    "step_ppci",
]
