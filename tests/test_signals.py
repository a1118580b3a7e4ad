"""VisionTiering's ranking signals (issue 32): each equals the masked reference (rows shared, rows
per KV head beside TextH2O, per-head tiering), is batch invariant, ranks as its definition says,
and the signals really choose different rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from avl_lab.policies import build
from avl_lab.policies.vision_tiering import SIGNALS, VisionTiering
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import make_inputs

NEW = 10


def _specs(signal: str) -> list[dict]:
    return [
        {"name": "avl", "S": 45, "C": 30, "K": 2, "signal": signal},  # shared rows, update steps
        {"name": "avl", "S": 45, "C": 30, "K": 2, "T": 50, "signal": signal},  # rows per KV head
        {"name": "vision_tiering", "S": 45, "C": 20, "per_head": True, "signal": signal},
    ]


@pytest.mark.parametrize("signal", SIGNALS)
def test_every_signal_equals_the_masked_reference(tiny, signal):
    _, model, processor = tiny
    inputs = make_inputs(processor, n=3)
    for spec in _specs(signal):
        got, session = run_policy(model, inputs, spec, NEW)
        ref = masked_reference(model, inputs, session.last_run.trace, NEW)
        assert torch.equal(got.tokens, ref.tokens), spec
        torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
        assert session.stats.used < session.stats.stored < 1.0


@pytest.mark.parametrize("signal", SIGNALS)
def test_every_signal_is_batch_invariant(llava, signal):
    model, processor = llava
    spec = {"name": "avl", "S": 45, "C": 30, "K": 2, "T": 50, "signal": signal}
    batch, _ = run_policy(model, make_inputs(processor, n=3), spec, NEW)
    for i in range(3):
        alone, _ = run_policy(model, make_inputs(processor, rows=[i]), spec, NEW)
        assert torch.equal(batch.tokens[i:i + 1], alone.tokens), (signal, i)
        torch.testing.assert_close(batch.logits[:, i:i + 1], alone.logits, atol=1e-4, rtol=0)


def test_signals_choose_different_rows(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    kept = {}
    for signal in SIGNALS:
        _, session = run_policy(model, inputs, {"name": "avl", "S": 45, "C": 30, "signal": signal}, 3)
        kept[signal] = [layer.tok.masked_fill(~layer.valid, -1) for layer in session.last_run.cache.layers]
    for a in SIGNALS:
        for b in SIGNALS:
            if a < b:
                assert any(not torch.equal(x, y) for x, y in zip(kept[a], kept[b])), (a, b)


def test_prefill_scores_follow_their_definitions():
    g = torch.Generator().manual_seed(0)
    B, H, R = 2, 3, 7
    head_scores = torch.rand(B, H, R, generator=g)
    ctx = SimpleNamespace(head_scores=head_scores, scores=head_scores.mean(1),
                          head_colsum=torch.rand(B, H, R, generator=g),
                          key_norms=torch.rand(B, H, R, generator=g),
                          value_norms=torch.rand(B, H, R, generator=g))
    ctx.colsum = ctx.head_colsum.mean(1)
    score = {s: VisionTiering(S=50, signal=s).prefill_score(None, ctx) for s in SIGNALS
             if s != "window"}
    torch.testing.assert_close(score["last_token"], head_scores.mean(1))
    torch.testing.assert_close(score["colsum"], ctx.head_colsum.mean(1))
    torch.testing.assert_close(score["attn_vnorm"], (head_scores * ctx.value_norms).mean(1))
    low = ctx.key_norms.mean(1).argmin(-1)  # the smallest mean key norm ranks first
    assert torch.equal(score["key_norm"].argmax(-1), low)
    per_head = VisionTiering(S=50, signal="attn_vnorm", per_head=True).prefill_score(None, ctx)
    torch.testing.assert_close(per_head, head_scores * ctx.value_norms)


@pytest.mark.parametrize(("spec", "field"), [
    ({"name": "vision_tiering", "S": 45, "signal": "attention"}, "signal"),
    ({"name": "vision_tiering", "S": 45, "signal": "window", "window": 0}, "window"),
    ({"name": "avl", "T": 50, "signal": "key_norm"}, "signal"),
])
def test_bad_signal_settings_name_the_field(spec, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        build(spec)
