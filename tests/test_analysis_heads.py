"""Per-head analyses: the answer's image tokens, coverage and drift by hand, the head probe."""

from __future__ import annotations

import json

import pytest
import torch

from avl_lab.experiments.analysis.answer_cells import answer_tokens, blank_tokens, cell_patches
from avl_lab.experiments.analysis.head_measures import coverage, drift
from avl_lab.experiments.analysis.heads import HeadAttention, HeadProbe
from tests.helpers import make_inputs


def test_answer_tokens_on_the_16x16_grid():
    grid = [" " * 16] * 16
    grid[3] = "TOTAL: $12.50   "
    meta = json.dumps({"cell": [7, 3], "grid": grid})
    assert answer_tokens(meta, "$12.50", 256).tolist() == [3 * 16 + c for c in range(7, 13)]
    assert answer_tokens(meta, "A B", 256).tolist() == [55, 57]  # the blank is no token
    blank = blank_tokens(meta, 256)
    assert not blank[3 * 16 : 3 * 16 + 6].any() and blank[3 * 16 + 6] and blank[0]
    assert answer_tokens("{}", "x", 256) is None  # no grid: unknown
    assert answer_tokens(meta, "x", 250) is None  # not a square patch grid


def test_cells_map_to_overlapping_patches():
    assert cell_patches(0, 0, 16) == [0]
    assert cell_patches(1, 1, 24) == [24 + 1, 24 + 2, 48 + 1, 48 + 2]  # cells of 1.5 patches
    assert cell_patches(5, 3, 8) == [2 * 8 + 1]  # two cells per patch


def _sample(prefill, decode=None, answer=(0,), blank=None):
    prefill = torch.tensor(prefill, dtype=torch.float32)  # [L, H, N]
    decode = prefill[None] if decode is None else torch.tensor(decode, dtype=torch.float32)
    return HeadAttention("s", prefill, decode, torch.tensor(answer), blank)


def test_coverage_by_hand():
    # one layer, two heads, N = 4 image tokens; answer = tokens 0 and 1
    s = _sample([[[0.5, 0.4, 0.05, 0.05], [0.0, 0.1, 0.5, 0.4]]], answer=(0, 1),
                blank=torch.tensor([False, False, True, True]))
    df = coverage([s], shares=(50,))
    got = df.set_index("head")
    assert got.loc["0", "coverage"] == 1.0 and got.loc["1", "coverage"] == 0.0
    assert got.loc["mean", "coverage"] == 0.5  # mean: 0.25 0.25 0.275 0.225 -> tokens 2, 0
    assert got.loc["1", "blank_share"] == pytest.approx(0.9)
    assert got.loc["0", "answer_share"] == pytest.approx(0.9)
    assert (df["random"] == 0.5).all()


def test_drift_by_hand():
    pre = [[[0.4, 0.3, 0.2, 0.1]]]
    dec = [[[[0.4, 0.3, 0.2, 0.1]]], [[[0.1, 0.2, 0.3, 0.4]]]]  # steps 1, 2
    df = drift([_sample(pre, dec, answer=(3,))], ps=(50,))
    h0 = df[df["head"] == "0"].set_index("step")
    assert h0.loc[1, "ppci"] == 1.0 and h0.loc[2, "ppci"] == 0.0
    assert h0.loc[2, "answer_share"] == pytest.approx(0.4) and h0.loc[2, "peak_share"] == pytest.approx(0.4)


def test_head_probe_matches_eager_attention(llava):
    """The probe's newest-query attention equals the eager attention weights of the model."""
    model, processor = llava
    inputs = make_inputs(processor, n=2)  # left padding
    probe = HeadProbe()
    with torch.no_grad(), probe.attached(model):
        model(**inputs)
    assert model.config.text_config._attn_implementation == "sdpa"  # restored
    old = model.config.text_config._attn_implementation
    model.set_attn_implementation({"text_config": "eager",
                                   "vision_config": model.config.vision_config._attn_implementation})
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation({"text_config": old,
                                       "vision_config": model.config.vision_config._attn_implementation})
    for layer, att in enumerate(out.attentions):
        torch.testing.assert_close(probe.steps[0][layer], att[:, :, -1].float(), atol=1e-5, rtol=0)


def test_coverage_without_known_answers_is_an_empty_table(tmp_path):
    from avl_lab.experiments.analysis.run import tabulate

    s = HeadAttention("s", torch.rand(1, 2, 4), torch.rand(0, 1, 2, 4), None, None)
    df = tabulate("coverage", [s], tmp_path)
    assert df.empty and (tmp_path / "coverage.csv").exists() and not (tmp_path / "coverage.png").exists()
