"""The scorer base of the budget baselines, on hand-built rows: which rows each one keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from avl_lab.policies import build
from avl_lab.policies.base import Context


@dataclass
class FakeRows:
    """Ten valid rows of one sequence (tokens 0..9), with a settable state."""

    layer_idx: int = 0
    valid: torch.Tensor = field(default_factory=lambda: torch.ones(1, 10, dtype=torch.bool))
    tok: torch.Tensor = field(default_factory=lambda: torch.arange(10)[None])
    states: dict = field(default_factory=dict)

    @property
    def pos(self):
        return self.tok

    def state(self, name):
        return self.states[name]

    def set_state(self, name, value):
        self.states[name] = value


def _ctx(n_prompt: int, step: int = 0) -> Context:
    n = torch.tensor([n_prompt])
    return Context(layer_idx=0, num_layers=1, step=step, update=False, n_image=n * 0,
                   n_prompt=n, n_text=n, max_new_tokens=4)


def _kept(mask) -> list[int]:
    return mask[0].nonzero().flatten().tolist()


def test_streaming_keeps_sinks_and_the_newest():
    keep = build({"name": "streaming", "budget": 5, "sinks": 2}).keep(FakeRows(), _ctx(10))
    assert _kept(keep) == [0, 1, 7, 8, 9]


def test_random_keeps_the_newest_and_budget_minus_one_drawn_rows():
    policy = build({"name": "random", "budget": 4, "seed": 3})
    keep = policy.keep(FakeRows(), _ctx(10))
    assert 9 in _kept(keep) and len(_kept(keep)) == 4
    assert torch.equal(keep, policy.keep(FakeRows(), _ctx(10)))  # deterministic


def test_h2o_keeps_recent_rows_and_heavy_hitters_of_the_current_length():
    rows = FakeRows()
    score = torch.tensor([[9.0, 0, 8, 0, 0, 7, 0, 0, 0, 0]])
    rows.set_state("h2o_acc", score)
    policy = build({"name": "h2o", "ratio": 0.5})
    # current length 8 + 2 decode steps = 10 -> floor(10*.5*.75)=3 recent, floor(10*.5*.25)=1 heavy
    keep = policy.keep(rows, _ctx(8, step=2))
    assert _kept(keep) == [0, 7, 8, 9]


def test_a_budget_that_holds_every_row_keeps_all():
    assert build({"name": "streaming", "budget": 12, "sinks": 2}).keep(FakeRows(), _ctx(10)) is None
