"""A layer scope for any policy: ``{"name": "avl", "S": 10, "layers": "2-"}``.

Outside its scope a policy keeps and uses every row (its hooks are not called there), as
kvpress's ``PerLayerCompressionPress`` restricts a press to some layers. The scope is written
as a list of layer indices or a string of comma-separated items ``a``, ``a-b``, ``a-``
(``a`` to the last layer) and ``-b`` (0 to ``b``), all inclusive, e.g. ``"2-"``, ``"0,2-3"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from avl_lab.policies.base import Context, Policy

#: (first, last) inclusive ranges; ``last`` None = to the last layer.
Ranges = tuple[tuple[int, int | None], ...]


def parse_layers(spec: str | int | Sequence[int]) -> Ranges:
    """Parse a ``layers`` scope; ``ValueError`` naming ``layers`` if malformed."""
    if isinstance(spec, bool):
        raise ValueError(f"`layers` must be a list of layer indices or a string like '2-', got {spec!r}")
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, str):
        items = [x.strip() for x in spec.split(",")]
        if not spec.strip() or any(not x for x in items):
            raise ValueError(f"`layers` has an empty item: {spec!r} (e.g. '2-', '0,3-5')")
        return tuple(_parse_item(x, spec) for x in items)
    if isinstance(spec, Sequence) and spec:
        out = []
        for x in spec:
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise ValueError(f"`layers` must hold non-negative layer indices, got {x!r}")
            out.append((x, x))
        return tuple(out)
    raise ValueError(f"`layers` must be a non-empty list of layer indices or a string like '2-', got {spec!r}")


def _parse_item(item: str, spec: str) -> tuple[int, int | None]:
    lo, sep, hi = item.partition("-")
    try:
        first = int(lo) if lo.strip() else 0
        last = (int(hi) if hi.strip() else None) if sep else first
    except ValueError:
        raise ValueError(f"`layers` item {item!r} of {spec!r} is not 'a', 'a-b', 'a-' or '-b'") from None
    if first < 0 or (last is not None and last < first):
        raise ValueError(f"`layers` item {item!r} of {spec!r} is not an ascending range of layers")
    return first, last


@dataclass
class Scoped(Policy):
    """``policy`` in the layers of ``layers`` only (see the module docstring)."""

    policy: Policy
    layers: str | int | Sequence[int] = "0-"
    _ranges: Ranges = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise ValueError(f"`policy` must be a Policy, got {type(self.policy).__name__}")
        self._ranges = parse_layers(self.layers)

    def covers(self, layer_idx: int) -> bool:
        """Whether the scope holds decoder layer ``layer_idx``."""
        return any(a <= layer_idx and (b is None or layer_idx <= b) for a, b in self._ranges)

    @property
    def needs_colsum(self) -> bool:  # type: ignore[override]
        return self.policy.needs_colsum

    @property
    def needs_probs(self) -> bool:  # type: ignore[override]
        return self.policy.needs_probs

    @property
    def needs_head_probs(self) -> bool:  # type: ignore[override]
        return self.policy.needs_head_probs

    @property
    def needs_kv_norms(self) -> bool:  # type: ignore[override]
        return self.policy.needs_kv_norms

    def probs_at(self, update: bool) -> bool:
        return self.policy.probs_at(update)

    def token_probs_at(self, update: bool) -> bool:
        return self.policy.token_probs_at(update)

    def keeps_at(self, update: bool) -> bool:
        return self.policy.keeps_at(update)

    def end_step(self, ctx: Context):
        return self.policy.end_step(ctx)  # only the covered layers reached decode_keep

    @property
    def needs_prev_keys(self) -> bool:  # type: ignore[override]
        return self.policy.needs_prev_keys

    @property
    def needs_preview(self) -> bool:  # type: ignore[override]
        return self.policy.needs_preview

    @property
    def prune_layers(self) -> tuple[int, ...]:
        return tuple(i for i in self.policy.prune_layers if self.covers(i))

    @property
    def prune_before_layers(self) -> tuple[int, ...]:
        return tuple(i for i in self.policy.prune_before_layers if self.covers(i))

    @property
    def prune_positions(self) -> str:
        return self.policy.prune_positions

    @property
    def prune_drops_earlier(self) -> bool:
        return self.policy.prune_drops_earlier

    def setup(self, cache, ctx: Context) -> None:
        top = max(b if b is not None else a for a, b in self._ranges)
        if top >= ctx.num_layers:
            raise ValueError(
                f"`layers` {self.layers!r} names layer {top}; this model has layers 0..{ctx.num_layers - 1}"
            )
        self.policy.setup(cache, ctx)

    def prune_tokens(self, layer, ctx: Context) -> Tensor | None:
        return self.policy.prune_tokens(layer, ctx) if self.covers(ctx.layer_idx) else None

    def prune_before(self, layer, ctx: Context) -> Tensor | None:
        return self.policy.prune_before(layer, ctx) if self.covers(ctx.layer_idx) else None

    def prefill_keep(self, layer, ctx: Context) -> Tensor | None:
        return self.policy.prefill_keep(layer, ctx) if self.covers(ctx.layer_idx) else None

    def is_update_step(self, step: int) -> bool:
        return self.policy.is_update_step(step)

    def decode_active(self, layer, ctx: Context) -> Tensor | None:
        return self.policy.decode_active(layer, ctx) if self.covers(ctx.layer_idx) else None

    def decode_keep(self, layer, ctx: Context) -> Tensor | None:
        return self.policy.decode_keep(layer, ctx) if self.covers(ctx.layer_idx) else None
