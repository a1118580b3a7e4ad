"""PyramidDrop, SparseVLM and DART (and, composed with A-VL's tiering, the pre-LLM methods of
``test_pre_llm.py``): each selection against a hand-computed case written from the
reference code, renumbered positions against a decoder loop written from the reference code,
composition with A-VL's decode tiering, batch invariance and the errors users meet.
(Every family × every policy against the masked reference is ``test_families.py`` /
``test_policy_matrix.py``: they pick these policies up by their registration.)"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from avl_lab import attach, policies
from avl_lab.engine.layout import Modality
from avl_lab.engine.stages import TokenRows
from avl_lab.models import tiny_random
from avl_lab.policies.base import Context
from avl_lab.policies.dart import DARTSelect
from avl_lab.policies.pyramiddrop import PyramidDropStages
from avl_lab.policies.sparsevlm import SparseVLMStages, text_raters
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import assert_batch_invariant, family_inputs, make_inputs

NEW = 12
IMG, TXT, SYS = int(Modality.IMAGE), int(Modality.INSTRUCTION), int(Modality.SYSTEM)


def _rows(mods: list[int]) -> TokenRows:
    mod = torch.tensor([mods], dtype=torch.int8)
    n = len(mods)
    return TokenRows(layer_idx=1, valid=torch.ones(1, n, dtype=torch.bool), mod=mod,
                     pos=torch.arange(n)[None], tok=torch.arange(n)[None])


def _ctx(n_image: int, n_prompt: int, layer: int = 1, **kw) -> Context:
    return Context(layer_idx=layer, num_layers=4, step=0, update=False,
                   n_image=torch.tensor([n_image]), n_prompt=torch.tensor([n_prompt]),
                   n_text=torch.tensor([n_prompt - n_image]), max_new_tokens=4, **kw)


def _kept(mask: torch.Tensor) -> list[int]:
    return mask[0].nonzero()[:, 0].tolist()


# --- hand-computed selections ------------------------------------------------------------------

def test_pyramiddrop_keeps_int_n_ratio_top_images_by_hand():
    """modeling_llama_pdrop.py l.1306-1307, 1405-1412: stage s keeps int(N·ratio_s) image tokens
    (N the original count) with the largest last-token attention, in order; text stays. N = 10,
    ratios 0.5 / 0.25: 5 then 2 tokens."""
    mods = [SYS, *[IMG] * 10, TXT, TXT]
    scores = torch.tensor([[.05, .01, .30, .02, .12, .11, .03, .20, .04, .15, .06, .2, .3]])
    policy = PyramidDropStages(stages=(1, 2), keep=(50.0, 25.0))
    got = policy.prune_before(_rows(mods), _ctx(10, 13, layer=1, scores=scores))
    assert _kept(got) == [0, 2, 4, 5, 7, 9, 11, 12]  # images with .30 .12 .11 .20 .15
    got = policy.prune_before(_rows(mods), _ctx(10, 13, layer=2, scores=scores))
    assert _kept(got) == [0, 2, 7, 11, 12]  # 25% of 10 → int(2.5) = 2: .30 and .20


def test_sparsevlm_raters_by_hand():
    """The reference's toy (modelling_sparse_llama.py l.198-204): V = {(1,0), (0,1)}, text after
    the image {(2,0), (0,2), (0,0)}: softmax rows [.787 .107 .107] and [.107 .787 .107], mean
    [.447 .447 .107] > 1/3 for the first two; the system token before the image is no rater."""
    embeds = torch.tensor([[[5.0, 5.0], [1, 0], [0, 1], [2, 0], [0, 2], [0, 0]]])
    image = torch.tensor([[False, True, True, False, False, False]])
    valid = torch.ones_like(image)
    assert _kept(text_raters(embeds, valid, image)) == [3, 4]


def test_sparsevlm_keeps_the_raters_top_images_by_hand():
    """score.py l.23-46: relevance = head-mean attention averaged over the raters' rows; keep
    min(table_s, V_cur − 1). Rows: system, 4 images, 3 text (raters: the first two); 50% → 2."""
    mods = [SYS, IMG, IMG, IMG, IMG, TXT, TXT, TXT]
    probs = torch.zeros(1, 2, 8)  # rater rows 5 and 6
    probs[0, 0, 1:5] = torch.tensor([.1, .4, .2, .3])
    probs[0, 1, 1:5] = torch.tensor([.3, .0, .1, .2])  # mean over the raters: .2 .2 .15 .25
    calls = []

    def query_probs(rows, per_head=False):
        calls.append(_kept(rows))
        return probs

    embeds = torch.tensor([[[0., 0], [1, 0], [1, 0], [1, 0], [1, 0], [3, 0], [3, 0], [-9, 0]]])
    mod = torch.tensor([mods], dtype=torch.int8)
    policy = SparseVLMStages(stages=(1,), keep=(50.0,))
    got = policy.prune_tokens(_rows(mods), _ctx(4, 8, layer=1, query_probs=query_probs,
                                                  inputs_embeds=embeds, prompt_mod=mod))
    assert calls == [[5, 6]]  # the raters: softmax [.5 .5 0] over the text, above 1/3
    # relevance .2 .2 .15 .25: the top 2 are image 4 (.25) then image 1 (.2, the earlier of a tie)
    assert _kept(got) == [0, 1, 4, 5, 6, 7]
    policy = SparseVLMStages(stages=(1,), keep=(100.0,))  # at most V_cur − 1 = 3
    got = policy.prune_tokens(_rows(mods), _ctx(4, 8, layer=1, query_probs=query_probs,
                                                  inputs_embeds=embeds, prompt_mod=mod))
    assert _kept(got) == [0, 1, 2, 4, 5, 6, 7]


def test_dart_pivots_and_least_similar_tokens_by_hand():
    """get_retained_image_token (modeling_llama_self.py l.397-449) on a toy: n = 9, image at
    1..6, text at 7..8, one image and one text pivot, budget 2 → TOPK 1. Key L1 norms: image
    [1 2 9 3 4 5] → pivot 3; text [1 7] → pivot 8. Normed states 1:(1,0) 2:(0,1) 3:(1,.1)
    4:(-1,0) 5:(.7,.7) 6:(0,-1) 8:(0,1). Pivot 3 takes the least similar image token, 4 (cos
    -0.995); pivot 8 then 6 (cos -1). Kept: 0, 3, 4, 6 and the text."""
    mods = [SYS, *[IMG] * 6, TXT, TXT]
    norms = torch.tensor([0.5, 1, 2, 9, 3, 4, 5, 1, 7])
    keys = norms.view(1, 1, 9, 1)  # [B, Hkv, R, D]: the L1 norm is the value itself
    hidden = torch.tensor([[[0., 1], [1, 0], [0, 1], [1, .1], [-1, 0], [.7, .7], [0, -1], [1, 1],
                            [0, 1]]])
    policy = DARTSelect(layer=2, tokens=2, pivot_image=1, pivot_text=1)
    got = policy.prune_before(_rows(mods), _ctx(6, 9, layer=2, prev_keys=keys, hidden=hidden,
                                                final_norm=lambda x: x))
    assert _kept(got) == [0, 3, 4, 6, 7, 8]


def test_dart_budget_is_pivots_plus_eight_topk_by_hand():
    """Reference settings: budget 128 of 576, 4 + 4 pivots → TOPK 16 → 4 + 8·16 = 132 image
    tokens kept (spec 3.3)."""
    torch.manual_seed(0)
    mods = [SYS] * 3 + [IMG] * 576 + [TXT] * 20
    n = len(mods)
    policy = DARTSelect(layer=2, tokens=128)
    got = policy.prune_before(_rows(mods), _ctx(576, n, layer=2, prev_keys=torch.randn(1, 2, n, 8),
                                                hidden=torch.randn(1, n, 16), final_norm=lambda x: x))
    assert int(got[0, 3:579].sum()) == 132 and bool(got[0, :3].all() and got[0, 579:].all())


# --- renumbered positions against decoder loops written from the reference code ----------------

def _embeds(model, inputs) -> torch.Tensor:
    """The text model's input embeddings (image features merged), from a stock forward."""
    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("e", kwargs["inputs_embeds"])

    lm = model.model.language_model
    h = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return seen["e"]


