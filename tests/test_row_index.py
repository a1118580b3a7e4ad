"""Row indices (``AVLLayer.set_index``) keep pointing at the same rows through compaction,
deferred drops, a split into rows per KV head and batch reorders; ``DropRows`` evicts by row
number as a keep mask would."""

from __future__ import annotations

import torch

from avl_lab.engine.cache import AVLCache
from avl_lab.policies.base import DropRows, Policy, clear_rows
from avl_lab.policies.compose import Compose

B, H, R, D = 2, 3, 10, 4


class _Run:
    """The least of a ``Run`` a cache needs: bookkeeping for R prompt rows."""

    step = 0
    tokens_seen = R

    def rows_to_come(self) -> int:
        return 4

    def new_rows(self, layer_idx: int, batch: int) -> dict[str, torch.Tensor]:
        tok = torch.arange(R).expand(batch, R).clone()
        return {"valid": torch.ones(batch, R, dtype=torch.bool), "pos": tok.clone(), "tok": tok,
                "mod": torch.zeros(batch, R, dtype=torch.int8)}


def _layer():
    cache = AVLCache(1, _Run())
    k = torch.randn(B, H, R, D)
    cache.update(k, k + 1, 0)
    return cache, cache.layers[0]


def _toks(layer, rows):
    """The token of each entry (-1 where the entry is -1 or its row is no longer valid)."""
    at = rows.clamp(min=0)
    live = (rows >= 0) & layer.valid.gather(-1, at)
    return torch.where(live, layer.tok.gather(-1, at), -1)


def test_compaction_renumbers_the_index():
    _, layer = _layer()
    rows = torch.tensor([[1, 3, 5, -1], [0, 2, 4, 9]])
    layer.set_index("x", rows, score=torch.tensor([[1.0, 2, 3, 0], [4, 5, 6, 7]]))
    keep = torch.ones(B, R, dtype=torch.bool)
    keep[0, [0, 3]] = False
    keep[1, [2, 7]] = False
    layer.evict(keep)
    ix = layer.index("x")
    assert torch.equal(_toks(layer, ix["rows"]), torch.tensor([[1, -1, 5, -1], [0, -1, 4, 9]]))
    assert torch.equal(ix["rows"], torch.tensor([[0, -1, 3, -1], [0, -1, 3, 7]]))
    assert torch.equal(ix["score"], torch.tensor([[1.0, 2, 3, 0], [4, 5, 6, 7]]))  # entries stay


def test_drop_evicts_by_number_then_compaction_frees():
    cache, layer = _layer()
    layer.set_index("x", torch.tensor([[2, 4, 6], [1, 5, 8]]))
    layer.drop(torch.tensor([[4, -1], [-1, 0]]))  # -1: nothing (row 0 of batch 0 stays)
    want = torch.ones(B, R, dtype=torch.bool)
    want[0, 4] = want[1, 0] = False
    assert torch.equal(layer.valid, want)
    assert layer.num_rows == R  # deferred: still allocated
    cache.compact(force=True)
    assert layer.num_rows == R - 1
    assert torch.equal(_toks(layer, layer.index("x")["rows"]), torch.tensor([[2, -1, 6], [1, 5, 8]]))


def test_split_heads_and_per_head_compaction():
    _, layer = _layer()
    layer.set_index("x", torch.tensor([[2, 4, 6], [1, 5, 8]]), n=torch.tensor([3, 3]))
    keep = torch.ones(B, H, R, dtype=torch.bool)
    keep[0, 1, 4] = False  # head 1 of batch 0 drops row 4
    keep[1, 2, [0, 1]] = False
    layer.evict(keep)
    assert layer.per_head
    ix = layer.index("x")
    assert ix["rows"].shape == (B, H, 3) and ix["n"].shape == (B, H)
    toks = _toks(layer, ix["rows"])
    assert torch.equal(toks[0, 1], torch.tensor([2, -1, 6]))
    assert torch.equal(toks[0, 0], torch.tensor([2, 4, 6]))
    assert torch.equal(toks[1, 2], torch.tensor([-1, 5, 8]))


def test_batch_reorder_carries_the_index():
    _, layer = _layer()
    layer.set_index("x", torch.tensor([[2, 4], [1, 5]]))
    layer.reorder_cache(torch.tensor([1, 1]))
    assert torch.equal(layer.index("x")["rows"], torch.tensor([[1, 5], [1, 5]]))


def test_drop_rows_equal_a_keep_mask():
    valid = torch.rand(B, H, R) > 0.2
    rows = torch.tensor([[[0, -1, 3], [9, 9, -1], [-1, -1, -1]],
                         [[5, 6, 7], [0, 1, -1], [2, -1, 4]]])
    want = valid.clone()
    for b in range(B):
        for h in range(H):
            for r in rows[b, h].tolist():
                if r >= 0:
                    want[b, h, r] = False
    assert torch.equal(clear_rows(valid, rows), want)
    assert torch.equal(DropRows(rows).keep(valid), want)
    shared = clear_rows(valid, torch.tensor([[1, -1], [0, 2]]))  # one list for every head
    assert not shared[0, :, 1].any() and not shared[1, :, [0, 2]].any()


class _Drop(Policy):
    def __init__(self, rows):
        self.rows = rows

    def decode_keep(self, layer, ctx):
        return DropRows(self.rows)


class _Mask(Policy):
    def __init__(self, keep):
        self.keep = keep

    def decode_keep(self, layer, ctx):
        return self.keep


def test_compose_joins_drops_and_masks():
    _, layer = _layer()
    a, b = torch.tensor([[1], [2]]), torch.tensor([[3, -1], [-1, 4]])
    out = Compose([_Drop(a), _Drop(b)]).decode_keep(layer, None)
    assert isinstance(out, DropRows)
    assert torch.equal(out.keep(layer.valid), clear_rows(clear_rows(layer.valid, a), b))
    mask = torch.ones(B, R, dtype=torch.bool)
    mask[:, 0] = False
    out = Compose([_Mask(mask), _Drop(a)]).decode_keep(layer, None)
    assert torch.equal(out, mask & clear_rows(layer.valid, a))


def test_bookkeeping_buffers_give_the_same_run(llava, monkeypatch):
    """Bookkeeping appended into buffers with room to grow (what large layers use) gives the run
    that per-step concatenation gives (what small ones use), under decode evictions per head."""
    import avl_lab.engine.cache as cache_mod
    from avl_lab.testing import run_policy
    from tests.helpers import make_inputs

    model, processor = llava
    inputs = make_inputs(processor, n=2)
    spec = {"name": "avl", "S": 45, "C": 30, "K": 2, "T": 40}
    small, s0 = run_policy(model, inputs, spec, 10)
    monkeypatch.setattr(cache_mod, "APPEND_COPY", 0)
    buffered, s1 = run_policy(model, inputs, spec, 10)
    assert torch.equal(small.tokens, buffered.tokens)
    torch.testing.assert_close(small.logits, buffered.logits, atol=0, rtol=0)
    assert s0.stats == s1.stats
    layer = s1.last_run.cache.layers[0]
    assert any(buf is not None for buf, _ in layer._meta.values())  # the buffer path ran
