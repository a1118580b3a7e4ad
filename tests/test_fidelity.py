"""The official A-VL code's semantics, on hand-built cases (docs/FIDELITY.md lists each one).

- FastV / PrefillPrune: layers 0..L keep every row; later layers hold the kept tokens only.
- Token counts from percentages round down (``int()``); the text window rounds half to even.
- H2O: the budget is a share of the current length, each part rounded down on its own.
- TextH2O: text = tokens after the image; the window follows the current text length; scores
  centred on a quantile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

from avl_lab.engine.layout import Modality, token_layout
from avl_lab.policies import Compose, Policy, build
from avl_lab.policies.base import count_of, is_image
from avl_lab.policies.text_h2o import TextH2O
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import make_inputs

NEW = 8


@dataclass
class Recorder(Policy):
    """Records, per decode step and layer, the ``[B]`` row counts a layer holds before this
    step's eviction (the state after the previous step plus the new token); ``[B, Hkv]`` when
    the layer holds rows per KV head."""

    kinds: dict = field(default_factory=dict)
    seen: list = field(default_factory=list)

    def setup(self, cache, ctx):
        self.seen = []

    def decode_keep(self, layer, ctx):
        while len(self.seen) < ctx.step:
            self.seen.append({})
        self.seen[ctx.step - 1][layer.layer_idx] = {
            name: (fn(layer) & layer.valid).sum(-1) for name, fn in self.kinds.items()
        }
        return None


def _layout(model, inputs):
    return token_layout(inputs["input_ids"], inputs["attention_mask"], model.config.image_token_id)


# --- FastV / PrefillPrune: which rows each layer holds ------------------------------------------


@pytest.mark.parametrize("spec", [{"name": "fastv", "keep": 50, "layer": 1},
                                  {"name": "prefill_prune", "P": 90, "layer": 2}])
def test_prefill_prune_keeps_early_layers_full(llava, spec):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    lay = _layout(model, inputs)
    share = spec.get("keep", spec.get("P"))
    kept = count_of(share, lay.n_image)
    _, session = run_policy(model, inputs, spec, 2)
    layers = session.last_run.cache.layers
    for layer in layers:
        img = is_image(layer).sum(1)
        want = lay.n_image if layer.layer_idx <= spec["layer"] else kept
        assert torch.equal(img, want), (layer.layer_idx, img, want)
        # the text rows are never pruned
        assert torch.equal((~is_image(layer) & layer.valid).sum(1), lay.n_prompt - lay.n_image + 1)
    # every later layer holds the same kept tokens
    later = [layer.tok.masked_fill(~is_image(layer), -1) for layer in layers[spec["layer"] + 1 :]]
    assert all(torch.equal(t, later[0]) for t in later)
    # the trace the masked reference reads: layers 0..L saw every prompt token in prefill
    trace = session.last_run.trace
    for i in range(spec["layer"] + 1):
        assert torch.equal((trace.prefill[i] >= 0).sum(1), lay.n_prompt)
    assert torch.equal((trace.prefill[spec["layer"] + 1] >= 0).sum(1),
                       lay.n_prompt - lay.n_image + kept)


def test_drop_early_evicts_pruned_tokens_from_every_layer(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    lay = _layout(model, inputs)
    _, session = run_policy(model, inputs, {"name": "fastv", "keep": 50, "drop_early": True}, 2)
    for layer in session.last_run.cache.layers:
        assert torch.equal(is_image(layer).sum(1), count_of(50, lay.n_image))


@pytest.mark.parametrize("drop_early", [False, True])
def test_prefill_prune_equals_masked_reference(llava, drop_early):
    model, processor = llava
    inputs = make_inputs(processor, n=3)
    spec = {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 60, "T": 50, "layer": 1,
            "drop_early": drop_early}
    got, session = run_policy(model, inputs, spec, NEW)
    ref = masked_reference(model, inputs, session.last_run.trace, NEW)
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)


# --- token counts at the rounding edges ---------------------------------------------------------


@pytest.mark.parametrize(("percent", "total", "want"), [
    (45, 20, 9),     # exact: the official (1 - 0.55) * 20 = 8.999... would give 8
    (45, 64, 28),    # 28.8 rounds down (was 29)
    (30, 64, 19),    # 19.2
    (90, 64, 57),    # 57.6
    (50, 64, 32),    # exact
    (10, 2880, 288),  # exact; the official float product gives 287
    (1, 64, 0),      # 0.64: no token
    (100, 64, 64),
])
def test_counts_round_down(percent, total, want):
    assert int(count_of(percent, torch.tensor([total]))) == want


@pytest.mark.parametrize("spec", [{"name": "avl", "S": 45}, {"name": "avl", "S": 45, "C": 30},
                                  {"name": "prefill_prune", "P": 90, "layer": 0},
                                  {"name": "fastv", "keep": 26, "layer": 0}])
def test_image_rows_held_and_used_round_down(llava, spec):
    """N = 64 image tokens: S=45 → 28 rows, C=30 → 19 used, P=90 → 57, keep=26 → 16."""
    model, processor = llava
    inputs = make_inputs(processor, n=1)
    assert int(_layout(model, inputs).n_image[0]) == 64
    rec = Recorder(kinds={"image": is_image})
    _, session = run_policy(model, inputs, Compose([build(spec), rec]), 3)
    held = {"S": 28, "P": 57, "keep": 16}
    key = next(k for k in ("S", "P", "keep") if k in spec)
    last = session.last_run.cache.layers[-1]
    assert int(is_image(last).sum()) == held[key]
    if "C" in spec:  # decode attention reads the 19 core image rows
        assert int((last.state("core") & is_image(last)).sum()) == 19


# --- H2O: budget = share of the current length ---------------------------------------------------


def _official_h2o_rows(seq_len: int) -> int:
    return int(seq_len * 0.5 * 0.25) + int(seq_len * 0.5 * 0.75)  # modeling_llama.py l.1520-1521


def test_h2o_budget_follows_the_current_length(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    lay = _layout(model, inputs)
    rec = Recorder(kinds={"all": lambda layer: layer.valid})
    run_policy(model, inputs, Compose([build({"name": "h2o", "ratio": 0.5}), rec]), NEW)
    # the official cache: evict down to the budget of the current length when over it
    held = [min(int(n), _official_h2o_rows(int(n))) for n in lay.n_prompt]
    for t, per_layer in enumerate(rec.seen, start=1):
        want = torch.tensor([h + 1 for h in held])
        for counts in per_layer.values():
            held_now = counts["all"]  # [B, Hkv]: the official H2O keeps rows per KV head
            assert held_now.dim() == 2 and (held_now == want[:, None]).all(), t
        held = [min(h + 1, _official_h2o_rows(int(n) + t)) for h, n in zip(held, lay.n_prompt)]


@pytest.mark.parametrize(("n", "recent", "heavy"), [(7, 2, 0), (8, 3, 1), (100, 37, 12), (101, 37, 12)])
def test_h2o_split_rounds_each_part_down(n, recent, heavy):
    from avl_lab.policies.h2o import split_budget

    r, h = split_budget(0.5, None, 0.75, torch.tensor([n]))
    assert (int(r), int(h)) == (recent, heavy)
    assert int(r) + int(h) == _official_h2o_rows(n)


# --- TextH2O: text after the image, window of the current length, quantile scores ---------------


def _after_image(layer):
    return (layer.mod == int(Modality.INSTRUCTION)) | (layer.mod == int(Modality.GENERATED))


@pytest.mark.parametrize("T", [50, 30])
def test_text_window_over_decode_steps(llava, T):
    model, processor = llava
    inputs = make_inputs(processor, n=3)
    lay = _layout(model, inputs)
    n_system = (lay.modality == int(Modality.SYSTEM)).sum(1)
    n_after = lay.n_prompt - lay.n_image - n_system
    rec = Recorder(kinds={"after": _after_image,
                          "system": lambda layer: layer.mod == int(Modality.SYSTEM)})
    run_policy(model, inputs, Compose([TextH2O(T=T), rec]), NEW)
    for t, per_layer in enumerate(rec.seen, start=1):
        # round half to even, as Python's round((1 - rate) * length) in the official code
        want = [max(round(Fraction(T * (int(n) + t - 1), 100)), 1) + 1 for n in n_after]
        for counts in per_layer.values():  # [B, Hkv]: T keeps its window in every KV head
            after, system = counts["after"], counts["system"]
            assert after.tolist() == [[w] * after.shape[1] for w in want], (t, T)
            assert torch.equal(system, n_system[:, None].expand_as(system))


def test_text_window_rounds_half_to_even():
    n_system = torch.tensor([1])  # the layer's system rows
    policy = TextH2O(T=50)
    for n_text, step, want in [(22, 0, 10), (24, 0, 12), (22, 2, 12), (3, 0, 1)]:
        # n_text counts the system row: text after the image = n_text - 1 + step
        ctx = SimpleNamespace(n_text=torch.tensor([n_text]), step=step, max_new_tokens=8)
        window, protect = policy._window(n_system, ctx)
        assert int(window) == want and int(protect) == want // 2


def test_text_min_window_and_h2o_split():
    n_system = torch.tensor([1])
    ctx = SimpleNamespace(n_text=torch.tensor([11]), step=0, max_new_tokens=8)
    window, _ = TextH2O(T=50, min_window=20)._window(n_system, ctx)
    assert int(window) == 20
    window, protect = TextH2O(T=50, variant="h2o")._window(n_system, ctx)
    assert int(window) == 5 and int(protect) == 5 - int(5 * 0.7)  # hh = int(0.7 w), rest recent


def _official_prefill_scores(a: torch.Tensor, rate: float) -> torch.Tensor:
    """``TextPruneHistoryKVCache._update_hh_score`` (l.346-366) on one head's text block."""
    n = a.shape[0]
    hh = torch.zeros(n)
    for i in range(n):
        hh[i] = a[i, i]
        if i == 0:
            continue
        q = torch.quantile(a[i, :i].float(), rate)
        hh[:i] += a[i, :i] - q
    return hh


