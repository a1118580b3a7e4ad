"""UpdateSchedule (K): every K-th decode step is an update step.

On an update step attention runs over all secondary image rows and ``VisionTiering`` re-chooses
the core set from that step's attention. Steps are counted from 1 (the first decode forward),
so K=1 updates every step and K=3 at steps 3, 6, 9, ...
"""

from __future__ import annotations

from dataclasses import dataclass

from avl_lab.policies.base import Policy
from avl_lab.policies.registry import register


@register("update_schedule", example={"K": 3})
@dataclass
class UpdateSchedule(Policy):
    """Parameters
    ----------
    K : int
        Update period in decode steps (≥ 1).
    """

    K: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.K, bool) or not isinstance(self.K, int) or self.K < 1:
            raise ValueError(f"`K` must be an integer ≥ 1, got {self.K!r}")

    def is_update_step(self, step: int) -> bool:
        return step % self.K == 0
