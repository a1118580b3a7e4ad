"""TextH2O (T): H2O eviction on the text (non-image) rows only.

The text window is T% of the maximum text length (non-image prompt tokens + max_new_tokens).
When the text rows overflow it, the rows with the lowest accumulated attention are evicted from
the older part of the window; the newest half of the window is never evicted. Accumulated
attention starts from the attention every prompt query paid each row in prefill (H2O) and grows
with each decode step's attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avl_lab.policies.base import (
    Context,
    Policy,
    check_percent,
    count_of,
    is_text,
    newest_rows,
    top_rows,
)
from avl_lab.policies.registry import register


def evict_lowest(layer, acc, candidates, budget, protect) -> torch.Tensor | None:
    """Keep mask that drops the lowest-``acc`` rows among ``candidates`` down to ``budget`` rows,
    never dropping the ``protect`` newest candidates (all ``[B]``/``[B, R]``)."""
    over = (candidates.sum(1) - budget).clamp(min=0)
    if not bool(over.any()):
        return None
    pool = candidates & ~newest_rows(candidates, protect)
    return ~top_rows(-acc, pool, over)


@register("text_h2o", example={"T": 50})
@dataclass
class TextH2O(Policy):
    """Parameters
    ----------
    T : float
        Text window as % of the maximum text length.
    """

    T: float = 50.0
    needs_colsum = True
    needs_probs = True

    def __post_init__(self) -> None:
        check_percent("T", self.T, allow_none=False)

    def setup(self, cache, ctx: Context) -> None:
        cache.register_state("acc", 0.0, torch.float32)

    def _keep(self, layer, ctx: Context):
        window = count_of(self.T, ctx.n_text + ctx.max_new_tokens).clamp(min=1)
        return evict_lowest(layer, layer.state("acc"), is_text(layer), window,
                            (window // 2).clamp(min=1))

    def prefill_keep(self, layer, ctx: Context):
        layer.set_state("acc", ctx.colsum.float())
        return self._keep(layer, ctx)

    def decode_keep(self, layer, ctx: Context):
        layer.set_state("acc", layer.state("acc") + ctx.probs)
        return self._keep(layer, ctx)
