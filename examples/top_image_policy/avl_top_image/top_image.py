"""``top_image``: keep the ``keep``% of image rows the last prompt token attends to most.

A whole avl_lab policy: a dataclass with typed, validated fields that overrides one hook and
registers itself. Installed (``pip install examples/top_image_policy``), its entry point makes
it known to every verb; uninstalled, ``plugins=path/to/top_image.py`` does the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from avl_lab.policies import Context, Policy, register
from avl_lab.policies.base import Rows, count_of, is_image, top_rows


@register("top_image", example={"keep": 30})
@dataclass
class TopImage(Policy):
    """Parameters
    ----------
    keep : float
        Image rows kept per layer, as a percentage of the image tokens (0, 100].
    """

    keep: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not 0 < self.keep <= 100:
            raise ValueError(f"`keep` must be a percentage in (0, 100], got {self.keep!r}")

    def prefill_keep(self, layer: Rows, ctx: Context) -> Tensor:
        """``[B, R]``: every non-image row, and the top ``keep``% image rows by ``ctx.scores``."""
        img = is_image(layer)
        return ~img | top_rows(ctx.scores, img, count_of(self.keep, ctx.n_image))
