"""H2O over all rows: a fixed cache budget split into recent rows and heavy hitters.

The budget is a fraction of the prompt's full cache (``ratio``) or a number of rows
(``budget``); 75% of it holds the most recent rows, 25% the rows with the highest accumulated
attention (summed over ALL prompt queries in prefill, then over every decode step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avl_lab.policies.base import (
    Context,
    Policy,
    budget_rows,
    check_budget,
    newest_rows,
    top_rows,
)
from avl_lab.policies.registry import register


@register("h2o", example={"ratio": 0.5})
@dataclass
class H2O(Policy):
    """Parameters
    ----------
    ratio : float, optional
        Budget as a fraction (0, 1] of the prompt rows (default 0.5 when ``budget`` is unset).
    budget : int, optional
        Budget as a number of rows.
    recent : float
        Share of the budget for the most recent rows (paper: 0.75).
    """

    ratio: float | None = None
    budget: int | None = None
    recent: float = 0.75
    needs_colsum = True
    needs_probs = True

    def __post_init__(self) -> None:
        if self.ratio is None and self.budget is None:
            self.ratio = 0.5
        check_budget(self.ratio, self.budget)
        if not 0 < self.recent < 1:
            raise ValueError(f"`recent` must be a fraction in (0, 1), got {self.recent!r}")

    def setup(self, cache, ctx: Context) -> None:
        cache.register_state("h2o_acc", 0.0, torch.float32)

    def _keep(self, layer, ctx: Context):
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        valid = layer.valid
        if not bool((valid.sum(1) > total).any()):
            return None
        n_recent = (total.to(torch.float64) * self.recent).ceil().long().clamp(min=1)
        recent = newest_rows(valid, n_recent)
        heavy = top_rows(layer.state("h2o_acc"), valid & ~recent, total - n_recent)
        return recent | heavy

    def prefill_keep(self, layer, ctx: Context):
        layer.set_state("h2o_acc", ctx.colsum.float())
        return self._keep(layer, ctx)

    def decode_keep(self, layer, ctx: Context):
        layer.set_state("h2o_acc", layer.state("h2o_acc") + ctx.probs)
        return self._keep(layer, ctx)
