"""The paper's observations as tidy tables: Fig 1 (modality shares), Fig 3 (sparsity),
Fig 4 (PPCI across layers), Fig 5 (PPCI across decode steps)."""

from __future__ import annotations

import pandas as pd
import torch

from avl_lab.experiments.analysis.collect import SHARES, SampleAttention
from avl_lab.metrics import ppci


def modality_attention(samples: list[SampleAttention]) -> pd.DataFrame:
    """Per decode step and modality: attention share, averaged over layers and samples."""
    rows = []
    for s in samples:
        for t, per_layer in enumerate(s.shares, start=1):
            mean = per_layer.mean(0)  # over layers
            for name, value in zip(SHARES, mean.tolist(), strict=True):
                rows.append({"sample": s.id, "step": t, "modality": name, "share": value})
    return pd.DataFrame(rows)


def mass_fraction(attention: torch.Tensor, mass: float = 0.8) -> float:
    """Smallest fraction of tokens whose attention sums to ``mass`` of the total."""
    a = attention.double()
    total = float(a.sum())
    if total <= 0 or a.numel() == 0:
        return float("nan")
    cum = torch.cumsum(torch.sort(a, descending=True).values / total, 0)
    k = int(torch.searchsorted(cum, torch.tensor(mass - 1e-6, dtype=cum.dtype))) + 1  # fp32 sums
    return min(k, a.numel()) / a.numel()


def sparsity(samples: list[SampleAttention], mass: float = 0.8) -> pd.DataFrame:
    """Per sample and layer: the smallest fraction of image tokens holding ``mass`` of the
    image attention of the last prompt token."""
    return pd.DataFrame([
        {"sample": s.id, "layer": layer, "fraction": mass_fraction(vec, mass)}
        for s in samples for layer, vec in enumerate(s.prefill_image)
    ])


def layer_ppci(samples: list[SampleAttention], ps=(10, 30, 50), ref_layer: int = 0) -> pd.DataFrame:
    """p% PPCI between layer ``ref_layer``'s image attention and each layer's."""
    return pd.DataFrame([
        {"sample": s.id, "layer": layer, "p": p,
         "ppci": ppci(s.prefill_image[ref_layer], vec, p)}
        for s in samples for layer, vec in enumerate(s.prefill_image) for p in ps
    ])


def step_ppci(samples: list[SampleAttention], ps=(30, 50)) -> pd.DataFrame:
    """p% PPCI between decode step 0 (the prompt's last token) and each later step, per layer."""
    rows = []
    for s in samples:
        for t, per_layer in enumerate(s.decode_image, start=1):
            for layer, vec in enumerate(per_layer):
                for p in ps:
                    rows.append({"sample": s.id, "step": t, "layer": layer, "p": p,
                                 "ppci": ppci(s.prefill_image[layer], vec, p)})
    return pd.DataFrame(rows)
