"""Cache accounting: stored and used rows as fractions of what the Full policy would hold."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class CacheStats:
    """Cache accounting of one ``generate`` call (see DESIGN.md "Cache accounting").

    For layer l and decode step t: full = prompt tokens + t, stored = valid rows held,
    used = rows that took part in the step's attention. Fractions are means over l and t.

    Attributes
    ----------
    stored, used : float
        Means over samples of the per-sample fractions.
    per_sample_stored, per_sample_used : list[float]
        One value per input sample (beams / returned sequences of a sample averaged).
    per_layer_stored, per_layer_used : list[float]
        Means over samples and steps, per layer.
    steps : int
        Decode steps measured (0: only the state after prefill was measured).
    """

    stored: float = 1.0
    used: float = 1.0
    per_sample_stored: list[float] = field(default_factory=list)
    per_sample_used: list[float] = field(default_factory=list)
    per_layer_stored: list[float] = field(default_factory=list)
    per_layer_used: list[float] = field(default_factory=list)
    steps: int = 0


class StatsRecorder:
    """Accumulates stored/full and used/full per (layer, batch row) on the device, no syncs."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.stored: Tensor | None = None  # [L, B] sums of ratios
        self.used: Tensor | None = None
        self.counts = [0] * num_layers

    def record(self, layer_idx: int, stored: Tensor, used: Tensor, full: Tensor) -> None:
        """Add one step of layer ``layer_idx``: ``stored``/``used``/``full`` are ``[B]`` counts."""
        if self.stored is None:
            shape = (self.num_layers, stored.shape[0])
            self.stored = torch.zeros(shape, dtype=torch.float64, device=stored.device)
            self.used = torch.zeros_like(self.stored)
        full = full.to(torch.float64)
        self.stored[layer_idx] += stored / full
        self.used[layer_idx] += used / full
        self.counts[layer_idx] += 1

    def finalize(self, num_samples: int) -> CacheStats:
        """Average over steps, then over the rows of each sample, then over samples."""
        if self.stored is None or not self.counts[0]:
            return CacheStats()
        n = torch.tensor(self.counts, dtype=torch.float64, device=self.stored.device)[:, None]
        stored, used = self.stored / n, self.used / n  # [L, B]
        groups = stored.shape[1] // num_samples  # beams / returned sequences per sample
        s_rows = stored.view(self.num_layers, num_samples, groups).mean(dim=(0, 2))
        u_rows = used.view(self.num_layers, num_samples, groups).mean(dim=(0, 2))
        return CacheStats(
            stored=float(s_rows.mean()),
            used=float(u_rows.mean()),
            per_sample_stored=s_rows.tolist(),
            per_sample_used=u_rows.tolist(),
            per_layer_stored=stored.mean(1).tolist(),
            per_layer_used=used.mean(1).tolist(),
            steps=self.counts[0],
        )
