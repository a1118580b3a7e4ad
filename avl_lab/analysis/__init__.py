"""The paper's attention analyses (Figs 1, 3, 4, 5), read through the engine's hooks."""

from avl_lab.analysis.collect import SampleAttention, collect
from avl_lab.analysis.measures import (
    layer_ppci,
    mass_fraction,
    modality_attention,
    sparsity,
    step_ppci,
)
from avl_lab.analysis.probe import AttentionProbe

__all__ = [
    "AttentionProbe",
    "SampleAttention",
    "collect",
    "layer_ppci",
    "mass_fraction",
    "modality_attention",
    "sparsity",
    "step_ppci",
]
