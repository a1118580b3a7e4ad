"""Full: keep and compute over every row (the reference every policy is judged against)."""

from __future__ import annotations

from dataclasses import dataclass

from avl_lab.policies.base import Policy
from avl_lab.policies.registry import register


@register("full")
@dataclass
class Full(Policy):
    """Keep everything; decode attention over all rows."""
