"""VisionZip, VisPruner and DivPrune: cuts before layer 0.

Each selection against a hand-computed case and against the reference algorithm transcribed
here; the independent check (the policy's ``generate`` ≡ the stock model's ``generate`` on the
reduced ``inputs_embeds``: the kept and merged tokens, numbered 0, 1, ...); the vision tower's
CLS attention against CLIP's own (eager) attention; composition with A-VL's decode tiering;
batch invariance; the errors users meet. (Every family × policy against the masked reference,
positions kept, is ``test_families.py`` / ``test_policy_matrix.py``.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avl_lab import attach, policies
from avl_lab.models import tiny_random
from avl_lab.policies.divprune import max_min_diverse, subset_size
from avl_lab.policies.visionzip import dominant_and_contextual
from avl_lab.policies.vispruner import important_then_diverse
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import assert_batch_invariant, family_inputs, make_inputs

NEW = 8


# --- hand-computed selections ------------------------------------------------------------------

def _unit(deg: list[float]) -> torch.Tensor:
    r = torch.tensor(deg, dtype=torch.float64) * torch.pi / 180
    return torch.stack([r.cos(), r.sin()], 1)


def _divprune_reference(x: torch.Tensor, k: int) -> list[int]:
    """llava_arch.py l.152-171 as written: D = 1 - cos; the second-smallest distance first, then
    the minimum over all chosen rows, each step."""
    xn = x / x.norm(dim=1, keepdim=True)
    d = 1.0 - xn @ xn.T
    s = []
    for i in range(k):
        scores = d.topk(2, dim=0, largest=False).values[1] if i == 0 else d[s].min(0).values
        s.append(int(scores.argmax()))
    return s


def test_divprune_max_min_order_by_hand():
    """Unit vectors at 0°, 10°, 90°, 180°: nearest-neighbour distances .015 .015 .826 1 → 180°
    first; then 0° (distance 2), 90° (1), 10° (.015)."""
    x = _unit([0, 10, 90, 180])
    assert max_min_diverse(x, 4).tolist() == [3, 0, 2, 1]
    assert max_min_diverse(x, 3).tolist() == _divprune_reference(x, 3)


def test_divprune_equals_the_reference_loop_on_random_embeddings():
    g = torch.Generator().manual_seed(0)
    for n, k in [(64, 6), (50, 20), (9, 9)]:
        x = torch.randn(n, 16, generator=g, dtype=torch.float64)
        assert max_min_diverse(x, k).tolist() == _divprune_reference(x, k)


def test_divprune_budget_rounds_as_python():
    """``int(round(ratio · N))``: banker's rounding, as the reference."""
    assert [subset_size(5, 50, None), subset_size(7, 50, None), subset_size(576, 9.8, None)] == [2, 4, 56]
    assert subset_size(10, 9.8, 3) == 3


def test_visionzip_dominant_and_contextual_by_hand():
    """6 patches, CLS attention summed over 2 heads [.1 .5 .2 .05 .4 0]: dominant = CLS + patches
    1, 4; the rest [0 2 3 5], M = 4, 2 targets at step 2: patches 0 and 3; patch 2's key is
    nearest patch 3's, patch 5's nearest patch 0's. Features (1-D): CLS 100, patches
    1 2 3 4 5 10 → tokens [100, 2, 5, 1 + 10, 4 + 3]."""
    attn = torch.tensor([[.05, .3, .1, .05, .2, 0], [.05, .2, .1, 0, .2, 0]])
    keys = torch.tensor([[1, 0], [0, 0], [.1, 1], [0, 1], [0, 0], [1, .2]], dtype=torch.float)
    feats = torch.tensor([100, 1, 2, 3, 4, 5, 10], dtype=torch.float)[:, None]
    dom, targets, tokens = dominant_and_contextual(attn, keys, feats, dominant=3, contextual=2)
    assert dom.tolist() == [1, 4] and targets.tolist() == [0, 3]
    assert tokens[:, 0].tolist() == [100, 2, 5, 11, 7]