def test_text_scores_centre_on_a_quantile():
    torch.manual_seed(0)
    # rows: system, 3 image, 5 text after the image
    mod = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2, 2]])
    R = mod.shape[1]
    raw = torch.rand(R, R).tril()
    probs = raw / raw.sum(-1, keepdim=True)  # [R, R] causal attention
    text = [4, 5, 6, 7, 8]
    layer = SimpleNamespace(mod=mod, valid=torch.ones(1, R, dtype=torch.bool))
    ctx = SimpleNamespace(query_probs=lambda rows: probs[rows[0]][None])
    policy = TextH2O(T=30, per_head=False)  # per head: tests/test_text_h2o_per_head.py
    got = policy._prefill_scores(layer, ctx)
    want = _official_prefill_scores(probs[text][:, text], 0.7)
    torch.testing.assert_close(got[0, text], want)
    assert torch.all(got[0, :4] == 0)
    # a decode step: the new row scores its own attention, older text rows add a - quantile
    acc = torch.cat([got[:, text], torch.zeros(1, 1)], 1)  # the text rows' entries, then the new
    p = torch.rand(1, R + 1)
    p = p / p.sum()
    tx = p[:, text + [R]]
    new = policy.decode_scores(acc, tx, torch.ones_like(tx, dtype=torch.bool))
    q = torch.quantile(tx[0], 0.7)  # over all text rows, the new one included (l.370)
    torch.testing.assert_close(new[0, :-1], acc[0, :-1] + tx[0, :-1] - q)
    assert float(new[0, -1]) == pytest.approx(float(tx[0, -1]))


