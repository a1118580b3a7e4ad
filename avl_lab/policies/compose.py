"""Composition of policies: a row is kept if every part keeps it, active if every part marks it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from avl_lab.policies.base import Context, DropRows, InputCut, Policy, both


def _overrides(part: Policy, hook: str) -> bool:
    """Whether ``part`` has its own ``hook`` (the base one returns None: nothing to call)."""
    return getattr(type(part), hook) is not getattr(Policy, hook)


def _all(masks: list[Tensor | None]) -> Tensor | None:
    out = None
    for m in masks:
        out = both(out, m)
    return out


@dataclass
class Compose(Policy):
    """Run several policies together.

    keep = every part keeps; active = every part marks active; a decode step is an update
    step if any part says so; prefill pruning stages are the union of the parts' (a token stays
    at a stage if every part pruning there keeps it); the pruning parts agree on positions.
    """

    parts: Sequence[Policy] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.parts = list(self.parts)
        for p in self.parts:
            if not isinstance(p, Policy):
                raise ValueError(f"`parts` must hold Policy objects, got {type(p).__name__}")
        pruning = [p for p in self.parts if p.prune_layers or p.prune_before_layers or p.prunes_input]
        # The parts a decode step calls (per layer): those that override the hook.
        self._active = [p for p in self.parts if _overrides(p, "decode_active")]
        self._keepers = [p for p in self.parts if _overrides(p, "decode_keep")]
        modes = {p.prune_positions for p in pruning}
        if len(modes) > 1:
            raise ValueError(f"`parts` prune the prefill with different positions {sorted(modes)}: "
                             "give every pruning part the same `positions`")

    @property
    def needs_colsum(self) -> bool:  # type: ignore[override]
        return any(p.needs_colsum for p in self.parts)

    @property
    def needs_probs(self) -> bool:  # type: ignore[override]
        return any(p.needs_probs for p in self.parts)

    @property
    def needs_head_probs(self) -> bool:  # type: ignore[override]
        return any(p.needs_head_probs for p in self.parts)

    @property
    def needs_kv_norms(self) -> bool:  # type: ignore[override]
        return any(p.needs_kv_norms for p in self.parts)

    @property
    def needs_prev_keys(self) -> bool:  # type: ignore[override]
        return any(p.needs_prev_keys for p in self.parts)

    @property
    def needs_preview(self) -> bool:  # type: ignore[override]
        return any(p.needs_preview for p in self.parts)

    def probs_at(self, update: bool) -> bool:
        return any(p.probs_at(update) for p in self.parts)

    def token_probs_at(self, update: bool) -> bool:
        return any(p.token_probs_at(update) for p in self.parts)

    def keeps_at(self, update: bool) -> bool:
        return any(p.keeps_at(update) for p in self._keepers)

    @property
    def needs_vision(self) -> bool:  # type: ignore[override]
        return any(p.needs_vision for p in self.parts)

    @property
    def prunes_input(self) -> bool:
        return any(p.prunes_input for p in self.parts)

    @property
    def prune_layers(self) -> tuple[int, ...]:
        return tuple(sorted({i for p in self.parts for i in p.prune_layers}))

    @property
    def prune_before_layers(self) -> tuple[int, ...]:
        return tuple(sorted({i for p in self.parts for i in p.prune_before_layers}))

    @property
    def prune_positions(self) -> str:
        return next((p.prune_positions for p in self.parts
                     if p.prune_layers or p.prune_before_layers or p.prunes_input), "keep")

    @property
    def prune_drops_earlier(self) -> bool:
        return any(p.prune_drops_earlier for p in self.parts)

    def setup(self, cache, ctx: Context) -> None:
        for p in self.parts:
            p.setup(cache, ctx)

    def prune_tokens(self, layer, ctx: Context) -> Tensor | None:
        return _all([p.prune_tokens(layer, ctx) for p in self.parts
                     if ctx.layer_idx in p.prune_layers])

    def prune_before(self, layer, ctx: Context) -> Tensor | None:
        return _all([p.prune_before(layer, ctx) for p in self.parts
                     if ctx.layer_idx in p.prune_before_layers])

    def prune_input(self, layer, ctx: Context) -> Tensor | InputCut | None:
        """The parts' cuts intersected; at most one part may write embeddings."""
        cuts = [p.prune_input(layer, ctx) for p in self.parts if p.prunes_input]
        writes = [c for c in cuts if isinstance(c, InputCut)]
        if len(writes) > 1:
            raise ValueError("two parts write input embeddings before layer 0; compose at most one "
                             "merging method")
        keep = _all([c.keep if isinstance(c, InputCut) else c for c in cuts])
        if not writes or keep is None:
            return keep
        return InputCut(keep=keep, embeds=writes[0].embeds, replace=writes[0].replace & keep)

    def prefill_keep(self, layer, ctx: Context) -> Tensor | None:
        return _all([p.prefill_keep(layer, ctx) for p in self.parts])

    def is_update_step(self, step: int) -> bool:
        return any(p.is_update_step(step) for p in self.parts)

    def decode_active(self, layer, ctx: Context) -> Tensor | None:
        return _all([p.decode_active(layer, ctx) for p in self._active])

    def decode_keep(self, layer, ctx: Context) -> Tensor | DropRows | None:
        """The parts' keep masks intersected; their drop lists joined (a mask when both)."""
        out = [p.decode_keep(layer, ctx) for p in self._keepers]
        drops = [o for o in out if isinstance(o, DropRows)]
        keep = _all([o for o in out if not isinstance(o, DropRows)])
        if not drops:
            return keep
        drop = DropRows.join(drops)
        return drop if keep is None else both(keep, drop.keep(layer.valid))

    def end_step(self, ctx: Context) -> dict[int, list[Tensor | DropRows]]:
        """Every part's decisions per layer, in part order (each applied in turn)."""
        outs: dict[int, list] = {}
        for p in self._keepers:
            for i, keep in p.end_step(ctx).items():
                outs.setdefault(i, []).extend(keep if isinstance(keep, list) else [keep])
        return outs
