"""StreamingLLM: attention sinks (the first rows) plus a window of the most recent rows.

Paper: https://arxiv.org/abs/2309.17453 (code: mit-han-lab/streaming-llm). The budget counts
the sinks; the window is the newest rows that fit beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from avl_lab.errors import ConfigError
from avl_lab.policies.base import Context, budget_rows, oldest_rows
from avl_lab.policies.registry import register
from avl_lab.policies.scorer import ScorerPolicy


@register("streaming", example={"ratio": 0.5, "sinks": 4})
@dataclass
class Streaming(ScorerPolicy):
    """Parameters
    ----------
    ratio, budget
        The cache budget (sinks included), see :class:`ScorerPolicy`.
    sinks : int
        Attention-sink rows kept from the start of the sequence.
    """

    sinks: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"`sinks` must be a non-negative integer, got {self.sinks!r}")
        if self.budget is not None and self.budget <= self.sinks:
            raise ValueError(
                f"`budget` ({self.budget}) must exceed `sinks` ({self.sinks}) to leave a window"
            )

    def setup(self, cache, ctx: Context) -> None:
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        if bool((total <= self.sinks).any()):  # found only now, on this data: a user error
            raise ConfigError(
                f"`ratio` {self.ratio} gives a budget of {int(total.min())} rows, not above "
                f"`sinks` ({self.sinks}); raise `ratio` or lower `sinks`"
            )

    def split(self, ctx: Context):
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        return total.new_full(total.shape, self.sinks), total - self.sinks

    def protect(self, layer, ctx: Context, n):
        return oldest_rows(layer.valid, n)

    def score(self, layer, ctx: Context):
        return layer.tok  # the newest rows win
