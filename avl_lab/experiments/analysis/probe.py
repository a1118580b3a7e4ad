"""A policy that changes nothing and records attention through the engine's hooks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from avl_lab.policies.base import Context, Policy


@dataclass
class AttentionProbe(Policy):
    """Full cache; records, per layer, the last prompt token's attention in prefill and each
    decode step's attention, with the rows' modalities (all head-averaged, on the CPU).

    Attributes
    ----------
    prefill : dict[int, tuple[Tensor, Tensor]]
        layer → (``[B, R]`` scores, ``[B, R]`` modality codes).
    decode : list[dict[int, tuple[Tensor, Tensor]]]
        step-1 → layer → (``[B, R]`` probabilities, ``[B, R]`` modality codes).
    """

    prefill: dict = field(default_factory=dict, repr=False)
    decode: list = field(default_factory=list, repr=False)
    needs_probs = True

    def setup(self, cache, ctx: Context) -> None:
        self.prefill, self.decode = {}, []

    def prefill_keep(self, layer, ctx: Context):
        self.prefill[layer.layer_idx] = (ctx.scores.float().cpu(), layer.mod.cpu())
        return None

    def decode_keep(self, layer, ctx: Context):
        while len(self.decode) < ctx.step:
            self.decode.append({})
        self.decode[ctx.step - 1][layer.layer_idx] = (ctx.probs.float().cpu(), layer.mod.cpu())
        return None


def image_vector(scores: torch.Tensor, mod: torch.Tensor, b: int) -> torch.Tensor:
    """Row ``b``'s attention over its image tokens, in prompt order."""
    from avl_lab.engine.layout import Modality

    return scores[b][mod[b] == int(Modality.IMAGE)]
