"""`full` through attach equals stock sdpa generate: tokens identical, logits within 1e-4."""

from __future__ import annotations

import pytest
import torch

import avl_lab
from tests.helpers import make_inputs

TOL = 1e-4


def _generate(model, inputs, session=None, **kw):
    kw = {"max_new_tokens": 16, "do_sample": False, "output_logits": True,
          "return_dict_in_generate": True, **kw}
    gen = session.generate if session is not None else model.generate
    return gen(**inputs, **kw)


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("batch", [1, 3])
def test_full_equals_stock_greedy(tiny, batch):
    kind, model, processor = tiny
    inputs = make_inputs(processor, n=batch)
    if batch == 3:
        assert (inputs["attention_mask"] == 0).any(), "the batch must exercise left padding"
    if kind == "llava_next" and batch == 3:
        counts = (inputs["input_ids"] == model.config.image_token_id).sum(1)
        assert len(set(counts.tolist())) == 3, "rows must hold different image-token counts"
    ref = _generate(model, inputs)
    with avl_lab.attach(model, "full") as session:
        got = _generate(model, inputs, session)
    assert torch.equal(ref.sequences, got.sequences)
    assert _max_diff(ref.logits, got.logits) <= TOL
    assert session.stats.stored == pytest.approx(1.0) and session.stats.used == pytest.approx(1.0)
    assert session.stats.steps == 15


@pytest.mark.parametrize("extra", [{"num_beams": 2}, {"num_beams": 2, "num_return_sequences": 2}])
def test_full_equals_stock_beam_search(tiny, extra):
    _, model, processor = tiny
    inputs = make_inputs(processor, n=3)
    ref = _generate(model, inputs, output_scores=True, **extra)
    with avl_lab.attach(model, "full") as session:
        got = _generate(model, inputs, session, output_scores=True, **extra)
    assert torch.equal(ref.sequences, got.sequences)
    assert _max_diff(ref.scores, got.scores) <= TOL
    assert len(session.stats.per_sample_stored) == 3


def test_sampling_with_several_returned_sequences(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    kw = {"do_sample": True, "num_return_sequences": 2, "top_k": 5}
    torch.manual_seed(3)
    ref = _generate(model, inputs, **kw)
    with avl_lab.attach(model, "full") as session:
        torch.manual_seed(3)
        got = _generate(model, inputs, session, **kw)
    assert torch.equal(ref.sequences, got.sequences)
