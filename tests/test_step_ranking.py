"""StepRanking: every layer's ranking of a decode step at once equals each layer's own
``top_rows`` (widths differing, rows per KV head, ties, per-layer budgets), and a whole run of
the policies that use it is unchanged against deciding layer by layer (``random``: the one whose
layers keep different rows on the tiny models, whose layers attend alike)."""

from __future__ import annotations

import pytest
import torch

from avl_lab.policies.base import top_rows
from avl_lab.policies.h2o import H2O
from avl_lab.policies.random_evict import RandomEvict
from avl_lab.policies.step_ranking import StepRanking
from avl_lab.policies.streaming import Streaming
from avl_lab.testing import run_policy
from tests.helpers import make_inputs


def _layer(gen, shape, width):
    score = torch.randint(0, 5, (*shape, width), generator=gen).float()  # many ties
    cand = torch.rand(*shape, width, generator=gen) < 0.7
    return score, cand


@pytest.mark.parametrize("heads", [0, 3])
@pytest.mark.parametrize("shared_k", [True, False])
def test_resolve_equals_each_layer(heads, shared_k):
    gen = torch.Generator().manual_seed(heads + 10 * shared_k)
    B = 2
    shape = (B, heads) if heads else (B,)
    k_shared = torch.tensor([4, 9])
    ranking, expected = StepRanking(), []
    for i, width in enumerate([17, 23, 17, 5, 30]):
        score, cand = _layer(gen, shape, width)
        if heads and i == 1:
            score = score[:, 0]  # one [B, R] score for every head
        k = k_shared if shared_k else torch.randint(0, 12, shape, generator=gen)
        ranking.add(i, score, cand, k)
        expected.append(top_rows(score, cand, k))
    out = ranking.resolve()
    assert [key for key, _ in out] == list(range(5))
    for (_, got), want in zip(out, expected, strict=True):
        assert torch.equal(got, want)
    assert ranking.resolve() == []  # the step is emptied


class _EachLayer:
    """The policy's decode_keep deciding its own layer at once (the behaviour before)."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, layer, ctx):
        type(self.policy).decode_keep(self.policy, layer, ctx)
        return dict(self.policy.end_step(ctx))[layer.layer_idx]


@pytest.mark.parametrize("policy", [H2O(ratio=0.5), H2O(ratio=0.5, per_head=False),
                                    Streaming(ratio=0.5), RandomEvict(ratio=0.5)],
                         ids=["h2o", "h2o_shared", "streaming", "random"])
def test_run_unchanged_against_layer_by_layer(tiny, policy):
    _, model, processor = tiny
    inputs = make_inputs(processor, n=2)
    got, run = run_policy(model, inputs, policy, 6)
    each = type(policy)(**{f: getattr(policy, f) for f in policy.__dataclass_fields__})
    each.decode_keep = _EachLayer(each)  # decides per layer; end_step then finds nothing
    ref, run_ref = run_policy(model, inputs, each, 6)
    assert torch.equal(got.tokens, ref.tokens)
    assert torch.equal(got.logits, ref.logits)
    steps, steps_ref = run.last_run.trace.decode, run_ref.last_run.trace.decode  # each layer's rows, every step
    assert len(steps) == len(steps_ref) == 5
    for step, step_ref in zip(steps, steps_ref, strict=True):
        assert step.keys() == step_ref.keys()
        assert all(torch.equal(step[i], step_ref[i]) for i in step)


def test_rankings_a_failed_step_left_are_dropped():
    from types import SimpleNamespace

    score, cand, k = torch.arange(6.0)[None], torch.ones(1, 6, dtype=torch.bool), torch.tensor([2])
    run_a = SimpleNamespace(n_prompt=torch.tensor([6]), step=1)
    run_b = SimpleNamespace(n_prompt=torch.tensor([6]), step=1)  # a new call, also at step 1
    ranking = StepRanking()
    ranking.add("a", score, cand, k, ctx=run_a)  # its call failed before the step's end
    ranking.add("b", score, cand, k, ctx=run_b)
    ranking.add("c", score, cand, k, ctx=run_b)
    assert [key for key, _ in ranking.resolve()] == ["b", "c"]
    ranking.add("d", score, cand, k, ctx=run_b)
    ranking.add("e", score, cand, k, ctx=SimpleNamespace(n_prompt=run_b.n_prompt, step=2))
    (key, mask), = ranking.resolve()
    assert key == "e" and mask.tolist() == [[False] * 4 + [True] * 2]
