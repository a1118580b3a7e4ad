"""PrefillPrune (P, layer): after decoder layer ``layer`` in prefill keep only the top P% image
tokens (by that layer's last-token attention).

Dropped tokens leave the hidden states of later layers (real prefill savings), so layers after
``layer`` never hold them. Layers ``0..layer`` keep every row they computed, as the official
code does (it cuts only the hidden states: modeling_llama.py l.1817-1851); ``drop_early=True``
evicts the dropped tokens there too (avl_lab's earlier reading).

``layer`` is 0-based. The official code prunes at ``idx == prefill_filter_layer - 1`` and its
lmms-eval CLI passes ``--prefill_filter_layer 3`` by default (``__main__.py`` l.205-209), i.e.
after 0-based layer 2, our default; the paper's text says "after the second decoder layer".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from avl_lab.policies.base import Context, Policy, check_percent, count_of, is_image, top_rows
from avl_lab.policies.registry import register


def keep_top_images(layer, ctx: Context, k: Tensor) -> Tensor:
    """``[B, R]``: every non-image row plus the ``k[b]`` highest-scored image rows."""
    img = is_image(layer)
    return ~img | top_rows(ctx.scores, img, k)


class PrunesAfterLayer(Policy):
    """Shared plumbing of prefill-pruning policies: an integer field ``layer`` after which
    :meth:`Policy.prune_tokens` runs, validated on construction and against the model, and a
    bool field ``drop_early``."""

    layer: int
    drop_early: bool

    def _check_layer_field(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"`layer` must be a non-negative integer, got {self.layer!r}")
        if not isinstance(self.drop_early, bool):
            raise ValueError(f"`drop_early` must be true or false, got {self.drop_early!r}")

    @property
    def prune_layer(self) -> int:
        return self.layer

    @property
    def prune_drops_earlier(self) -> bool:
        return self.drop_early

    def setup(self, cache, ctx: Context) -> None:
        if not 0 <= self.layer < ctx.num_layers:
            raise ValueError(
                f"`layer` must be in [0, {ctx.num_layers - 1}] for this model, got {self.layer}"
            )


@register("prefill_prune", example={"P": 90, "layer": 2})
@dataclass
class PrefillPrune(PrunesAfterLayer):
    """Parameters
    ----------
    P : float
        % of N_img kept after layer ``layer``.
    layer : int
        The 0-based decoder layer after which the prompt is pruned (official CLI: 2).
    drop_early : bool
        Also evict the dropped tokens' rows from layers ``0..layer`` (default False: those
        layers keep every row, as the official code does).
    """

    P: float = 90.0
    layer: int = 2
    drop_early: bool = False

    def __post_init__(self) -> None:
        check_percent("P", self.P, allow_none=False)
        self._check_layer_field()

    def prune_tokens(self, layer, ctx: Context):
        return keep_top_images(layer, ctx, count_of(self.P, ctx.n_image))
