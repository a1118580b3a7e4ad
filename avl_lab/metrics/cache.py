"""Cache accounting: the "stored" and "used" fractions of paper Table 3 (DESIGN.md).

For layer l and decode step t, ``full(l, t)`` is the number of KV rows the Full policy
would hold, ``stored(l, t)`` the rows physically held, ``used(l, t)`` the rows that took
part in that step's attention. A sample's ``stored`` is the mean over (l, t) of
``stored/full`` (likewise ``used``); a run reports the mean over samples.
:func:`cache_fraction` is the per-sample reduction, :class:`CacheAccounting` the streaming
run-level mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

__all__ = ["CacheAccounting", "cache_fraction", "cache_summary"]

_TOL = 1e-9


def cache_fraction(rows: torch.Tensor | Sequence, full: torch.Tensor | Sequence) -> float:
    """Mean over layers and steps of ``rows / full``.

    Parameters
    ----------
    rows : tensor, shape (L, T)
        Rows stored (or used) per layer and decode step.
    full : tensor, shape (L, T) or (T,)
        Rows the Full policy would hold; broadcast over layers when 1-D.

    Returns
    -------
    float
        The fraction, in [0, 1].
    """
    r = torch.as_tensor(rows, dtype=torch.float64)
    f = torch.as_tensor(full, dtype=torch.float64)
    if r.numel() == 0:
        raise ValueError("cache_fraction: `rows` is empty")
    if (f <= 0).any():
        raise ValueError("cache_fraction: every `full` count must be positive")
    if (r < 0).any() or (r > f + _TOL).any():
        raise ValueError("cache_fraction: `rows` must lie in [0, full]")
    return float((r / f).mean())


def _fractions(x: float | Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if torch.isnan(t).any() or (t < 0).any() or (t > 1 + _TOL).any():
        raise ValueError(f"CacheAccounting: `{name}` fractions must lie in [0, 1]")
    return t


def cache_summary(stored: Sequence[float], used: Sequence[float]) -> dict[str, float]:
    """Run-level means of per-sample ``stored`` and ``used`` fractions."""
    s, u = _fractions(stored, "stored"), _fractions(used, "used")
    if s.numel() != u.numel() or s.numel() == 0:
        raise ValueError("cache_summary: need equally many (>0) stored and used values")
    return {"stored": float(s.mean()), "used": float(u.mean())}


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
