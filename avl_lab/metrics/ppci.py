"""PPCI, the p-percentile concordance index of the A-VL paper (Eq. 2).

For two score vectors over the same N tokens (e.g. head-averaged attention of two layers or
two decode steps), let T1 and T2 be the sets of the top p% tokens of each;
``p% PPCI = |T1 ∩ T2| / (p% · N)``.

Conventions (the paper leaves them open): ``p`` is a percentage in (0, 100]; the set size
is ``k = max(1, floor(p·N/100 + 0.5))`` (round half up, at least one token), and the
denominator is that same ``k`` so PPCI lies in [0, 1]; ties are broken by token index
(lower index ranks first), so results are deterministic. NaN scores are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics import Metric

__all__ = ["PPCI", "ppci", "ppci_rows", "top_count"]

ArrayLike = torch.Tensor | Sequence[float]


def top_count(n: int, p: float) -> int:
    """Number of tokens in the top ``p`` percent of ``n`` (round half up, at least 1)."""
    if not 0.0 < p <= 100.0:
        raise ValueError(f"ppci: `p` is a percentage in (0, 100], got {p}")
    if n <= 0:
        raise ValueError(f"ppci: need at least one token, got N={n}")
    return max(1, min(n, math.floor(p * n / 100.0 + 0.5)))


def _as_scores(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim == 0:
        raise ValueError(f"ppci: `{name}` must have a token dimension, got a scalar")
    if torch.isnan(t).any():
        raise ValueError(f"ppci: `{name}` contains NaN")
    return t


def _top_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)  # (..., N)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, order[..., :k], True)


def ppci_rows(scores_a: ArrayLike, scores_b: ArrayLike, p: float) -> torch.Tensor:
    """PPCI along the last dimension.

    Parameters
    ----------
    scores_a, scores_b : tensor or array-like, shape (..., N)
        Scores of the same N tokens, with identical shapes.
    p : float
        Percentage in (0, 100].

    Returns
    -------
    torch.Tensor, shape (...)
        float64 PPCI per row.
    """
    a, b = _as_scores(scores_a, "scores_a"), _as_scores(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"ppci: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    k = top_count(a.shape[-1], p)
    both = _top_mask(a, k) & _top_mask(b, k)  # (..., N)
    return both.sum(-1).to(torch.float64) / k


def ppci(scores_a: ArrayLike, scores_b: ArrayLike, p: float) -> float:
    """p% PPCI of two 1-D score vectors (paper Eq. 2); see the module docstring.

    Examples
    --------
    >>> ppci([0.4, 0.3, 0.2, 0.1], [0.1, 0.3, 0.2, 0.4], 50)
    0.5
    """
    a = _as_scores(scores_a, "scores_a")
    if a.ndim != 1:
        raise ValueError(f"ppci: expects 1-D scores, got shape {tuple(a.shape)}; use ppci_rows")
    return float(ppci_rows(a, scores_b, p))


class PPCI(Metric):
    """Streaming mean PPCI over rows (e.g. over samples, layers or steps).

    ``update(scores_a, scores_b)`` takes tensors of shape (..., N); every row adds one term.

    Parameters
    ----------
    p : float
        Percentage in (0, 100].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, p: float, **kwargs) -> None:
        super().__init__(**kwargs)
        top_count(1, p)  # validates p
        self.p = p
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores_a: ArrayLike, scores_b: ArrayLike) -> None:
        rows = ppci_rows(scores_a, scores_b, self.p).reshape(-1)
        self.total += rows.sum().to(self.total.device)
        self.count += rows.numel()

    def compute(self) -> torch.Tensor:
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count
