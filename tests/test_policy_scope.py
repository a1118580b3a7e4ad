"""A `layers` scope on any policy: outside it every row is kept and used; masked-reference exact."""

from __future__ import annotations

import pytest
import torch

import avl_lab
from avl_lab import policies
from avl_lab.policies.scope import Scoped, parse_layers
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import make_inputs


@pytest.mark.parametrize(("spec", "covered", "not_covered"), [
    ("2-", [2, 3, 31], [0, 1]),
    ("0,2-3", [0, 2, 3], [1, 4]),
    ("-1", [0, 1], [2]),
    ([1, 3], [1, 3], [0, 2]),
    (2, [2], [1, 3]),
])
def test_layer_scope_parses(spec, covered, not_covered):
    scoped = Scoped(policies.build("full"), spec)
    assert all(scoped.covers(i) for i in covered)
    assert not any(scoped.covers(i) for i in not_covered)


@pytest.mark.parametrize("bad", ["", "a-", "3-1", "1,,2", [], [-1], [True], "2-x", 1.5])
def test_bad_layer_scope_names_the_field(bad):
    with pytest.raises(ValueError, match="`layers`"):
        parse_layers(bad)


def test_scope_beyond_the_model_is_an_error(llava):
    model, processor = llava
    with avl_lab.attach(model, {"name": "avl", "S": 45, "layers": [1, 9]}) as session, \
            pytest.raises(ValueError, match="`layers`.*layer 9"):
        session.generate(**make_inputs(processor, n=1), max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("spec", [
    {"name": "avl", "S": 10, "C": 10, "K": 2, "layers": "2-"},
    {"name": "avl", "S": 45, "C": 30, "P": 90, "T": 50, "layers": [0, 3]},
    {"name": "h2o", "ratio": 0.5, "layers": "1-2"},
])
def test_scoped_policy_equals_masked_reference_and_spares_other_layers(tiny, spec):
    _, model, processor = tiny
    inputs = make_inputs(processor, n=3)
    got, session = run_policy(model, inputs, spec, 12)
    ref = masked_reference(model, inputs, session.last_run.trace, 12)
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    scope = Scoped(policies.build("full"), spec["layers"])
    stored, used = session.stats.per_layer_stored, session.stats.per_layer_used
    for i in range(len(stored)):
        if scope.covers(i):
            assert stored[i] < 1.0
        else:
            assert stored[i] == pytest.approx(1.0) and used[i] == pytest.approx(1.0), i
