"""Cache accounting counts a row's decode steps only until its end-of-sequence token."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import avl_lab
from avl_lab.engine.stats import StatsRecorder, steps_until_eos
from avl_lab.models import embedded_path


def _recorder(stored_steps: list[list[int]], full_steps: list[int]) -> StatsRecorder:
    """One layer; ``stored_steps[t][b]`` rows held at step t+1 (used = stored)."""
    rec = StatsRecorder(1)
    for stored, full in zip(stored_steps, full_steps, strict=True):
        s = torch.tensor(stored, dtype=torch.float64)
        rec.record(0, s, s, torch.full_like(s, full))
    return rec


def test_steps_after_a_rows_end_do_not_count():
    # two rows, three steps, full = 10, 11, 12; row 0 stopped after step 1
    rec = _recorder([[5, 6], [9, 7], [9, 8]], [10, 11, 12])
    prefill = _recorder([[4, 5]], [9])
    stats = rec.finalize(2, torch.tensor([1, 3]), after_prefill=prefill)
    assert stats.per_sample_stored[0] == pytest.approx(5 / 10)
    assert stats.per_sample_stored[1] == pytest.approx((6 / 10 + 7 / 11 + 8 / 12) / 3)
    assert stats.steps == 3
    # a row that stopped at its first token keeps its post-prefill state
    stats = rec.finalize(2, torch.tensor([0, 3]), after_prefill=prefill)
    assert stats.per_sample_stored[0] == pytest.approx(4 / 9)
    # without row steps every recorded step counts (the earlier accounting)
    assert rec.finalize(2).per_sample_stored[0] == pytest.approx((5 / 10 + 9 / 11 + 9 / 12) / 3)


def test_steps_until_eos_reads_the_first_end_token():
    seqs = torch.tensor([[7, 7, 1, 2, 0, 0], [7, 7, 1, 2, 3, 4], [7, 7, 0, 0, 0, 0]])
    gc = SimpleNamespace(eos_token_id=0, num_beams=1)
    steps = steps_until_eos(seqs, 2, 3, {}, gc)
    assert steps.tolist() == [2, 3, 0]  # new tokens 1 2 <eos>: steps 1 and 2 ran for it
    assert steps_until_eos(seqs, 2, 3, {"num_beams": 2}, gc) is None  # beam rows are reordered
    assert steps_until_eos(seqs, 2, 3, {}, SimpleNamespace(eos_token_id=None)) is None
    assert steps_until_eos(seqs, 2, 3, {"eos_token_id": [4, 0]}, gc).tolist() == [2, 3, 0]


@pytest.mark.skipif(not (embedded_path() / "model.safetensors").exists(),
                    reason="avl-tiny weights not shipped")
def test_per_sample_stored_and_used_do_not_depend_on_the_batch(tmp_path):
    """avl-tiny answers stop at different lengths; batch 1 and batch 8 must give each sample
    the same stored/used (before, a finished row kept counting the steps its batch ran on)."""
    recs = {}
    for bs in (1, 8):
        out = tmp_path / f"b{bs}"
        avl_lab.evaluation.evaluate(["model=avl-tiny", "data=synth-docvqa", "data.limit=8", "policy=avl",
                          "policy.S=45", "policy.C=30", "policy.K=3", f"batch_size={bs}",
                          "progress=false", f"out_dir={out}"])  # fmt: skip
        lines = (out / "samples.jsonl").read_text().splitlines()
        recs[bs] = {r["id"]: r for r in map(json.loads, lines)}
    assert recs[1].keys() == recs[8].keys() and len(recs[1]) == 8
    lengths = {r["new_tokens"] for r in recs[8].values()}
    assert len(lengths) > 1, "the samples must stop at different lengths"
    for key, a in recs[1].items():
        b = recs[8][key]
        assert a["prediction"] == b["prediction"]
        assert a["stored"] == pytest.approx(b["stored"], abs=1e-12)
        assert a["used"] == pytest.approx(b["used"], abs=1e-12)
