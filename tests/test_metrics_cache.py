"""Cache-accounting aggregates (stored / used fractions)."""

import pytest
import torch

from avl_lab.metrics import CacheAccounting, cache_fraction, cache_summary


def test_cache_fraction_hand_values():
    # 2 layers x 2 decode steps, full = prompt + t
    rows = [[2, 3], [4, 4]]
    assert cache_fraction(rows, [4, 4]) == pytest.approx((0.5 + 0.75 + 1 + 1) / 4)
    assert cache_fraction(torch.tensor([[1, 2]]), torch.tensor([[2, 4]])) == pytest.approx(0.5)
    # DESIGN.md: 576 image + 60 other tokens, S=40 alone -> ~46% stored at t=0
    assert cache_fraction([[round(0.4 * 576) + 60]], [[636]]) == pytest.approx(0.456, abs=1e-3)


@pytest.mark.parametrize(("rows", "full"), [([[5]], [[4]]), ([[-1]], [[4]]), ([[1]], [[0]])])
def test_cache_fraction_rejects_impossible_counts(rows, full):
    with pytest.raises(ValueError):
        cache_fraction(rows, full)


def test_cache_accounting_streaming_mean():
    metric = CacheAccounting()
    metric.update(0.5, 0.25)
    metric.update([0.7, 0.9], [0.3, 0.2])
    out = metric.compute()
    assert float(out["stored"]) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert float(out["used"]) == pytest.approx((0.25 + 0.3 + 0.2) / 3)
    assert cache_summary([0.5, 0.7, 0.9], [0.25, 0.3, 0.2]) == pytest.approx(
        {"stored": float(out["stored"]), "used": float(out["used"])}
    )
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        metric.update(1.5, 0.2)
    with pytest.raises(ValueError, match="stored vs"):
        metric.update([0.5, 0.5], [0.5])
