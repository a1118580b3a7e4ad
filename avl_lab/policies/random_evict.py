"""Random: the same budget as the baselines, random rows (a sanity floor)."""

from __future__ import annotations

from dataclasses import dataclass

from avl_lab.policies.base import (
    Context,
    Policy,
    budget_rows,
    check_budget,
    hash_uniform,
    newest_rows,
    top_rows,
)
from avl_lab.policies.registry import register


@register("random", example={"ratio": 0.5, "seed": 0})
@dataclass
class RandomEvict(Policy):
    """Keep a random subset of rows within the budget; the newest row is always kept.

    Draws depend only on (seed, layer, logical position), so a row evicts the same rows alone
    or in a batch.

    Parameters
    ----------
    ratio : float, optional
        Budget as a fraction (0, 1] of the prompt rows (default 0.5 when ``budget`` is unset).
    budget : int, optional
        Budget in rows.
    seed : int
        Seed of the draws.
    """

    ratio: float | None = None
    budget: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ratio is None and self.budget is None:
            self.ratio = 0.5
        check_budget(self.ratio, self.budget)

    def _keep(self, layer, ctx: Context):
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        valid = layer.valid
        if not bool((valid.sum(1) > total).any()):
            return None
        newest = newest_rows(valid, 1)
        draw = hash_uniform(layer.pos, layer.layer_idx, self.seed)
        return newest | top_rows(draw, valid & ~newest, total - 1)

    def prefill_keep(self, layer, ctx: Context):
        return self._keep(layer, ctx)

    def decode_keep(self, layer, ctx: Context):
        return self._keep(layer, ctx)
