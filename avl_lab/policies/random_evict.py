"""Random: the same budget as the baselines, random rows (a sanity floor)."""

from __future__ import annotations

from dataclasses import dataclass

from avl_lab.policies.base import Context, budget_rows, hash_uniform
from avl_lab.policies.registry import register
from avl_lab.policies.scorer import ScorerPolicy


@register("random", example={"ratio": 0.5, "seed": 0})
@dataclass
class RandomEvict(ScorerPolicy):
    """Keep a random subset of rows within the budget; the newest row is always kept.

    Draws depend only on (seed, layer, logical position), so a row evicts the same rows alone
    or in a batch.

    Parameters
    ----------
    ratio, budget
        The cache budget, see :class:`ScorerPolicy`.
    seed : int
        Seed of the draws.
    """

    seed: int = 0

    def split(self, ctx: Context):
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        return total.new_ones(total.shape), total - 1

    def score(self, layer, ctx: Context):
        return hash_uniform(layer.pos, layer.layer_idx, self.seed)
