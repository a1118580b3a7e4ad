"""FastV with a KV cache (the paper's baseline): prune image tokens after layer 2 in prefill,
then decode on that cache.

As the official A-VL code runs it (its prefill filter, modeling_llama.py l.1817-1851), only the
hidden states of later layers lose the pruned tokens; layers ``0..layer`` keep their full cache.
``drop_early=True`` also evicts them there (FastV read as "the image is cut to ``keep``% for
decode", avl_lab's earlier default). Paper: https://arxiv.org/abs/2403.06764.
"""

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
        The 0-based layer after which image tokens are pruned (layers ``0..layer`` see all).
    drop_early : bool
        Also evict the pruned tokens' rows from layers ``0..layer``.
    """

    keep: float = 50.0
    tokens: int | None = None
    layer: int = 2
    drop_early: bool = False

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
