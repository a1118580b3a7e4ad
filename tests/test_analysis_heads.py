"""Per-head analyses: the answer's image tokens, coverage and drift by hand, the head probe and
the signal probe against the stock model."""

from __future__ import annotations

import json

import pytest
import torch

from avl_lab.engine.families import family_of
from avl_lab.engine.session import attach
from avl_lab.experiments.analysis.answer_cells import answer_tokens, blank_tokens, cell_patches
from avl_lab.experiments.analysis.head_measures import (
    complete_in_every_layer,
    coverage,
    coverage_intervals,
    drift,
)
from avl_lab.experiments.analysis.heads import HeadAttention, HeadProbe
from avl_lab.experiments.analysis.signals import SignalProbe, SignalRanks
from avl_lab.policies.vision_tiering import SIGNALS
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
    att = torch.tensor([[[0.5, 0.4, 0.05, 0.05], [0.0, 0.1, 0.5, 0.4]]])
    norms = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 1.0, 2.0]]])
    s = SignalRanks("s", {"last_token": att, "key_norm": -norms}, torch.tensor([0, 1]),
                    torch.tensor([False, False, True, True]))
    df = coverage([s], shares=(50,))
    got = df[df["signal"] == "last_token"].set_index("head")
    assert got.loc["0", "coverage"] == 1.0 and got.loc["1", "coverage"] == 0.0
    assert got.loc["mean", "coverage"] == 0.5  # mean: 0.25 0.25 0.275 0.225 -> tokens 2, 0
    assert got.loc["1", "blank_share"] == pytest.approx(0.9)
    assert got.loc["0", "answer_share"] == pytest.approx(0.9)
    assert (df["random"] == 0.5).all()
    knorm = df[df["signal"] == "key_norm"].set_index("head")  # the smallest norms rank first
    assert knorm.loc["0", "coverage"] == 1.0 and knorm.loc["1", "coverage"] == 0.0
    assert knorm.loc["mean", "coverage"] == 0.5  # mean norms 2 3 2 3 -> tokens 0, 2
    assert knorm["answer_share"].isna().all()  # a negated norm is no mass


def test_coverage_intervals_by_hand():
    att = [torch.tensor([[[0.9, 0.1]]]), torch.tensor([[[0.1, 0.9]]])]  # answer token 0
    samples = [SignalRanks(f"s{i}", {"last_token": a}, torch.tensor([0]), None) for i, a in enumerate(att)]
    got = coverage_intervals(coverage(samples, shares=(50,)), resamples=500)
    row = got[got["head"] == "0"].iloc[0]
    assert row["n"] == 2 and row["coverage"] == 0.5  # covered in s0, missed in s1
    assert row["lo"] == 0.0 and row["hi"] == 1.0  # draws of two samples: 0, 0.5 or 1
    assert row["complete"] == 0.5


def test_complete_in_every_layer_by_hand():
    # two layers; sample a's answer (token 0) tops both layers, sample b's only layer 0
    a = torch.tensor([[[0.9, 0.1]], [[0.8, 0.2]]])
    b = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]])
    samples = [SignalRanks(i, {"last_token": t}, torch.tensor([0]), None) for i, t in (("a", a), ("b", b))]
    got = complete_in_every_layer(coverage(samples, shares=(50,)))
    assert got.set_index("signal").loc["last_token", "complete"] == 0.5


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


def test_signal_probe_matches_the_stock_model(llava):
    """The probe's signals at the image tokens: last_token's head mean is the stock model's
    last-query attention averaged over query heads, key_norm the negated norm of the stock
    cache's keys; each signal has one value per KV head."""
    model, processor = llava
    inputs = make_inputs(processor, n=2)  # left padding
    probe, heads = SignalProbe(), HeadProbe()
    with torch.no_grad():
        with attach(model, probe) as session:
            session.generate(**inputs, max_new_tokens=1, do_sample=False)
        with heads.attached(model):
            cache = model(**inputs, use_cache=True).past_key_values
    img = torch.isin(inputs["input_ids"], torch.tensor(family_of(model).vision_token_ids(model.config)))
    kv_heads = model.config.text_config.num_key_value_heads
    for b in range(2):
        got = probe.sample(b)
        assert set(got) == set(SIGNALS) and all(v.shape[1] == kv_heads for v in got.values())
        for layer in range(len(got["last_token"])):
            want = heads.steps[0][layer][b][:, img[b]].mean(0)
            torch.testing.assert_close(got["last_token"][layer].mean(0), want, atol=1e-5, rtol=0)
            keys = cache.layers[layer].keys[b][:, img[b]].float().norm(dim=-1)  # [Hkv, N_img]
            torch.testing.assert_close(got["key_norm"][layer], -keys, atol=1e-5, rtol=1e-5)


def test_coverage_without_known_answers_is_an_empty_table(tmp_path):
    from avl_lab.experiments.analysis.run import tabulate

    s = SignalRanks("s", {"last_token": torch.rand(1, 2, 4)}, None, None)
    df = tabulate("coverage", [s], tmp_path)
    assert df.empty and (tmp_path / "coverage.csv").exists() and not (tmp_path / "coverage.png").exists()