def test_vispruner_important_then_diverse_by_hand():
    """10 patches ranked 0..9; 7 kept, 2 important (0, 1); the rest [2..9] split into even places
    [2 4 6 8] and odd [3 5 7 9]; r = min(8, 8 - 5) = 3 even ones go, the most similar to an odd one
    (2: 1.0, 4: .995, 8: .98) — patch 6 (orthogonal) stays."""
    attn = torch.linspace(1.0, 0.1, 10)
    feats = torch.tensor([[1, 0]] * 10, dtype=torch.float)
    feats[4], feats[6], feats[8] = torch.tensor([1, .1]), torch.tensor([0, 1.]), torch.tensor([1, .2])
    assert important_then_diverse(attn, feats, total=7, important=2).tolist() == [0, 1, 6, 3, 5, 7, 9]


# --- the vision tower's attention --------------------------------------------------------------

def test_cls_attention_equals_clips_own_eager_attention():
    """The hook's CLS row ≡ ``output_attentions`` of the stock tower run eagerly."""
    model, processor = tiny_random("llava", seed=1)
    inputs = make_inputs(processor, n=2)
    with attach(model, {"name": "vispruner", "keep": 50.0}) as session:
        tap = session.vision_tap
        session.generate(**inputs, max_new_tokens=1)
        got = tap.cls_attn
    tower = model.model.vision_tower
    old = model.config.vision_config._attn_implementation
    model.set_attn_implementation({"vision_config": "eager"})
    try:
        out = tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation({"vision_config": old})
    want = out.attentions[model.config.vision_feature_layer][:, :, 0, 1:]
    torch.testing.assert_close(got, want.float(), atol=1e-6, rtol=0)


# --- the independent check: stock generate on the reduced input --------------------------------

def _stock_on_reduced(model, run):
    """The stock ``generate`` on the kept (and merged) embeddings, left-padded, positions 0, 1, ..."""
    stage = run.prunes[0]
    assert stage.first == 0
    embeds = run.trace.inputs_embeds if run.trace.inputs_embeds is not None else run.inputs_embeds
    rows = [embeds[b, stage.keep[b]] for b in range(embeds.shape[0])]
    m = max(r.shape[0] for r in rows)
    x = torch.stack([F.pad(r, (0, 0, m - r.shape[0], 0)) for r in rows])
    mask = torch.stack([torch.arange(m) >= m - r.shape[0] for r in rows]).long()
    with torch.no_grad():
        out = model.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=NEW,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits).float(), [r.shape[0] for r in rows]


CHECKS = [("llava", "divprune"), ("llava", "vispruner"), ("llava", "visionzip"),
          ("llava_next", "divprune"), ("llava_next", "vispruner"), ("llava_next", "visionzip"),
          ("llava_onevision", "divprune"), ("idefics3", "divprune"), ("internvl", "divprune")]


@pytest.mark.parametrize(("kind", "name"), CHECKS, ids=[f"{k}-{n}" for k, n in CHECKS])
def test_generate_equals_stock_generate_on_the_reduced_input(kind, name):
    """Tokens equal and logits within 1e-4, batch 3 with left padding; rows keep different
    counts where their images differ (LLaVA-NeXT's, OneVision's image sizes)."""
    model, processor = tiny_random(kind, seed=0)
    inputs = family_inputs(processor, n=3)
    got, session = run_policy(model, inputs, {"name": name, "keep": 30.0}, NEW)
    tokens, logits, kept = _stock_on_reduced(model, session.last_run)
    assert torch.equal(got.tokens, tokens)
    torch.testing.assert_close(got.logits, logits, atol=1e-4, rtol=0)
    assert max(kept) < inputs["input_ids"].shape[1]  # every layer ran on fewer tokens
    if kind in ("llava_next", "llava_onevision"):
        assert len(set(kept)) > 1
    if name == "visionzip":  # merged tokens written, not the model's own
        assert session.last_run.trace.inputs_embeds is not None


