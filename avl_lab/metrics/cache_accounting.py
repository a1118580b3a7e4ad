"""The run-level mean of per-sample cache fractions ("stored" / "used", paper Table 3).

The per-sample fractions themselves come from the engine (:mod:`avl_lab.engine.stats`, the
one implementation of the accounting: for layer l and decode step t, stored/full and
used/full, averaged over layers, KV heads and the steps before the sample's end of
sequence). :class:`CacheAccounting` averages them over an evaluation's samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

__all__ = ["CacheAccounting"]

_TOL = 1e-9


def _fractions(x: float | Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if torch.isnan(t).any() or (t < 0).any() or (t > 1 + _TOL).any():
        raise ValueError(f"CacheAccounting: `{name}` fractions must lie in [0, 1]")
    return t


class CacheAccounting(Metric):
    """Streaming mean of per-sample cache fractions; states are summed across processes.

    ``update(stored, used)`` takes one sample's fractions (floats) or a batch (1-D);
    ``compute()`` returns ``{"stored": tensor, "used": tensor}``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("stored_sum", "used_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        stored: float | Sequence[float] | torch.Tensor,
        used: float | Sequence[float] | torch.Tensor,
    ) -> None:
        s, u = _fractions(stored, "stored"), _fractions(used, "used")
        if s.numel() != u.numel():
            raise ValueError(f"CacheAccounting: {s.numel()} stored vs {u.numel()} used values")
        self.stored_sum += s.sum()
        self.used_sum += u.sum()
        self.count += s.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        n = int(self.count)
        if n == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return {"stored": nan, "used": nan.clone()}
        return {"stored": self.stored_sum / n, "used": self.used_sum / n}
