"""The shared skeleton of budget baselines: keep some protected rows, then the best-scored ones.

As kvpress's ``ScorerPress``: a subclass writes :meth:`ScorerPolicy.score` (and, where it
differs, how the budget splits and which rows are protected); the base checks the budget,
keeps the protected rows and the top-scored rest, in prefill and after every decode step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from avl_lab.policies.base import (
    Context,
    Policy,
    Rows,
    _per_row,
    budget_rows,
    check_budget,
    newest_rows,
    top_rows,
)
from avl_lab.policies.step_ranking import StepRanking


@dataclass
class ScorerPolicy(Policy):
    """A cache budget of ``ratio`` × the prompt's rows or a fixed ``budget`` of rows.

    Parameters
    ----------
    ratio : float, optional
        Budget as a fraction (0, 1] of the prompt rows (default 0.5 when ``budget`` is unset).
    budget : int, optional
        Budget as a fixed number of rows.
    """

    ratio: float | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.budget is None:
            self.ratio = 0.5
        check_budget(self.ratio, self.budget)

    def split(self, ctx: Context) -> tuple[Tensor, Tensor]:
        """``([B] protected rows, [B] scored rows)``; default: no protected rows."""
        total = budget_rows(self.ratio, self.budget, ctx.n_prompt)
        return torch.zeros_like(total), total

    def protect(self, layer: Rows, ctx: Context, n: Tensor) -> Tensor:
        """``[B, R]`` the ``n`` rows kept whatever their score; default: the newest."""
        return newest_rows(layer.valid, n)

    def score(self, layer: Rows, ctx: Context) -> Tensor:
        """``[B, R]`` higher = keep."""
        raise NotImplementedError

    def keep(self, layer: Rows, ctx: Context) -> Tensor | None:
        """``[B, R]`` rows to keep (None: every row fits the budget)."""
        if ctx.step == 0:  # prefill: skip the scoring when every row fits (a read-back)
            n_protected, n_scored = self.split(ctx)
            held = layer.valid.sum(-1)  # [B] (or [B, Hkv] with rows per KV head)
            if not bool((held > _per_row(n_protected + n_scored, held)).any()):
                return None
        return top_rows(*self._ranked(layer, ctx))

    def _ranked(self, layer: Rows, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """What :meth:`keep` ranks: ``(score, candidates, k)`` for ``top_rows``.

        Where every row fits, the protected rows plus the top scored ones are every valid row:
        decode decides on the device, without reading the counts back. The protected rows (at
        most n_protected, all valid) rank first, so the top n_protected + n_scored valid rows
        are them and the n_scored best of the rest."""
        n_protected, n_scored = self.split(ctx)
        protected = self.protect(layer, ctx, n_protected)
        score = self.score(layer, ctx)
        score = score if score.is_floating_point() else score.double()  # ranks stay exact
        return (score.masked_fill(protected, math.inf), layer.valid,
                self._total(n_protected, n_scored))

    def _total(self, n_protected: Tensor, n_scored: Tensor) -> Tensor:
        """``n_protected + n_scored``, added once for the layers of a step when :meth:`split`
        hands every layer the same tensors (as H2O's, computed once per step)."""
        memo = self.__dict__.get("_total_memo")
        if memo is None or memo[0] is not n_protected or memo[1] is not n_scored:
            memo = (n_protected, n_scored, n_protected + n_scored)
            self.__dict__["_total_memo"] = memo
        return memo[2]

    def prefill_keep(self, layer: Rows, ctx: Context) -> Tensor | None:
        return self.keep(layer, ctx)

    def decode_keep(self, layer: Rows, ctx: Context) -> None:
        """Adds the layer's ranking to the step's; :meth:`end_step` decides every layer's."""
        StepRanking.of(self).add(layer, *self._ranked(layer, ctx), ctx=ctx)

    def end_step(self, ctx: Context) -> dict[int, Tensor]:
        """Every layer's keep mask of this step, ranked at once (:class:`StepRanking`)."""
        return {layer.layer_idx: keep for layer, keep in StepRanking.of(self).resolve()}
