"""VisionTiering's update step on rows per KV head (beside TextH2O) ranks the image tokens once,
by their average over all heads: the same core rows as ranking each head's rows by ``ctx.probs``
(the per-head reading it replaces), in a real run with update steps every step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from avl_lab.policies.base import is_image, top_rows
from avl_lab.policies.compose import Compose
from avl_lab.policies.text_h2o import TextH2O
from avl_lab.policies.update_schedule import UpdateSchedule
from avl_lab.policies.vision_tiering import VisionTiering
from avl_lab.testing import run_policy
from tests.helpers import make_inputs


@dataclass
class _Checked(VisionTiering):
    seen: list = field(default_factory=list)
    step: list = field(default_factory=list)

    def _choose_core_tokens(self, layer, ctx):
        img = is_image(layer)
        self.step.append((layer, ~img | top_rows(ctx.probs, img, self._core_count(ctx)), img))
        super()._choose_core_tokens(layer, ctx)

    def end_step(self, ctx):  # the core sets are decided for all layers of the step at once
        out = super().end_step(ctx)
        for layer, per_head, img in self.step:
            self.seen.append((torch.equal(layer.state("core"), per_head), int(img.sum())))
        self.step.clear()
        return out


def test_token_ranking_equals_per_head_ranking(tiny):
    _, model, processor = tiny
    vt = _Checked(S=45, C=30)
    run_policy(model, make_inputs(processor, n=3), Compose([vt, UpdateSchedule(K=1), TextH2O(T=30)]), 8)
    assert len(vt.seen) == 7 * model.config.text_config.num_hidden_layers  # 7 decode steps
    assert all(same for same, _ in vt.seen)
    assert all(n > 0 for _, n in vt.seen)
