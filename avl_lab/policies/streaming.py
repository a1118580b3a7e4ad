"""StreamingLLM: attention sinks (the first rows) plus a window of the most recent rows."""

from __future__ import annotations

from dataclasses import dataclass

from avl_lab.policies.base import (
    Context,
    Policy,
    budget_rows,
    check_budget,
    newest_rows,
    oldest_rows,
)
from avl_lab.policies.registry import register


@register("streaming", example={"ratio": 0.5, "sinks": 4})
@dataclass
class Streaming(Policy):
    """Parameters
    ----------
    ratio : float, optional
        Cache budget as a fraction (0, 1] of the prompt rows (default 0.5 when ``budget`` unset).
    budget : int, optional
        Cache budget in rows (sinks included).
    sinks : int
        Attention-sink rows kept from the start of the sequence.
    """

    ratio: float | None = None
    budget: int | None = None
    sinks: int = 4

    def __post_init__(self) -> None:
        if self.ratio is None and self.budget is None:
            self.ratio = 0.5
        check_budget(self.ratio, self.budget)
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"`sinks` must be a non-negative integer, got {self.sinks!r}")
        if self.budget is not None and self.budget <= self.sinks:
            raise ValueError(
                f"`budget` ({self.budget}) must exceed `sinks` ({self.sinks}) to leave a window"
            )

    def setup(self, cache, ctx: Context) -> None:
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        if bool((total <= self.sinks).any()):
            raise ValueError(
                f"`ratio` {self.ratio} gives a budget of {int(total.min())} rows, not above "
                f"`sinks` ({self.sinks}); raise `ratio` or lower `sinks`"
            )

    def _keep(self, layer, ctx: Context):
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        valid = layer.valid
        if not bool((valid.sum(1) > total).any()):
            return None
        return oldest_rows(valid, self.sinks) | newest_rows(valid, total - self.sinks)

    def prefill_keep(self, layer, ctx: Context):
        return self._keep(layer, ctx)

    def decode_keep(self, layer, ctx: Context):
        return self._keep(layer, ctx)