def test_max_length_variant_keeps_the_earlier_reading(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    lay = _layout(model, inputs)
    _, session = run_policy(model, inputs, {"name": "text_h2o", "T": 20, "variant": "max_length"}, NEW)
    window = count_of(20, lay.n_prompt - lay.n_image + NEW)
    for layer in session.last_run.cache.layers:  # per KV head: the same window in every head
        held = (~is_image(layer) & layer.valid).sum(-1)  # [B, Hkv]
        assert torch.equal(held, window[:, None].expand_as(held))


@pytest.mark.parametrize(("spec", "name"), [
    ({"name": "text_h2o", "variant": "h3o"}, "variant"),
    ({"name": "text_h2o", "min_window": 0}, "min_window"),
    ({"name": "h2o", "ratio_of": "max"}, "ratio_of"),
    ({"name": "fastv", "drop_early": "yes"}, "drop_early"),
])
def test_new_fields_are_validated(spec, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        build(spec)


def test_counts_helper_matches_math_floor():
    for n in (20, 64, 256, 576, 2880):
        for p in range(1, 101):
            assert int(count_of(p, torch.tensor([n]))) == math.floor(n * p / 100)


def test_text_window_with_rows_per_kv_head(llava):
    """TextH2O beside a per-head VisionTiering: every KV head holds the official text window,
    and the run equals the masked reference (per-head masks)."""
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    lay = _layout(model, inputs)
    n_system = (lay.modality == int(Modality.SYSTEM)).sum(1)
    n_after = lay.n_prompt - lay.n_image - n_system
    policy = Compose([build({"name": "vision_tiering", "S": 45, "C": 30, "per_head": True}),
                      TextH2O(T=50)])
    got, session = run_policy(model, inputs, policy, NEW)
    ref = masked_reference(model, inputs, session.last_run.trace, NEW)
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    want = [max(round(Fraction(50 * (int(n) + NEW - 1), 100)), 1) for n in n_after]
    for layer in session.last_run.cache.layers:
        assert layer.per_head
        after = (_after_image(layer) & layer.valid).sum(-1)  # [B, Hkv]
        assert after.tolist() == [[w] * after.shape[1] for w in want]
