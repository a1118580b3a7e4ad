"""A-VL policies: batch invariance, limits, accounting against the paper, real savings, errors."""

from __future__ import annotations

import math

import pytest
import torch

import avl_lab
from avl_lab import policies
from avl_lab.engine.layout import token_layout
from avl_lab.testing import run_policy
from tests.helpers import make_inputs

NEW = 24


# --- batch invariance ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", policies.names())
def test_each_row_equals_that_row_alone(tiny, name):
    _, model, processor = tiny
    spec = policies.example(name)
    new = 12  # enough decode steps for update steps, H2O/TextH2O/streaming eviction in decode
    batch, _ = run_policy(model, make_inputs(processor, n=3), spec, new)
    for i in range(3):
        alone_inputs = make_inputs(processor, rows=[i])
        alone, _ = run_policy(model, alone_inputs, spec, new)
        assert torch.equal(batch.tokens[i : i + 1], alone.tokens), (name, i)
        torch.testing.assert_close(batch.logits[:, i : i + 1], alone.logits, atol=1e-4, rtol=0)


# --- limits --------------------------------------------------------------------------------------


def _same(a, b):
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)


def test_s_c_100_is_full(tiny):
    _, model, processor = tiny
    inputs = make_inputs(processor)
    full, _ = run_policy(model, inputs, "full", NEW)
    got, session = run_policy(model, inputs, {"name": "avl", "S": 100, "C": 100, "K": 3}, NEW)
    _same(got, full)
    assert session.stats.stored == pytest.approx(1.0) and session.stats.used == pytest.approx(1.0)


def test_p_100_is_no_prefill_pruning(tiny):
    _, model, processor = tiny
    inputs = make_inputs(processor)
    base, s0 = run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30, "K": 3}, NEW)
    got, s1 = run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 100}, NEW)
    _same(got, base)
    assert s1.stats.stored == pytest.approx(s0.stats.stored)


def test_t_100_is_no_text_eviction(tiny):
    _, model, processor = tiny
    inputs = make_inputs(processor)
    full, _ = run_policy(model, inputs, "full", NEW)
    got, session = run_policy(model, inputs, {"name": "avl", "T": 100}, NEW)
    _same(got, full)
    assert session.stats.stored == pytest.approx(1.0)


def test_k1_refreshes_every_step(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    _, every = run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30, "K": 1}, NEW)
    assert every.stats.used == pytest.approx(every.stats.stored)  # all secondary rows, each step
    _, some = run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30, "K": 2}, NEW)
    _, never = run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30}, NEW)
    assert never.stats.used < some.stats.used < some.stats.stored


def test_update_steps_rechoose_the_core(llava):
    """On update steps the core set follows that step's attention, so it can change."""
    model, processor = llava
    inputs = make_inputs(processor, n=1)
    with avl_lab.attach(model, {"name": "avl", "S": 60, "C": 20, "K": 1}, record=True) as session:
        session.generate(**inputs, max_new_tokens=2, do_sample=False)
        run = session.last_run
    # After step 1 (an update step) the core set came from decode attention, not prefill.
    with avl_lab.attach(model, {"name": "avl", "S": 60, "C": 20}, record=True) as session:
        session.generate(**inputs, max_new_tokens=2, do_sample=False)
    changed = [not torch.equal(a.state("core"), b.state("core"))
               for a, b in zip(run.cache.layers, session.last_run.cache.layers, strict=True)]
    assert any(changed)


def test_text_window_smaller_than_the_prompt_text_runs(tiny):
    """T=5: the text after the image ends at round(5% of its current length) rows (at least
    one); the system rows are never evicted (official semantics, see test_fidelity.py)."""
    _, model, processor = tiny
    inputs = make_inputs(processor)
    got, session = run_policy(model, inputs, {"name": "avl", "T": 5}, NEW)
    assert got.tokens.shape == (3, NEW)
    layout = token_layout(inputs["input_ids"], inputs["attention_mask"], model.config.image_token_id)
    n_system = (layout.modality == 0).sum(1)
    n_after = layout.n_prompt - layout.n_image - n_system
    window = torch.round((n_after + NEW - 1) * 0.05).long().clamp(min=1)  # after the last step
    for layer in session.last_run.cache.layers:  # T is per KV head: [B, Hkv] counts, each head
        after = (((layer.mod == 2) | (layer.mod == 3)) & layer.valid).sum(-1)
        system = ((layer.mod == 0) & layer.valid).sum(-1)
        assert torch.equal(after, window[:, None].expand_as(after))
        assert torch.equal(system, n_system[:, None].expand_as(system))


# --- accounting against the paper (LLaVA-1.5 layout: 576 image tokens, ~60 others) --------------


def _paper_fraction(n_text: int, n_kept_img: int, n_img: int, steps: int) -> float:
    return sum((n_text + n_kept_img + t) / (n_text + n_img + t) for t in range(1, steps + 1)) / steps


