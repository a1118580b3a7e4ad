"""A-VL's decode-phase parts (VisionTiering S/C, UpdateSchedule K, TextH2O T) as one set, and a
base class for policies that put them after a prefill method of their own: ``{name:
pyramiddrop, S: 45, C: 30, K: 3}`` prunes the prefill as PyramidDrop does, then tiers the image
rows that remain as A-VL does in decode.

S and C stay percentages of the image tokens *before* any pruning (as in ``avl``); after a
method kept fewer, S ≥ that share stores every remaining image row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avl_lab.policies.base import Policy, check_percent
from avl_lab.policies.compose import Compose
from avl_lab.policies.text_h2o import TextH2O
from avl_lab.policies.update_schedule import UpdateSchedule
from avl_lab.policies.vision_tiering import VisionTiering

__all__ = ["WithTiering", "check_tiering", "text_part", "vision_parts"]


def check_tiering(S: float | None, C: float | None, K: int | None, T: float | None) -> None:
    """``ValueError`` naming the field unless 0 < C ≤ S ≤ 100, K needs C, T a percentage."""
    for name, value in (("S", S), ("C", C), ("T", T)):
        check_percent(name, value)
    if C is not None and S is None:
        raise ValueError("`C` needs `S` (core tokens are a subset of the secondary ones)")
    if K is not None and C is None:
        raise ValueError("`K` needs `C`: update steps re-choose the core set")
    if C is not None and S is not None and C > S:
        raise ValueError(f"`C` ({C}) must not exceed `S` ({S}): core ⊂ secondary")


def vision_parts(S: float | None, C: float | None, K: int | None,
                 signal: str = "last_token") -> list[Policy]:
    """VisionTiering (S, C, ranking by ``signal``) and UpdateSchedule (K), those given."""
    parts: list[Policy] = []
    if S is not None:
        parts.append(VisionTiering(S=S, C=C, signal=signal))
    if K is not None:
        parts.append(UpdateSchedule(K=K))
    return parts


def text_part(T: float | None, variant: str = "quantile", min_window: int = 1,
              per_head: bool = True) -> list[Policy]:
    """TextH2O (T), if given (defaults: the official code's, see ``text_h2o``)."""
    if T is None:
        return []
    return [TextH2O(T=T, variant=variant, min_window=min_window, per_head=per_head)]


@dataclass
class WithTiering(Compose):
    """A prefill method (:meth:`method`) followed by A-VL's decode tiering (S, C, K, T; each
    off when omitted)."""

    S: float | None = None
    C: float | None = None
    K: int | None = None
    T: float | None = None
    parts: list[Policy] = field(default_factory=list, init=False, repr=False)

    def method(self) -> Policy:
        """The prefill method itself (built from the subclass's own fields)."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        check_tiering(self.S, self.C, self.K, self.T)
        self.parts = [self.method(), *vision_parts(self.S, self.C, self.K), *text_part(self.T)]
        super().__post_init__()