def test_merged_tokens_matter():
    """Without the written embeddings the masked reference differs: the merge is real."""
    model, processor = tiny_random("llava", seed=0)
    inputs = make_inputs(processor, n=2)
    got, session = run_policy(model, inputs, {"name": "visionzip", "keep": 30.0,
                                              "positions": "keep"}, NEW)
    trace = session.last_run.trace
    ref = masked_reference(model, inputs, trace, NEW)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    trace.inputs_embeds = None
    plain = masked_reference(model, inputs, trace, NEW)
    assert (plain.logits - got.logits).abs().max() > 1e-3


# --- composition, batch invariance, errors -----------------------------------------------------

@pytest.mark.parametrize("name", ["visionzip", "vispruner", "divprune"])
def test_each_row_equals_that_row_alone(name):
    model, processor = tiny_random("llava_next", seed=0)
    assert_batch_invariant(model, processor, {"name": name, "keep": 30.0}, NEW)


@pytest.mark.parametrize(("kind", "spec", "needle"), [
    ("qwen2_5_vl", {"name": "visionzip", "positions": "keep"}, "Qwen2-VL / Qwen2.5-VL does not offer"),
    ("gemma3", {"name": "vispruner", "positions": "keep"}, "SigLIP tower has no CLS token"),
    ("qwen2_5_vl", {"name": "divprune"}, "use positions=keep"),
    ("llava", {"name": "visionzip", "tokens": 500}, r"`tokens` \(500\) exceeds the 64 tokens"),
    ("llava_next", {"name": "visionzip", "keep": 100.0}, "lower `keep` / `tokens`"),
])
def test_what_a_model_cannot_run_is_one_clear_error(kind, spec, needle):
    model, processor = tiny_random(kind)
    with pytest.raises(ValueError, match=needle), attach(model, spec) as session:
        session.generate(**family_inputs(processor, n=1), max_new_tokens=2)


@pytest.mark.parametrize(("spec", "needle"), [
    ({"name": "divprune", "keep": 0}, "`keep` must be a percentage"),
    ({"name": "divprune", "tokens": 0}, "`tokens` must be an integer ≥ 1"),
    ({"name": "visionzip", "tokens": 1}, "`tokens` must be an integer ≥ 2"),
    ({"name": "visionzip", "contextual_share": 120}, "`contextual_share` must be a percentage"),
    ({"name": "vispruner", "important": -5}, "`important` must be a percentage"),
    ({"name": "vispruner", "positions": "shift"}, "`positions` must be one of renumber, keep"),
])
def test_bad_fields_name_the_field(spec, needle):
    with pytest.raises(ValueError, match=needle):
        policies.build(spec)


def test_visionzip_with_positions_kept_puts_dominant_tokens_at_their_own_columns():
    """``positions=keep``: every dominant patch's column is kept with the model's own embedding
    (the projector of the same features), so each keeps its position; the merged tokens sit at
    their targets' columns."""
    model, processor = tiny_random("llava", seed=0)
    inputs = make_inputs(processor, n=2)
    _, session = run_policy(model, inputs, {"name": "visionzip", "keep": 30.0,
                                            "positions": "keep"}, 2)
    run = session.last_run
    keep, written = run.prunes[0].keep, run.trace.inputs_embeds
    image = inputs["input_ids"] == model.config.image_token_id
    changed = (written - run.inputs_embeds).abs().amax(-1) > 1e-5
    n = image.sum(1)
    tokens = int(n[0] * 0.3)  # floor(30% of 64) = 19: CLS + 15 dominant + round(19·13.6%) = 3
    assert (keep & image).sum(1).tolist() == [tokens] * 2
    assert (changed & image).sum(1).tolist() == [1 + 3] * 2  # CLS + contextual, nothing else
