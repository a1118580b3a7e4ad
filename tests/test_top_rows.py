"""``top_rows`` with a host bound on k (``topk`` on a tie-ordering key) selects exactly what the
stable full sort selects: ties to the earlier row, zeros, negatives, k above the candidates."""

from __future__ import annotations

import pytest
import torch

from avl_lab.policies.base import top_rows


@pytest.mark.parametrize("kind", ["ties", "small", "zeros", "normal", "negative"])
def test_bounded_top_rows_equals_the_full_sort(kind):
    g = torch.Generator().manual_seed(hash(kind) % 1000)
    scale = {"ties": 1.0, "small": 1e-3, "zeros": 0.0, "normal": 1.0, "negative": -1.0}[kind]
    for _ in range(40):
        B, H, R = 2, 3, int(torch.randint(5, 400, (1,), generator=g))
        if kind == "normal":
            s = torch.randn(B, H, R, generator=g)
        else:
            s = torch.randint(0, 4, (B, H, R), generator=g).float() * scale
        cand = torch.rand(B, H, R, generator=g) > 0.3
        k = torch.randint(0, 7, (B, H), generator=g)
        assert torch.equal(top_rows(s, cand, k), top_rows(s, cand, k, most=7))
        shared = top_rows(s[:, 0], cand[:, 0], k[:, 0])
        assert torch.equal(shared, top_rows(s[:, 0], cand[:, 0], k[:, 0], most=7))


def test_ties_go_to_the_earlier_row():
    s = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0]])
    cand = torch.ones(1, 5, dtype=torch.bool)
    assert top_rows(s, cand, torch.tensor([2]), most=3)[0].tolist() == [False, True, True, False, False]
