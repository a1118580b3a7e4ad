"""TextH2O per KV head, as the official code: each head scores its own text rows (quantile
centred on its own attention) and keeps its own window; masked-reference equality with per-head
masks, batch invariance, hand-computed scores, and the shared variant beside it."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

from avl_lab.engine.layout import Modality, token_layout
from avl_lab.policies.text_h2o import TextH2O
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import assert_batch_invariant, make_inputs
from tests.test_fidelity import _official_prefill_scores

NEW = 10
SPECS = [
    {"name": "text_h2o", "T": 50},
    {"name": "text_h2o", "T": 30, "variant": "h2o"},
    {"name": "text_h2o", "T": 40, "variant": "max_length"},
    {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50},
    {"name": "text_h2o", "T": 50, "per_head": False, "layers": "1-"},
]


def _ids(spec: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in spec.items() if k != "name") + f"-{spec['name']}"


def _after_image(layer) -> torch.Tensor:
    mod = layer.mod
    return ((mod == int(Modality.INSTRUCTION)) | (mod == int(Modality.GENERATED))) & layer.valid


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_text_h2o_equals_masked_reference(tiny, spec):
    _, model, processor = tiny
    inputs = make_inputs(processor, n=3)
    got, session = run_policy(model, inputs, spec, NEW)
    ref = masked_reference(model, inputs, session.last_run.trace, NEW)
    assert torch.equal(got.tokens, ref.tokens), spec
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    layers = session.last_run.cache.layers
    per_head = spec.get("per_head", True)
    assert all(x.per_head == per_head for x in layers[1:])
    if per_head and spec.get("variant", "quantile") == "quantile":  # heads keep different rows
        # (plain accumulated attention favours the earliest text rows in every head of these
        # random models, so the h2o / max_length variants may keep the same rows in each head)
        toks = [(x.tok.masked_fill(~_after_image(x), -1)) for x in layers]
        assert any(not torch.equal(t[:, 0], t[:, 1]) for t in toks)


@pytest.mark.parametrize("per_head", [True, False])
def test_text_h2o_is_batch_invariant(llava, per_head):
    model, processor = llava
    spec = {"name": "text_h2o", "T": 40, "per_head": per_head}
    assert_batch_invariant(model, processor, spec, NEW)


def test_every_head_holds_the_official_window(llava):
    """Per head, each KV head holds round(T% of the current text) text rows after the run
    (the same count in every head, as the official ``keep_topk`` per head)."""
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    lay = token_layout(inputs["input_ids"], inputs["attention_mask"], model.config.image_token_id)
    n_system = (lay.modality == int(Modality.SYSTEM)).sum(1)
    n_after = lay.n_prompt - lay.n_image - n_system
    _, session = run_policy(model, inputs, {"name": "text_h2o", "T": 50}, NEW)
    want = [max(round(Fraction(50 * (int(n) + NEW - 1), 100)), 1) for n in n_after]
    for layer in session.last_run.cache.layers:
        after = _after_image(layer).sum(-1)  # [B, Hkv]
        assert after.tolist() == [[w] * after.shape[1] for w in want]


def _case(H: int = 2):
    """One sequence: system, 3 image rows, 5 text rows; a causal attention per head."""
    torch.manual_seed(1)
    mod = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2, 2]])
    R = mod.shape[1]
    raw = torch.rand(H, R, R).tril()
    probs = raw / raw.sum(-1, keepdim=True)  # [H, R, R]
    return mod, R, probs, [4, 5, 6, 7, 8]


def test_per_head_prefill_scores_are_the_official_per_head_scores():
    mod, R, probs, text = _case()
    layer = SimpleNamespace(mod=mod, valid=torch.ones(1, R, dtype=torch.bool))

    def query_probs(rows, per_head=False):
        p = probs[:, rows[0]][None]  # [1, H, m, R]
        return p if per_head else p.mean(1)

    ctx = SimpleNamespace(query_probs=query_probs)
    got = TextH2O(T=30)._prefill_scores(layer, ctx)  # [1, H, R]
    assert got.shape == (1, 2, R)
    for h in range(2):
        want = _official_prefill_scores(probs[h][text][:, text], 0.7)
        torch.testing.assert_close(got[0, h, text], want)
    assert torch.all(got[0, :, :4] == 0)
    assert not torch.allclose(got[0, 0], got[0, 1])
    shared = TextH2O(T=30, per_head=False)._prefill_scores(layer, ctx)  # [1, R]
    torch.testing.assert_close(shared[0, text], _official_prefill_scores(probs.mean(0)[text][:, text], 0.7))


def test_per_head_decode_scores_use_each_heads_quantile():
    _, R, _, text = _case()
    entries = text + [R]  # the text rows, then the new token's row
    live = torch.ones(1, 2, len(entries), dtype=torch.bool)
    live[0, 1, 1] = False  # head 1 evicted text row 5 earlier
    acc = torch.rand(1, 2, len(entries)) * live
    p = torch.rand(1, 2, len(entries)) * live
    p = p / p.sum(-1, keepdim=True)
    got = TextH2O(T=30).decode_scores(acc, p, live)
    for h in range(2):
        on = [i for i in range(len(entries)) if live[0, h, i]]
        q = torch.quantile(p[0, h, on], 0.7)  # this head's text rows, the new one included
        old = on[:-1]
        torch.testing.assert_close(got[0, h, old], acc[0, h, old] + p[0, h, old] - q)
        assert float(got[0, h, -1]) == pytest.approx(float(acc[0, h, -1] + p[0, h, -1]))
    assert float(got[0, 1, 1]) == 0.0  # a gone entry gains nothing


def test_per_head_is_validated():
    with pytest.raises(ValueError, match="`per_head`"):
        TextH2O(T=50, per_head="yes")


class _Layer:
    """What TextH2O's decode step reads of a layer: its index, rows and number."""

    def __init__(self, idx: int, w: int, R: int, gen: torch.Generator) -> None:
        self.layer_idx, self.num_rows = idx, R
        self.valid = torch.rand(2, 4, R, generator=gen) < 0.9
        rows = torch.sort(torch.randperm(R - 1, generator=gen)[:w]).values.expand(2, 4, w).clone()
        rows[:, :, :2] = -1  # entries evicted earlier
        self.ix = {"rows": rows, "acc": torch.rand(2, 4, w, generator=gen),
                   "n_system": torch.full((2, 4), 3)}

    def index(self, name):
        return self.ix

    def set_index(self, name, rows, **values):
        self.ix = {"rows": rows, **values}


