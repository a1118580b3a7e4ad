"""``top_rows`` selects the k highest-scored candidates, ties to the earlier row, per row and per
KV head, as a brute-force ranking in Python does (tie-heavy, zero and negative scores, k above
the candidates)."""

from __future__ import annotations

import pytest
import torch

from avl_lab.policies.base import top_rows


def _brute(score: list[float], cand: list[bool], k: int) -> list[bool]:
    order = sorted((i for i, c in enumerate(cand) if c), key=lambda i: (-score[i], i))
    chosen = set(order[:k])
    return [i in chosen for i in range(len(cand))]


@pytest.mark.parametrize("kind", ["ties", "small", "zeros", "normal", "negative"])
def test_top_rows_equals_a_brute_force_ranking(kind):
    g = torch.Generator().manual_seed(hash(kind) % 1000)
    scale = {"ties": 1.0, "small": 1e-3, "zeros": 0.0, "normal": 1.0, "negative": -1.0}[kind]
    for _ in range(20):
        B, H, R = 2, 3, int(torch.randint(5, 60, (1,), generator=g))
        if kind == "normal":
            s = torch.randn(B, H, R, generator=g)
        else:
            s = torch.randint(0, 4, (B, H, R), generator=g).float() * scale
        cand = torch.rand(B, H, R, generator=g) > 0.3
        k = torch.randint(0, R + 2, (B, H), generator=g)
        got = top_rows(s, cand, k)
        for b in range(B):
            for h in range(H):
                assert got[b, h].tolist() == _brute(s[b, h].tolist(), cand[b, h].tolist(), int(k[b, h]))
        shared = top_rows(s[:, 0], cand[:, 0], k[:, 0])
        for b in range(B):
            assert shared[b].tolist() == _brute(s[b, 0].tolist(), cand[b, 0].tolist(), int(k[b, 0]))


def test_ties_go_to_the_earlier_row():
    s = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0]])
    cand = torch.ones(1, 5, dtype=torch.bool)
    assert top_rows(s, cand, torch.tensor([2]))[0].tolist() == [False, True, True, False, False]
