"""PPCI (paper Eq. 2) against hand-computed cases, ties and edge values of p."""

import random

import numpy as np
import pytest
import torch

from avl_lab.metrics import PPCI, ppci, ppci_rows
from avl_lab.metrics.ppci import top_count

CASES = [
    # (a, b, p, expected, why)
    ([0.4, 0.3, 0.2, 0.1], [0.1, 0.3, 0.2, 0.4], 50, 0.5, "T1={0,1}, T2={3,1}"),
    ([0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], 50, 1.0, "identical"),
    ([4, 3, 2, 1], [1, 2, 3, 4], 50, 0.0, "reversed"),
    ([4, 3, 2, 1], [1, 2, 3, 4], 100, 1.0, "p=100 keeps every token"),
    ([4, 3, 2, 1], [1, 2, 3, 4], 1, 0.0, "tiny p -> k=1, different argmax"),
    ([4, 3, 2, 1], [9, 3, 2, 1], 1, 1.0, "tiny p -> k=1, same argmax"),
    ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5], 50, 1 / 3, "N=5, p=50 -> k=round(2.5)=3, share {2}"),
    ([5, 4, 3, 2, 1], [1, 2, 3, 4, 5], 30, 0.0, "k=round(1.5)=2: {0,1} vs {4,3}"),
    (list(range(10, 0, -1)), [10, 9, 1, 1, 1, 1, 1, 1, 1, 8], 30, 2 / 3, "k=3: {0,1,2} vs {0,1,9}"),
    ([1, 1, 1, 1], [1, 1, 1, 1], 50, 1.0, "all tied: lower index wins in both"),
    ([3, 2, 2, 1], [3, 1, 2, 2], 50, 0.5, "tie at the cut: {0,1} vs {0,2}"),
    ([0, 0, 0, 0], [0, 0, 1, 1], 50, 0.0, "tied vs distinct: {0,1} vs {2,3}"),
    ([0.1, 0.9], [0.9, 0.1], 50, 0.0, "N=2"),
    ([7.0], [3.0], 10, 1.0, "N=1"),
    ([1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1], 75, 4 / 6, "k=6: overlap {2,3,4,5}"),
]


@pytest.mark.parametrize(("a", "b", "p", "expected", "why"), CASES, ids=[c[4] for c in CASES])
def test_ppci_hand_values(a, b, p, expected, why):
    assert ppci(a, b, p) == pytest.approx(expected, abs=1e-12), why
    assert ppci(b, a, p) == pytest.approx(expected, abs=1e-12), "symmetric"


def test_top_count_rounding():
    assert [top_count(10, p) for p in (5, 10, 14, 15, 50, 100)] == [1, 1, 1, 2, 5, 10]
    assert top_count(576, 30) == 173  # 172.8 -> 173


def _eq2(a, b, p):
    k = top_count(len(a), p)
    t1 = set(sorted(range(len(a)), key=lambda i: (-a[i], i))[:k])
    t2 = set(sorted(range(len(b)), key=lambda i: (-b[i], i))[:k])
    return len(t1 & t2) / k


def test_ppci_matches_set_definition_on_random_vectors():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 40)
        a = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]  # many ties
        b = [rng.random() for _ in range(n)]
        p = rng.choice([1, 10, 25, 33.3, 50, 70, 99.9, 100])
        assert ppci(a, b, p) == pytest.approx(_eq2(a, b, p), abs=1e-12)


def test_ppci_accepts_tensors_and_arrays_and_rows():
    a = torch.tensor([[0.4, 0.3, 0.2, 0.1], [1.0, 2.0, 3.0, 4.0]])
    b = np.array([[0.1, 0.3, 0.2, 0.4], [1.0, 2.0, 3.0, 4.0]])
    assert ppci_rows(a, b, 50).tolist() == [0.5, 1.0]
    assert ppci(a[0], b[0], 50) == 0.5


@pytest.mark.parametrize("p", [0, -1, 100.0001, 150])
def test_ppci_rejects_p_out_of_range(p):
    with pytest.raises(ValueError, match="percentage"):
        ppci([1, 2], [2, 1], p)


def test_ppci_rejects_bad_shapes_and_nan():
    with pytest.raises(ValueError, match="shapes differ"):
        ppci([1, 2, 3], [1, 2], 50)
    with pytest.raises(ValueError, match="NaN"):
        ppci([1, float("nan")], [1, 2], 50)
    with pytest.raises(ValueError, match="1-D"):
        ppci([[1, 2]], [[1, 2]], 50)
    with pytest.raises(ValueError, match="at least one token"):
        ppci([], [], 50)


def test_ppci_streaming_mean_over_rows():
    metric = PPCI(p=50)
    metric.update(torch.tensor([[0.4, 0.3, 0.2, 0.1]]), torch.tensor([[0.1, 0.3, 0.2, 0.4]]))
    metric.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert float(metric.compute()) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="percentage"):
        PPCI(p=0)