def test_decode_decides_every_layer_at_once_as_each_alone():
    """TextH2O's once-per-step decision over all layers (stacked, left-padded to the widest
    index) equals deciding each layer on its own: indices, scores and drop lists."""
    gen = torch.Generator().manual_seed(0)
    ctx = SimpleNamespace(n_text=torch.tensor([30, 24]), step=3, max_new_tokens=8)
    probs = torch.rand(2, 4, 90, generator=gen).softmax(-1)
    for variant in ("quantile", "h2o", "max_length"):
        policy = TextH2O(T=40, variant=variant)
        policy.setup(None, ctx)
        together = [_Layer(i, w, 90, torch.Generator().manual_seed(i)) for i, w in enumerate((9, 14, 6))]
        alone = [_Layer(i, w, 90, torch.Generator().manual_seed(i)) for i, w in enumerate((9, 14, 6))]
        for layer in together:
            policy.decode_keep(layer, SimpleNamespace(head_probs=probs))
        drops = policy.end_step(ctx)
        for layer, solo in zip(together, alone, strict=True):
            policy.decode_keep(solo, SimpleNamespace(head_probs=probs))
            (drop,) = policy.end_step(ctx).values()
            assert torch.equal(drops[layer.layer_idx].rows, drop.rows), variant
            assert torch.equal(layer.ix["rows"], solo.ix["rows"]), variant
            torch.testing.assert_close(layer.ix["acc"], solo.ix["acc"], rtol=0, atol=1e-6)
        assert any(bool((d.rows >= 0).any()) for d in drops.values()), variant  # some evicted
