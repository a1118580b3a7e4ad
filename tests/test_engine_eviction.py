"""A test-only eviction policy equals the masked reference; its stats equal hand-computed ones."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from avl_lab.engine.layout import token_layout
from avl_lab.policies import Policy, register
from avl_lab.policies.base import is_image
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import make_inputs

NEW = 16


def _image_rank(layer):
    img = is_image(layer)
    return img, img.long().cumsum(1) - 1


@register("test_drop_alternate")
@dataclass
class DropAlternate(Policy):
    """Odd layers evict every other image row in prefill; even layers compute over every third
    image row in decode (rows stay stored)."""

    def prefill_keep(self, layer, ctx):
        if layer.layer_idx % 2 == 1:
            img, rank = _image_rank(layer)
            return ~img | (rank % 2 == 0)
        return None

    def decode_active(self, layer, ctx):
        if layer.layer_idx % 2 == 0:
            img, rank = _image_rank(layer)
            return ~img | (rank % 3 == 0)
        return None


def _hand_stats(n_prompt: int, n_img: int, layers: int, steps: int) -> tuple[float, float]:
    stored = used = 0.0
    for layer in range(layers):
        for t in range(1, steps + 1):
            full = n_prompt + t
            if layer % 2:
                s = n_prompt - n_img // 2 + t
                u = s
            else:
                s = n_prompt + t
                u = n_prompt - n_img + math.ceil(n_img / 3) + t
            stored += s / full
            used += u / full
    n = layers * steps
    return stored / n, used / n


def test_eviction_policy_equals_masked_reference(tiny):
    _, model, processor = tiny
    inputs = make_inputs(processor, n=3)
    got, session = run_policy(model, inputs, "test_drop_alternate", NEW)
    ref = masked_reference(model, inputs, session.last_run.trace, NEW)
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)


def test_eviction_policy_stats_are_hand_computed(tiny):
    _, model, processor = tiny
    inputs = make_inputs(processor, n=3)
    _, session = run_policy(model, inputs, "test_drop_alternate", NEW)
    layout = token_layout(inputs["input_ids"], inputs["attention_mask"], model.config.image_token_id)
    layers = model.config.text_config.num_hidden_layers
    for b in range(3):
        s, u = _hand_stats(int(layout.n_prompt[b]), int(layout.n_image[b]), layers, NEW - 1)
        assert session.stats.per_sample_stored[b] == pytest.approx(s, abs=1e-9)
        assert session.stats.per_sample_used[b] == pytest.approx(u, abs=1e-9)
    assert session.stats.stored == pytest.approx(sum(session.stats.per_sample_stored) / 3)


def test_reference_detects_a_different_policy(llava):
    """The judge can fail: the full run's trace does not reproduce an evicting run."""
    model, processor = llava
    inputs = make_inputs(processor, n=3)
    got, _ = run_policy(model, inputs, "test_drop_alternate", NEW)
    _, full_session = run_policy(model, inputs, "full", NEW)
    ref = masked_reference(model, inputs, full_session.last_run.trace, NEW)
    assert (got.logits - ref.logits).abs().max() > 1e-3


def test_evicted_rows_leave_memory(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=1)
    _, full = run_policy(model, inputs, "full", 2)
    _, drop = run_policy(model, inputs, "test_drop_alternate", 2)
    n_img = int((inputs["input_ids"] == model.config.image_token_id).sum())
    for i, (a, b) in enumerate(zip(full.last_run.cache.layers, drop.last_run.cache.layers, strict=True)):
        expected = a.num_rows - (n_img // 2 if i % 2 else 0)
        assert b.num_rows == expected
        assert b.keys.shape[2] == expected and b.kv_bytes() < a.kv_bytes() or i % 2 == 0
