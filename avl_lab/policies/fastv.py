"""FastV with a KV cache (the paper's baseline): prune image tokens after layer 2 in prefill,
then decode on that cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avl_lab.policies.base import Context, check_percent, count_of
from avl_lab.policies.prefill_prune import PrunesAfterLayer, keep_top_images
from avl_lab.policies.registry import register


@register("fastv", example={"keep": 50, "layer": 2})
@dataclass
class FastV(PrunesAfterLayer):
    """Parameters
    ----------
    keep : float
        % of image tokens kept after ``layer`` (FastV's R = 100 - keep).
    tokens : int, optional
        A fixed number of image tokens to keep instead of ``keep``.
    layer : int
        FastV's K: the layer after which image tokens are pruned.
    """

    keep: float = 50.0
    tokens: int | None = None
    layer: int = 2

    def __post_init__(self) -> None:
        check_percent("keep", self.keep, allow_none=False)
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 0):
            raise ValueError(f"`tokens` must be a non-negative integer, got {self.tokens!r}")
        self._check_layer_field()

    def prune_tokens(self, layer, ctx: Context):
        if self.tokens is None:
            k = count_of(self.keep, ctx.n_image)
        else:
            k = torch.full_like(ctx.n_image, self.tokens).minimum(ctx.n_image)
        return keep_top_images(layer, ctx, k)
