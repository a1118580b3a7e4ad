"""Rows per KV head: per-head eviction is exact (masked reference with per-head masks), batch
invariant, and evicted (row, head) pairs leave memory."""

from __future__ import annotations

import pytest
import torch

import avl_lab
from avl_lab.engine.cache import aligned
from avl_lab.models import tiny_random
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import assert_batch_invariant, family_inputs, make_inputs

NEW = 12
PER_HEAD = [
    {"name": "vision_tiering", "S": 45, "C": 30, "per_head": True},
    [
        {"name": "vision_tiering", "S": 45, "C": 30, "per_head": True},
        {"name": "update_schedule", "K": 2},
    ],
    [
        {"name": "vision_tiering", "S": 30, "per_head": True, "layers": "1-"},
        {"name": "h2o", "ratio": 0.8},
    ],
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
    assert_batch_invariant(model, processor, spec, NEW)


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


class _Run:
    def rows_to_come(self) -> int:
        return 3


class _Cache:
    run = _Run()
    state_defaults: dict = {}


def _layer(k, v):
    """An ``AVLLayer`` holding ``k``/``v`` ``[B, Hkv, R, D]`` (all rows valid) token-major."""
    from avl_lab.engine.cache import AVLLayer

    B, _, R, _ = k.shape
    layer = AVLLayer(0, _Cache())
    layer._store(k.transpose(1, 2), v.transpose(1, 2), head_major=False)
    tok = torch.arange(R).expand(B, R)
    layer.rows = {
        "valid": torch.ones(B, R, dtype=torch.bool),
        "pos": tok,
        "tok": tok,
        "mod": torch.zeros(B, R, dtype=torch.int8),
    }
    return layer


def _assert_holds(layer, k, v, kept):
    """Each head's valid slots hold its kept rows of ``k``/``v``, in order."""
    B, H = kept.shape[:2]
    valid = layer.valid if layer.per_head else layer.valid[:, None].expand(B, H, -1)
    for b in range(B):
        for h in range(H):
            rows = kept[b, h].nonzero().flatten()
            assert int(valid[b, h].sum()) == len(rows)
            assert torch.equal(layer.keys[b, h][valid[b, h]], k[b, h, rows])
            assert torch.equal(layer.values[b, h][valid[b, h]], v[b, h, rows])


def test_per_head_compaction_keeps_each_heads_rows_head_major():
    """Per-head eviction where the heads keep different rows (more than SLACK slots apart)
    moves each (row, head) pair's values with it, and packs each KV head's rows on their own,
    head-major (each head's slots one run), and keeps it so through later evictions, per head
    or shared."""
    gen = torch.Generator().manual_seed(0)
    B, H, R, D = 2, 3, 64, 8
    k, v = torch.randn(B, H, R, D, generator=gen), torch.randn(B, H, R, D, generator=gen)
    layer = _layer(k, v)
    keep = torch.rand(B, H, R, generator=gen) > 0.6
    assert not aligned(int(keep.sum(-1).max()), int(keep.any(1).sum(-1).max()))
    layer.evict(keep)
    assert layer.per_head and layer.valid.shape[-1] == int(keep.sum(-1).max())
    assert layer.keys.stride(1) > layer.keys.stride(2) == D  # head-major: a head's rows one run
    _assert_holds(layer, k, v, keep)
    # A second, shared keep (the first kept slot of every head dropped) on head-major storage.
    slots = layer.valid.shape[-1]
    keep2 = torch.ones(B, slots, dtype=torch.bool)
    keep2[:, 0] = False
    kept2 = keep.clone()
    for b in range(B):
        for h in range(H):
            kept2[b, h, keep[b, h].nonzero()[0]] = False
    layer.evict(keep2)
    _assert_holds(layer, k, v, kept2)
    assert layer.keys.stride(1) > layer.keys.stride(2) == D  # a layer packed per head stays so


def test_per_head_compaction_of_a_few_differing_rows_stays_aligned():
    """Heads that differ in a few rows (TextH2O's per-head text windows beside shared image
    rows) are compacted into slots shared by every head, token-major: a slot holds one token
    for all heads, a row one head dropped is that head's hole, and the slots number the union
    of the kept rows."""
    gen = torch.Generator().manual_seed(2)
    B, H, R, D = 2, 4, 40, 8
    k, v = torch.randn(B, H, R, D, generator=gen), torch.randn(B, H, R, D, generator=gen)
    layer = _layer(k, v)
    shared = torch.rand(B, R, generator=gen) > 0.5
    keep = shared[:, None].expand(B, H, R).clone()
    keep[:, 1, shared[0].nonzero()[0]] = False  # heads 1 and 3 each drop a row the others keep
    keep[:, 3, shared[0].nonzero()[-1]] = False
    layer.evict(keep)
    union = keep.any(1)
    assert layer.per_head and layer.valid.shape[-1] == int(union.sum(-1).max())
    assert layer.keys.stride(1) == D and layer.keys.stride(2) == H * D  # token-major
    _assert_holds(layer, k, v, keep)
    tok = torch.arange(R).expand(B, R)
    for b in range(B):  # every head's slot s holds the same token
        n = int(union[b].sum())
        assert torch.equal(layer.tok[b, :, :n], tok[b][union[b]].expand(H, n))


def test_shared_compaction_stays_token_major():
    gen = torch.Generator().manual_seed(1)
    B, H, R, D = 2, 4, 12, 8
    k, v = torch.randn(B, H, R, D, generator=gen), torch.randn(B, H, R, D, generator=gen)
    layer = _layer(k, v)
    keep = torch.rand(B, R, generator=gen) > 0.5
    layer.evict(keep)
    assert not layer.per_head
    assert layer.keys.stride(2) == H * D  # token-major: a row's heads one run
    _assert_holds(layer, k, v, keep[:, None].expand(B, H, R))
