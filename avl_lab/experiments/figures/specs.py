"""The paper's parameter studies as lists of points: Figure 9 (S, core vs evict, K), Figure 10 (P, T)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    """One evaluation of a figure: ``policy`` plotted at ``value`` in ``panel`` as ``method``."""

    panel: str
    param: str
    value: float
    method: str
    policy: dict[str, Any]


@dataclass
class Grids:
    """Parameter grids of the figures (override with ``grid.S=[10,50]`` etc.)."""

    S: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50, 60, 80, 100])
    """Fig 9a: secondary share S with no core tier."""
    C: list[int] = field(default_factory=lambda: [10, 20, 30, 40])
    """Fig 9b: core share C (compute over C of S=`S_core` vs evict down to C)."""
    S_core: int = 50
    """Fig 9b: the secondary share kept when computing over the core only."""
    K: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6, 8])
    """Fig 9c: update period K at S=45, C=30."""
    P: list[int] = field(default_factory=lambda: [50, 60, 70, 80, 90, 100])
    """Fig 10a: prefill pruning P."""
    T: list[int] = field(default_factory=lambda: [10, 20, 40, 60, 80, 100])
    """Fig 10b: text window T."""

    def __post_init__(self) -> None:
        for name in ("S", "C", "P", "T"):
            values = list(getattr(self, name))
            if not values:
                raise ValueError(f"`grid.{name}` is empty; give at least one percentage")
            bad = [v for v in values if not 0 < v <= 100]
            if bad:
                raise ValueError(f"`grid.{name}` must hold percentages in (0, 100], got {bad}")
        if not self.K or any(k < 1 for k in self.K):
            raise ValueError(f"`grid.K` must hold one or more periods ≥ 1, got {list(self.K)}")
        if not 0 < self.S_core <= 100:
            raise ValueError(f"`grid.S_core` must be a percentage in (0, 100], got {self.S_core}")
        above = [c for c in self.C if c > self.S_core]
        if above:
            raise ValueError(f"`grid.C` values {above} exceed `grid.S_core` ({self.S_core}): the "
                             "core is a share of the secondary tokens (C ≤ S)")


def fig9(g: Grids) -> list[Point]:
    pts = [Point("a: secondary only", "S", s, "avl S", {"name": "avl", "S": s}) for s in g.S]
    for c in g.C:
        pts.append(Point("b: core vs evict", "C", c, f"core (S={g.S_core}, K=3)",
                         {"name": "avl", "S": g.S_core, "C": c, "K": 3}))
        pts.append(Point("b: core vs evict", "C", c, "evict to C", {"name": "avl", "S": c}))
    pts += [Point("c: update period", "K", k, "S=45 C=30", {"name": "avl", "S": 45, "C": 30, "K": k})
            for k in g.K]
    pts.append(Point("c: update period", "K", max(g.K), "no update",
                     {"name": "avl", "S": 45, "C": 30}))
    return pts


def fig10(g: Grids) -> list[Point]:
    pts = [Point("a: prefill pruning", "P", p, "avl P", {"name": "avl", "P": p}) for p in g.P]
    pts += [Point("b: text window", "T", t, "avl T", {"name": "avl", "T": t}) for t in g.T]
    return pts


FIGURES = {"fig9": fig9, "fig10": fig10}
