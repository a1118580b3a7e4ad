"""Cache accounting: the engine's per-sample fractions (hand counts) and their run-level mean."""

import pytest
import torch

from avl_lab.engine.stats import StatsRecorder
from avl_lab.metrics import CacheAccounting


def _fractions(stored: list[list[int]], used: list[list[int]], full: list[int]) -> tuple[float, float]:
    """One sample: ``stored[l][t]`` / ``used[l][t]`` rows of layer l at step t, full[t]."""
    rec = StatsRecorder(len(stored))
    for t, f in enumerate(full):
        for layer, (s, u) in enumerate(zip(stored, used)):
            rec.record(layer, torch.tensor([s[t]]), torch.tensor([u[t]]), torch.tensor([f]))
    stats = rec.finalize(1)
    return stats.stored, stats.used


def test_per_sample_fraction_hand_values():
    # 2 layers x 2 decode steps, full = prompt + t = 4, 4
    stored, used = _fractions([[2, 3], [4, 4]], [[1, 2], [4, 2]], [4, 4])
    assert stored == pytest.approx((0.5 + 0.75 + 1 + 1) / 4)
    assert used == pytest.approx((0.25 + 0.5 + 1 + 0.5) / 4)
    # 576 image + 60 other tokens, S=40 alone keeps 40% of the image rows -> ~46% stored
    stored, _ = _fractions([[round(0.4 * 576) + 60]], [[636]], [636])
    assert stored == pytest.approx(0.456, abs=1e-3)


def test_cache_accounting_streaming_mean():
    metric = CacheAccounting()
    metric.update(0.5, 0.25)
    metric.update([0.7, 0.9], [0.3, 0.2])
    out = metric.compute()
    assert float(out["stored"]) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert float(out["used"]) == pytest.approx((0.25 + 0.3 + 0.2) / 3)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        metric.update(1.5, 0.2)
    with pytest.raises(ValueError, match="stored vs"):
        metric.update([0.5, 0.5], [0.5])
