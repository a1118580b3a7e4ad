"""The A-VL preset: VisionTiering (S, C) + UpdateSchedule (K) + PrefillPrune (P) + TextH2O (T).

``{"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50}``; any part omitted is off.
Valid configurations satisfy 0 < C ≤ S ≤ P ≤ 100 for the parts given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avl_lab.policies.base import Policy, check_percent
from avl_lab.policies.compose import Compose
from avl_lab.policies.decode_tiering import check_tiering, text_part, vision_parts
from avl_lab.policies.prefill_prune import PrefillPrune
from avl_lab.policies.registry import register


@register("avl", example={"S": 45, "C": 30, "K": 3, "P": 90, "T": 50})
@dataclass
class AVL(Compose):
    """A-VL (paper Table 1). Parameters are percentages of N_img (S, C, P), of the current
    text length (T), and a period in decode steps (K); ``layer`` and ``drop_early`` are
    PrefillPrune's, ``text_variant``, ``text_min_window`` and ``text_per_head`` TextH2O's
    ``variant``, ``min_window`` and ``per_head`` (see their modules; the defaults follow the
    official code: the text window is chosen per KV head), ``signal`` VisionTiering's ranking
    signal (default ``last_token``, the paper's)."""

    S: float | None = None
    C: float | None = None
    K: int | None = None
    P: float | None = None
    T: float | None = None
    layer: int = 2
    drop_early: bool = False
    text_variant: str = "quantile"
    text_min_window: int = 1
    text_per_head: bool = True
    signal: str = "last_token"
    parts: list[Policy] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        check_tiering(self.S, self.C, self.K, self.T)
        check_percent("P", self.P)
        if self.S is not None and self.P is not None and self.S > self.P:
            raise ValueError(f"`S` ({self.S}) must not exceed `P` ({self.P})")
        if self.signal != "last_token" and self.S is None:  # VisionTiering checks the value
            raise ValueError("`signal` ranks the image rows of `S`: give `S`")
        parts: list[Policy] = vision_parts(self.S, self.C, self.K, self.signal)
        if self.P is not None:
            parts.append(PrefillPrune(P=self.P, layer=self.layer, drop_early=self.drop_early))
        parts += text_part(self.T, self.text_variant, self.text_min_window, self.text_per_head)
        self.parts = parts
        super().__post_init__()
