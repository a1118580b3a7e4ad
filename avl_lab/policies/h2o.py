"""H2O over all rows: a cache budget split into recent rows and heavy hitters.

As the official A-VL code runs its H2O baseline (``all_use_h2o``, modeling_llama.py
l.1486-1527, class ``H2OKVCache_LayerWise`` l.132-229): the budget is a fraction ``ratio`` of
the *current* length (prompt + tokens generated so far, so it grows during decode), split into
``floor(n * ratio * recent)`` most recent rows and ``floor(n * ratio * (1 - recent))`` rows with
the highest accumulated attention (summed over ALL prompt queries in prefill, then over every
decode step). ``ratio_of="prompt"`` keeps the budget at a fraction of the prompt's rows, fixed
during decode (avl_lab's earlier reading); ``budget`` is a fixed number of rows.

Per KV head by default, as the official code (its rows differ between heads): each KV head
accumulates its own attention (averaged over its group of query heads under GQA) and keeps its
own heavy hitters, so evicted (row, head) pairs leave memory. ``per_head=false`` keeps one set
of rows for all heads, ranked by the head-averaged score (avl_lab's earlier baseline).
Paper: https://arxiv.org/abs/2306.14048.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from avl_lab.policies.base import Context
from avl_lab.policies.registry import register
from avl_lab.policies.scorer import ScorerPolicy

RATIO_OF = ("current", "prompt")


def split_budget(ratio: float | None, budget: int | None, recent: float, n_rows):
    """``([B] recent rows, [B] heavy-hitter rows)`` for ``n_rows`` ``[B]`` rows of length.

    With ``ratio``: ``floor(n * ratio * recent)`` and ``floor(n * ratio * (1 - recent))``, each
    rounded down on its own as the official ``int(seq_len * 0.5 * 0.75)`` /
    ``int(seq_len * 0.5 * 0.25)`` (l.1520-1521). With a fixed ``budget``: ``floor(budget *
    recent)`` recent rows and the rest heavy hitters, ``budget`` rows in all.
    """
    if budget is not None:
        n_recent = math.floor(budget * recent + 1e-9)
        return torch.full_like(n_rows, n_recent), torch.full_like(n_rows, budget - n_recent)
    total = n_rows.to(torch.float64) * ratio
    n_recent = torch.floor(total * recent + 1e-9).long()
    n_heavy = torch.floor(total * (1.0 - recent) + 1e-9).long()
    return n_recent, n_heavy


@register("h2o", example={"ratio": 0.5})
@dataclass
class H2O(ScorerPolicy):
    """Parameters
    ----------
    ratio : float, optional
        Budget as a fraction (0, 1] of ``ratio_of`` (default 0.5 when ``budget`` is unset).
    budget : int, optional
        Budget as a fixed number of rows.
    recent : float
        Share of the budget for the most recent rows (paper: 0.75).
    ratio_of : str
        ``"current"`` (official): the current length, prompt + generated tokens; ``"prompt"``:
        the prompt's rows, fixed during decode.
    per_head : bool
        Rows per KV head (official, default) or one set of rows for all heads.
    """

    recent: float = 0.75
    ratio_of: str = "current"
    per_head: bool = True
    needs_colsum = True

    @property
    def needs_probs(self) -> bool:  # type: ignore[override]
        return not self.per_head

    @property
    def needs_head_probs(self) -> bool:  # type: ignore[override]
        return self.per_head

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.recent, bool) or not 0 < self.recent < 1:
            raise ValueError(f"`recent` must be a fraction in (0, 1), got {self.recent!r}")
        if not isinstance(self.per_head, bool):
            raise ValueError(f"`per_head` must be true or false, got {self.per_head!r}")
        if self.ratio_of not in RATIO_OF:
            raise ValueError(f"`ratio_of` must be one of {RATIO_OF}, got {self.ratio_of!r}")
        self._split = None  # (step, n_prompt) -> budgets, see split

    def setup(self, cache, ctx: Context) -> None:
        cache.register_state("h2o_acc", 0.0, torch.float32)
        self._split = None

    def split(self, ctx: Context):
        """Recent rows (protected) and heavy hitters (scored); the same for every layer of a
        step, so computed once per step."""
        key = (ctx.step, ctx.n_prompt)
        if self._split is None or self._split[0][0] != key[0] or self._split[0][1] is not key[1]:
            n = ctx.n_prompt + (ctx.step if self.ratio_of == "current" else 0)
            self._split = (key, split_budget(self.ratio, self.budget, self.recent, n))
        return self._split[1]

    def score(self, layer, ctx: Context):
        return layer.state("h2o_acc")

    def prefill_keep(self, layer, ctx: Context):
        if self.per_head:
            layer.split_heads()
        layer.set_state("h2o_acc", (ctx.head_colsum if self.per_head else ctx.colsum).float())
        return self.keep(layer, ctx)

    def decode_keep(self, layer, ctx: Context):
        probs = ctx.head_probs if self.per_head else ctx.probs
        layer.set_state("h2o_acc", layer.state("h2o_acc") + probs)
        super().decode_keep(layer, ctx)  # ranked with the step's other layers in end_step