def test_s40_stored_matches_the_paper_formula(llava15_shaped):
    model, inputs = llava15_shaped
    n_img = int((inputs["input_ids"] == model.config.image_token_id).sum())
    n_text = inputs["input_ids"].shape[1] - n_img
    assert n_img == 576 and 50 <= n_text <= 70
    _, session = run_policy(model, inputs, {"name": "avl", "S": 40}, 8)
    expected = _paper_fraction(n_text, math.floor(0.4 * 576), 576, 7)
    assert session.stats.stored == pytest.approx(expected, abs=0.01)
    assert session.stats.stored == pytest.approx(0.46, abs=0.01)  # paper Table 3


def test_s45_c30_used_below_stored_by_the_formula(llava15_shaped):
    model, inputs = llava15_shaped
    n_text = inputs["input_ids"].shape[1] - 576
    _, session = run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30}, 8)
    stored = _paper_fraction(n_text, math.floor(0.45 * 576), 576, 7)  # counts round down
    used = _paper_fraction(n_text, math.floor(0.30 * 576), 576, 7)
    assert session.stats.stored == pytest.approx(stored, abs=1e-6)
    assert session.stats.used == pytest.approx(used, abs=1e-6)
    assert session.stats.stored - session.stats.used == pytest.approx(stored - used, abs=1e-6)


def test_memory_is_really_freed(llava15_shaped):
    model, inputs = llava15_shaped
    _, full = run_policy(model, inputs, "full", 1)  # one token: the cache as left by prefill
    _, avl = run_policy(model, inputs, {"name": "avl", "S": 45}, 1)
    ratio = avl.last_run.cache.kv_bytes() / full.last_run.cache.kv_bytes()
    assert ratio <= 0.52


def test_decode_computes_over_only_the_active_rows(llava15_shaped, monkeypatch):
    model, inputs = llava15_shaped
    rows_seen: list[int] = []
    real = avl_lab.ext.dispatch  # what the engine's decode step calls

    def counting(q, k, v, active, scale, per_head_probs, impl="auto", want_probs=True):
        assert active.dtype == torch.bool  # the active rows' mask, as wide as the layer
        rows_seen.append(int(active.sum()))
        return real(q, k, v, active, scale, per_head_probs, impl, want_probs)

    monkeypatch.setattr(avl_lab.ext, "dispatch", counting)
    n_text = inputs["input_ids"].shape[1] - 576
    run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30}, 4)
    layers = model.config.text_config.num_hidden_layers
    expected = [n_text + math.floor(0.3 * 576) + t for t in range(1, 4) for _ in range(layers)]
    assert rows_seen == expected


# --- bad configurations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "avl", "S": 40, "C": 50}, "C"),
        ({"name": "avl", "S": 95, "P": 90}, "S"),
        ({"name": "avl", "S": 0}, "S"),
        ({"name": "avl", "S": 45, "C": 30, "P": 120}, "P"),
        ({"name": "avl", "T": -5}, "T"),
        ({"name": "avl", "S": 45, "C": 30, "K": 0}, "K"),
        ({"name": "vision_tiering", "S": 101}, "S"),
        ({"name": "update_schedule", "K": 0}, "K"),
        ({"name": "streaming", "budget": 3, "sinks": 4}, "budget"),
        ({"name": "h2o", "ratio": 1.5}, "ratio"),
        ({"name": "fastv", "keep": 0}, "keep"),
        ({"name": "avl", "S": 45, "Q": 3}, "Q"),
    ],
)
def test_bad_config_names_the_field(spec, field):
    with pytest.raises(ValueError, match=f"`?{field}`?"):
        policies.build(spec)


def test_ratio_budget_below_sinks_is_rejected_at_run_time(llava):
    model, processor = llava
    with pytest.raises(ValueError, match="sinks"):
        run_policy(model, make_inputs(processor, n=1), {"name": "streaming", "ratio": 0.01}, 2)


def test_budget_as_rows_and_as_ratio(llava):
    """A fixed budget equals a ratio of the prompt's rows (``ratio_of="prompt"``)."""
    model, processor = llava
    inputs = make_inputs(processor, n=1)
    n = inputs["input_ids"].shape[1]
    _, by_rows = run_policy(model, inputs, {"name": "h2o", "budget": 40}, 4)
    _, by_ratio = run_policy(model, inputs, {"name": "h2o", "ratio": 40 / n, "ratio_of": "prompt"}, 4)
    for a, b in zip(by_rows.last_run.cache.layers, by_ratio.last_run.cache.layers, strict=True):
        assert a.valid.sum(-1).tolist() == b.valid.sum(-1).tolist() == [[40, 40]]  # per KV head


@pytest.mark.parametrize("spec", [{"name": "fastv", "layer": 9}, {"name": "prefill_prune", "P": 50, "layer": 4}])
def test_prune_layer_beyond_the_model_names_the_field(llava, spec):
    model, processor = llava
    with pytest.raises(ValueError, match="`layer` must be in"):
        run_policy(model, make_inputs(processor, n=1), spec, 2)
