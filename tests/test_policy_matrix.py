"""Every registered policy equals the masked reference run; picks up new policy files by itself."""

from __future__ import annotations

import itertools

import pytest
import torch

from avl_lab import policies
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import make_inputs

NEW = 24
AVL_PARTS = {"S": {"S": 45, "C": 30}, "K": {"K": 3}, "P": {"P": 90}, "T": {"T": 50}}


def _avl_variants() -> list[dict]:
    """Each part alone, all parts, and all but one (K needs the S/C part)."""
    names = list(AVL_PARTS)
    combos = [(n,) for n in names] + [tuple(names)]
    combos += list(itertools.combinations(names, len(names) - 1))
    out = []
    for combo in combos:
        if "K" in combo and "S" not in combo:
            continue
        spec = {"name": "avl"}
        for n in combo:
            spec.update(AVL_PARTS[n])
        out.append(spec)
    return out


def _assert_matches_reference(model, processor, spec):
    inputs = make_inputs(processor, n=3)
    got, session = run_policy(model, inputs, spec, NEW)
    ref = masked_reference(model, inputs, session.last_run.trace, NEW)
    assert torch.equal(got.tokens, ref.tokens), spec
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    return session


@pytest.mark.parametrize("name", policies.names())
def test_registered_policy_equals_masked_reference(tiny, name):
    _, model, processor = tiny
    _assert_matches_reference(model, processor, policies.example(name))


@pytest.mark.parametrize("spec", _avl_variants(), ids=lambda s: "+".join(k for k in s if k != "name"))
def test_avl_parts_equal_masked_reference(tiny, spec):
    _, model, processor = tiny
    session = _assert_matches_reference(model, processor, spec)
    if "S" in spec:
        assert session.stats.stored < 1.0
    if "C" in spec:
        assert session.stats.used < session.stats.stored