def _probs(lm, layer, x, pos) -> torch.Tensor:
    """``[H, n, n]`` the layer's causal softmax attention over ``x`` at positions ``pos`` (fp32)."""
    attn, h = layer.self_attn, layer.input_layernorm(x)
    n, d = x.shape[1], attn.head_dim
    q = attn.q_proj(h).view(1, n, -1, d).transpose(1, 2)
    k = attn.k_proj(h).view(1, n, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *lm.rotary_emb(x, pos))
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling
    s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1)[0]


@torch.no_grad()
def _reference_loop(model, row: dict, select, new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of one unpadded row as the references' decoder loops run it: ``select(i,
    x, pos, image)`` → kept indices (or None) before layer i (``("before", ...)``) or after it;
    kept tokens renumbered 0..n-1; each layer decodes at its own cached length."""
    lm = model.model.language_model
    x = _embeds(model, row)
    image = row["input_ids"][0] == model.config.image_token_id
    pos = torch.arange(x.shape[1])[None]
    cache = DynamicCache()
    for i, layer in enumerate(lm.layers):
        keep = select("before", i, lm, layer, x, pos, image)
        if keep is not None:
            x, image, pos = x[:, keep], image[keep], torch.arange(len(keep))[None]
        keep = select("after", i, lm, layer, x, pos, image)
        x = layer(x, position_ids=pos, cache=cache, use_cache=True,
                  position_embeddings=lm.rotary_emb(x, pos))
        if keep is not None:
            x, image, pos = x[:, keep], image[keep], torch.arange(len(keep))[None]
    tokens, logits = [], []
    out = model.lm_head(lm.norm(x[:, -1]))
    for t in range(new):
        logits.append(out.float())
        tokens.append(out.argmax(-1))
        if t == new - 1:
            break
        x = lm.embed_tokens(tokens[-1])[:, None]
        for i, layer in enumerate(lm.layers):
            p = torch.tensor([[cache.get_seq_length(i)]])  # the layer's own compact numbering
            x = layer(x, position_ids=p, cache=cache, use_cache=True,
                      position_embeddings=lm.rotary_emb(x, p))
        out = model.lm_head(lm.norm(x[:, -1]))
    return torch.stack(tokens, 1), torch.stack(logits, 0)


def _keep_top(scores: torch.Tensor, image: torch.Tensor, k: int) -> torch.Tensor:
    idx = image.nonzero()[:, 0]
    top = idx[scores[idx].topk(min(k, len(idx))).indices]
    return torch.cat([(~image).nonzero()[:, 0], top]).sort().values


def _pdrop(stages, ratios, n_image):
    def select(when, i, lm, layer, x, pos, image):  # pdrop_rank_drop, l.1291-1468
        if when != "before" or i not in stages:
            return None
        last = _probs(lm, layer, x, pos)[:, -1].mean(0)  # last token, head mean
        return _keep_top(last, image, int(n_image * ratios[stages.index(i)]))
    return select


def _sparsevlm(stages, counts, n_image, embeds):
    first_text = int(torch.nonzero(embeds["image"])[-1]) + 1  # text = every token after the image
    e = embeds["e"][0]
    v, t = e[embeds["image"]], e[first_text:]
    r = torch.softmax(v.float() @ t.float().T, dim=1).mean(0)  # l.198-204
    raters = (r > r.mean()).nonzero()[:, 0]

    def select(when, i, lm, layer, x, pos, image):  # l.221-320, the non-recycling branch
        if when != "after" or i not in stages:
            return None
        text0 = int(image.nonzero()[-1]) + 1
        rows = _probs(lm, layer, x, pos).mean(0)[text0 + raters]  # [raters, n]
        k = min(int(n_image * counts[stages.index(i)] / 576), int(image.sum()) - 1)
        return _keep_top(rows.mean(0), image, k)
    return select


@pytest.fixture(scope="module")
def llava():
    torch.manual_seed(0)
    return tiny_random("llava", seed=3)


@pytest.mark.parametrize("method", ["pyramiddrop", "sparsevlm"])
def test_renumbered_positions_equal_the_reference_decoder_loop(llava, method):
    """The policy's batched generate (left padding, renumbered positions) ≡ the reference's own
    decoder loop run on each row alone: tokens equal, logits within 1e-4."""
    model, processor = llava
    spec = ({"name": "pyramiddrop", "stages": [1, 2, 3], "lam": 0.5} if method == "pyramiddrop"
            else {"name": "sparsevlm", "stages": [0, 1, 2], "tokens": 128})
    batch = make_inputs(processor, n=3)
    got, session = run_policy(model, batch, spec, NEW)
    assert session.last_run.prunes[-1].shift is not None  # the run renumbered
    for b in range(3):
        row = make_inputs(processor, rows=[b])
        n_image = int((row["input_ids"][0] == model.config.image_token_id).sum())
        if method == "pyramiddrop":
            select = _pdrop([1, 2, 3], [0.5, 0.25, 0.125], n_image)
        else:
            image = row["input_ids"][0] == model.config.image_token_id
            select = _sparsevlm([0, 1, 2], [303, 110, 36], n_image,
                                {"e": _embeds(model, row), "image": image})
        tokens, logits = _reference_loop(model, row, select, NEW)
        assert torch.equal(got.tokens[b], tokens[0]), (method, b)
        torch.testing.assert_close(got.logits[:, b], logits[:, 0], atol=1e-4, rtol=0)


# --- composition, batch invariance, errors -----------------------------------------------------

@pytest.mark.parametrize("spec", [
    {"name": "pyramiddrop", "stages": [1, 3], "lam": 0.6, "positions": "keep", "S": 40, "C": 20, "K": 2},
    {"name": "sparsevlm", "stages": [1, 2], "keep": [60, 30], "positions": "keep", "T": 50},
    {"name": "dart", "layer": 1, "keep": 30, "S": 30, "C": 15, "K": 3, "T": 60},
    {"name": "visionzip", "keep": 40.0, "positions": "keep", "S": 30, "C": 15, "K": 3},
    {"name": "vispruner", "keep": 40.0, "positions": "keep", "T": 50},
    {"name": "divprune", "keep": 40.0, "positions": "keep", "S": 30, "C": 15, "K": 2, "T": 60},
], ids=["pyramiddrop+SCK", "sparsevlm+T", "dart+SCKT", "visionzip+SCK", "vispruner+T",
        "divprune+SCKT"])
def test_prefill_method_with_avl_decode_tiering_equals_masked_reference(llava, spec):
    model, processor = llava
    inputs = make_inputs(processor, n=3)
    got, session = run_policy(model, inputs, spec, NEW)
    ref = masked_reference(model, inputs, session.last_run.trace, NEW)
    assert torch.equal(got.tokens, ref.tokens)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    alone = {k: v for k, v in spec.items() if k not in ("S", "C", "K", "T")}
    _, base = run_policy(model, inputs, alone, NEW)
    assert session.stats.stored < base.stats.stored  # the tiering evicted beyond the method's cut


@pytest.mark.parametrize("spec", [
    {"name": "pyramiddrop", "stages": [1, 2, 3]},
    {"name": "sparsevlm", "stages": [0, 1, 2], "tokens": 64},
    {"name": "dart", "layer": 2, "keep": 25.0},
], ids=lambda s: s["name"])
def test_each_row_equals_that_row_alone(llava, spec):
    model, processor = llava
    assert_batch_invariant(model, processor, spec, NEW)


def test_stages_shrink_the_token_set_in_turn(llava):
    model, processor = llava
    _, session = run_policy(model, make_inputs(processor, n=3),
                            {"name": "pyramiddrop", "stages": [1, 2, 3], "lam": 0.5}, 2)
    run = session.last_run
    counts = [s.valid.sum(1).tolist() for s in run.prunes]
    n_img, n = run.n_image.tolist(), run.n_prompt.tolist()
    for stage, ratio in zip(counts, [0.5, 0.25, 0.125]):
        assert stage == [n[b] - n_img[b] + int(n_img[b] * ratio) for b in range(3)]
    held = [int(layer.valid[0].sum()) for layer in run.cache.layers]  # after 2 decode steps
    assert held[0] > held[1] > held[2] > held[3]


@pytest.mark.parametrize(("kind", "spec", "needle"), [
    ("qwen2_5_vl", {"name": "pyramiddrop", "stages": [1, 2]}, "Qwen2-VL / Qwen2.5-VL does not allow"),
    ("gemma3", {"name": "sparsevlm", "stages": [0, 1, 2]}, "Gemma 3 does not allow"),
    ("llava", {"name": "pyramiddrop"}, "`stages` [8, 16, 24] name layers this model lacks"),
    ("llava", {"name": "dart", "layer": 4}, "`layer` 4 is not a layer of this model"),
])
def test_what_a_model_cannot_run_is_one_clear_error(kind, spec, needle):
    model, processor = tiny_random(kind)
    inputs = family_inputs(processor, n=1)
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")), \
            attach(model, spec) as session:
        session.generate(**inputs, max_new_tokens=2)


@pytest.mark.parametrize(("spec", "needle"), [
    ({"name": "pyramiddrop", "stages": [0, 2]}, "`stages` must be an increasing list of decoder layers ≥ 1"),
    ({"name": "pyramiddrop", "lam": 0}, "`lam` must be in (0, 1]"),
    ({"name": "pyramiddrop", "keep": [50]}, "`keep` must hold one share per stage (3)"),
    ({"name": "pyramiddrop", "positions": "shift"}, "`positions` must be one of renumber, keep"),
    ({"name": "sparsevlm", "tokens": 100}, "`tokens` must be one of [64, 96, 128, 192]"),
    ({"name": "sparsevlm", "stages": [1, 2]}, "`stages` must name 3 layers"),
    ({"name": "dart", "layer": 0}, "`layer` must be an integer ≥ 1"),
    ({"name": "dart", "pivot_image": 0}, "`pivot_image` must be an integer ≥ 1"),
    ({"name": "dart", "S": 20, "C": 30}, "`C` (30) must not exceed `S` (20)"),
])
def test_bad_fields_name_the_field(spec, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        policies.build(spec)


@pytest.mark.parametrize(("args", "needle"), [
    (["model=tiny-random-qwen2-5-vl", "policy=pyramiddrop", "policy.stages=[1,2]"],
     "Qwen2-VL / Qwen2.5-VL does not allow"),
    (["model=avl-tiny", "policy=pyramiddrop"], "`policy.stages` 8 is not a decoder layer of avl-tiny"),
    (["model=avl-tiny", "policy=dart", "policy.layer=5"], "`policy.layer` 5 is not a decoder layer"),
    (["model=tiny-random-qwen2-5-vl", "policy=visionzip", "policy.positions=keep"],
     "Qwen2-VL / Qwen2.5-VL does not offer"),
])
def test_check_refuses_what_the_run_would(tmp_path, capsys, args, needle):
    """``--check`` runs the run's own family and layer checks: one error, nothing written."""
    from avl_lab.__main__ import main

    rc = main(["evaluate", *args, "data.limit=2", f"out_dir={tmp_path / 'o'}", "--check"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()
