"""The prefill fast paths give the same tokens and logits as the plain path they replace
(stock SDPA under the library mask, column sums from a softmax under a materialised mask),
for every supported family, with and without padding, under the policies that exercise them:
last-query scores only (``full``), column sums (``h2o``, A-VL with T) and prefill
pruning (``fastv``, A-VL with P)."""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch

import avl_lab
from avl_lab.engine import prefill_scores
from avl_lab.models import tiny_random
from avl_lab.models.tiny import KINDS
from tests.helpers import family_inputs

NEW = 6
POLICIES = {
    "full": "full",
    "avl-all": {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50},
    "h2o": {"name": "h2o", "ratio": 0.5},
    "fastv": {"name": "fastv", "keep": 50, "layer": 1},
}
_MODELS: dict[str, tuple] = {}


def _model(kind: str):
    if kind not in _MODELS:
        _MODELS[kind] = tiny_random(kind, seed=0)
    return _MODELS[kind]


@contextlib.contextmanager
def plain_prefill():
    """Today's plain path: every mask through stock SDPA, column sums from ``colsum_ref``."""
    real_plan, real_colsum = prefill_scores.plan_mask, prefill_scores.colsum

    def colsum(query, key, scale, plan, mask, valid, per_kv_head=False, **kw):
        n, R = query.shape[2], key.shape[2]
        if mask is None:
            vis = torch.ones(n, R, dtype=torch.bool).tril(R - n)[None] & valid[:, None, :]
        else:
            vis = mask[:, 0].to(torch.bool) & valid[:, None, :]
        return prefill_scores.colsum_ref(query, key, vis, scale, per_kv_head)

    prefill_scores.plan_mask = lambda *a, **k: prefill_scores.MASKED
    prefill_scores.colsum = colsum
    try:
        yield
    finally:
        prefill_scores.plan_mask, prefill_scores.colsum = real_plan, real_colsum


def _run(model, inputs, policy):
    with avl_lab.attach(model, policy) as session:
        out = session.generate(**inputs, max_new_tokens=NEW, do_sample=False,
                               output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits).float(), session.stats


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("batch", [1, 3], ids=["no_padding", "padding"])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_prefill_equals_plain_path(kind, batch, policy):
    model, processor = _model(kind)
    inputs = family_inputs(processor, n=batch)
    if batch == 3:
        assert (inputs["attention_mask"] == 0).any()
    spec = POLICIES[policy]
    with plain_prefill():
        ref_tokens, ref_logits, ref_stats = _run(model, inputs, spec)
    tokens, logits, stats = _run(model, inputs, spec)
    assert torch.equal(tokens, ref_tokens), (kind, policy)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    assert stats.stored == pytest.approx(ref_stats.stored) and stats.used == pytest.approx(ref_stats.used)


def _plans(model, inputs, policy) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    real = prefill_scores.plan_mask

    def spy(*a, **k):
        plan = real(*a, **k)
        seen[plan.kind] += 1
        return plan

    prefill_scores.plan_mask = spy
    try:
        _run(model, inputs, policy)
    finally:
        prefill_scores.plan_mask = real
    return seen


def test_llava_takes_the_fast_paths():
    model, processor = _model("llava")
    layers = model.config.text_config.num_hidden_layers
    one, three = family_inputs(processor, n=1), family_inputs(processor, n=3)
    assert _plans(model, one, "full") == {"causal": layers}
    assert _plans(model, three, "full") == {"rows": layers}
    # After FastV's prune (layer 1) one row is plain causal again; three rows keep filler.
    assert _plans(model, one, POLICIES["fastv"]) == {"causal": layers}
    assert _plans(model, three, POLICIES["fastv"]) == {"rows": layers}


def test_gemma3_sliding_layers_keep_the_library_mask():
    model, processor = _model("gemma3")
    plans = _plans(model, family_inputs(processor, n=1), "full")
    assert plans["masked"] >= 1  # image blocks attend both ways: no causal shortcut
