"""Rows per KV head: per-head eviction is exact (masked reference with per-head masks), batch
invariant, and evicted (row, head) pairs leave memory."""

from __future__ import annotations

import pytest
import torch

import avl_lab
from avl_lab.models import tiny_random
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import family_inputs, make_inputs

NEW = 12
PER_HEAD = [
    {"name": "vision_tiering", "S": 45, "C": 30, "per_head": True},
    [{"name": "vision_tiering", "S": 45, "C": 30, "per_head": True}, {"name": "update_schedule", "K": 2}],
    [{"name": "vision_tiering", "S": 30, "per_head": True, "layers": "1-"}, {"name": "h2o", "ratio": 0.8}],
]


def _ids(spec) -> str:
    return "+".join(s["name"] for s in (spec if isinstance(spec, list) else [spec]))


def _check(model, inputs, spec):
    got, session = run_policy(model, inputs, spec, NEW)
    ref = masked_reference(model, inputs, session.last_run.trace, NEW)
    assert torch.equal(got.tokens, ref.tokens), spec
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    return session


@pytest.mark.parametrize("spec", PER_HEAD, ids=_ids)
def test_per_head_policy_equals_masked_reference(tiny, spec):
    _, model, processor = tiny
    session = _check(model, make_inputs(processor, n=3), spec)
    layers = session.last_run.cache.layers
    assert any(layer.per_head for layer in layers)
    # the heads really keep different rows
    toks = [x.tok.masked_fill(~x.valid, -1) for x in layers if x.per_head]
    assert any(not torch.equal(t[:, 0], t[:, 1]) for t in toks)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "gemma3", "internvl"])
def test_per_head_tiering_on_other_families(kind):
    model, processor = tiny_random(kind)
    _check(model, family_inputs(processor, n=3), PER_HEAD[1])


def test_per_head_rows_are_batch_invariant(llava):
    model, processor = llava
    spec = PER_HEAD[1]
    batch, b_session = run_policy(model, make_inputs(processor, n=3), spec, NEW)
    for i in range(3):
        alone, a_session = run_policy(model, make_inputs(processor, rows=[i]), spec, NEW)
        assert torch.equal(batch.tokens[i : i + 1], alone.tokens)
        assert b_session.stats.per_sample_stored[i] == pytest.approx(a_session.stats.stored)
        assert b_session.stats.per_sample_used[i] == pytest.approx(a_session.stats.used)


def _row_bytes(layer) -> int:
    _, _, h, d = layer._k.shape
    return h * d * layer._k.element_size() * 2


@pytest.mark.parametrize("spec", [{"name": "vision_tiering", "S": 40}, PER_HEAD[0]], ids=_ids)
def test_evicted_rows_and_head_pairs_leave_memory(llava15_shaped, spec):
    """Bytes held after prefill and at the end of decode = the valid (row, head) pairs' bytes,
    within 5%, i.e. stored × the Full cache's bytes."""
    model, inputs = llava15_shaped
    seen = {}

    def probe(run):
        layers = run.cache.layers
        full = sum(int(run.full_rows()[0]) * _row_bytes(x) for x in layers)
        pairs = sum(x.valid.float().mean(1).sum() if x.per_head else x.valid.sum() for x in layers)
        kept = float(pairs) * _row_bytes(layers[0])
        return run.cache.kv_bytes(), kept, full

    with avl_lab.attach(model, spec) as session:
        session.generate(**inputs, max_new_tokens=1, do_sample=False)
        seen["prefill"] = probe(session.last_run)
        session.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        seen["end"] = probe(session.last_run)
    for when, (held, kept, full) in seen.items():
        assert held == pytest.approx(kept, rel=0.05), when
        assert kept < 0.75 * full, when  # something was really evicted
