"""What the staged token methods share (PyramidDrop, SparseVLM): a list of stage layers, a share
of the image tokens kept from each stage on, and how positions are handled after a cut."""

from __future__ import annotations

from dataclasses import dataclass

from avl_lab.policies.base import Context, Policy, check_percent

POSITIONS = ("renumber", "keep")


def check_stages(stages: list[int], first: int = 0) -> None:
    """``ValueError`` unless ``stages`` is a non-empty increasing list of layers ≥ ``first``."""
    ok = (isinstance(stages, (list, tuple)) and stages
          and all(isinstance(x, int) and not isinstance(x, bool) and x >= first for x in stages)
          and all(a < b for a, b in zip(stages, stages[1:])))
    if not ok:
        raise ValueError(f"`stages` must be an increasing list of decoder layers ≥ {first}, "
                         f"got {stages!r}")


def check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise ValueError(f"`positions` must be one of {', '.join(POSITIONS)}, got {positions!r}")


def check_fits(stages: list[int], ctx: Context) -> None:
    """The stages are layers of the model (checked when a run starts)."""
    if max(stages) >= ctx.num_layers:
        raise ValueError(f"`stages` {list(stages)} name layers this model lacks (it has "
                         f"{ctx.num_layers}: 0..{ctx.num_layers - 1})")


def check_shares(shares: object, stages: list[int]) -> None:
    """``ValueError`` unless ``shares`` holds one percentage per stage."""
    if not isinstance(shares, (list, tuple)) or len(shares) != len(stages):
        raise ValueError(f"`keep` must hold one share per stage ({len(stages)}), got {shares!r}")
    for share in shares:
        check_percent("keep", share, allow_none=False)


@dataclass
class Staged(Policy):
    """Stages at ``stages``, keeping ``keep[s]``% of the image tokens from stage s on, positions
    kept or renumbered (:mod:`avl_lab.engine.stages`)."""

    stages: tuple[int, ...]
    keep: tuple[float, ...]
    positions: str = "renumber"

    @property
    def prune_positions(self) -> str:
        return self.positions

    def setup(self, cache, ctx: Context) -> None:
        check_fits(self.stages, ctx)

    def share(self, ctx: Context) -> float:
        """The share kept at this layer's stage."""
        return self.keep[self.stages.index(ctx.layer_idx)]
