"""SnapKV, PyramidKV and AdaKV keep what their reference code keeps (hand-computed budgets)."""

from __future__ import annotations

import pytest

import avl_lab
from tests.helpers import make_inputs

WINDOW = 8


def _held_after_prefill(model, processor, spec):
    inputs = make_inputs(processor, n=1)
    with avl_lab.attach(model, spec) as session:
        session.generate(**inputs, max_new_tokens=1, do_sample=False)
    n_prompt = int(inputs["attention_mask"].sum())
    layers = session.last_run.cache.layers
    return n_prompt, layers


def test_snapkv_keeps_the_window_and_its_budget_in_every_head(llava):
    model, processor = llava
    n, layers = _held_after_prefill(model, processor, {"name": "snapkv", "ratio": 0.5, "window": WINDOW})
    budget = n // 2
    for layer in layers:
        assert layer.per_head
        assert layer.valid.sum(-1).tolist() == [[budget] * layer.valid.shape[1]]
        last = n - WINDOW  # the window: the last 8 prompt tokens, in every head
        for h in range(layer.valid.shape[1]):
            toks = set(layer.tok[0, h][layer.valid[0, h]].tolist())
            assert set(range(last, n)) <= toks


def test_pyramidkv_layer_budgets_follow_the_reference_formula(llava):
    model, processor = llava
    n, layers = _held_after_prefill(
        model, processor, {"name": "pyramidkv", "ratio": 0.5, "window": WINDOW, "beta": 20})
    C, L, w = n // 2, len(layers), WINDOW
    lo = (C - w) // 20
    hi = 2 * (C - w) - lo
    if hi >= n - w:
        hi, lo = n - w, 2 * (C - w) - (n - w)
    step = (hi - lo) // (L - 1)
    want = [(C - w if n < 2 * (C - w) else hi - i * step) + w for i in range(L)]
    assert [int(x.valid.sum(-1)[0, 0]) for x in layers] == want
    assert want[0] > want[-1]


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_adakv_allots_the_layer_budget_across_heads(llava, alpha):
    model, processor = llava
    n, layers = _held_after_prefill(
        model, processor, {"name": "adakv", "ratio": 0.5, "window": WINDOW, "alpha": alpha})
    per_head = n // 2 - WINDOW
    uneven = False
    for layer in layers:
        counts = layer.valid.sum(-1)[0]  # [Hkv]
        H = counts.numel()
        assert int(counts.sum()) == H * (per_head + WINDOW)
        assert int(counts.min()) >= int(alpha * per_head) + WINDOW
        uneven |= len(set(counts.tolist())) > 1
    assert uneven == (alpha < 1.0)  # alpha = 1: every head its own budget, as SnapKV
