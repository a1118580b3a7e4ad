"""Every supported model family, checked like LLaVA: Full ≡ stock ``generate``, every registered
policy ≡ the masked reference, batch invariance, prefill pruning with the family's positions,
checkpoints from a local directory, and the evaluate / sweep CLIs.

LLaVA and LLaVA-NeXT have the same checks in ``test_engine_full.py``, ``test_policy_matrix.py``
and ``test_policies.py``; here they appear only where a check is family-specific.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import avl_lab
from avl_lab import policies
from avl_lab.engine.families import family_of
from avl_lab.engine.layout import Modality
from avl_lab.models import tiny_random
from avl_lab.models.tiny import KINDS
from avl_lab.testing import masked_reference, run_policy
from tests.helpers import QUESTIONS, family_inputs

OTHER_KINDS = [k for k in KINDS if k not in ("llava", "llava_next")]
#: Families whose image-token count follows the image size (so rows of one batch differ).
VARIABLE_TOKENS = {"llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
NEW = 12
TOL_STOCK = 1e-5
TOL_REF = 1e-4
AVL_ALL = {"name": "avl", "S": 45, "C": 30, "K": 3, "P": 90, "T": 50}

_MODELS: dict[str, tuple] = {}


def _model(kind: str):
    if kind not in _MODELS:
        _MODELS[kind] = tiny_random(kind, seed=0)
    return _MODELS[kind]


def _generate(gen, inputs, **kw):
    kw = {"max_new_tokens": NEW, "do_sample": False, "output_logits": True,
          "return_dict_in_generate": True, **kw}
    return gen(**inputs, **kw)


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def _assert_matches_reference(model, inputs, spec, new=NEW):
    got, session = run_policy(model, inputs, spec, new)
    ref = masked_reference(model, inputs, session.last_run.trace, new)
    assert torch.equal(got.tokens, ref.tokens), spec
    torch.testing.assert_close(got.logits, ref.logits, atol=TOL_REF, rtol=0)
    return session


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_full_equals_stock_generate(kind, batch):
    model, processor = _model(kind)
    inputs = family_inputs(processor, n=batch)
    if batch == 3:
        assert (inputs["attention_mask"] == 0).any(), "the batch must exercise left padding"
        if kind in VARIABLE_TOKENS:
            ids = torch.tensor(family_of(model).vision_token_ids(model.config))
            counts = torch.isin(inputs["input_ids"], ids).sum(1)
            assert len(set(counts.tolist())) >= 2, "rows must hold different image-token counts"
    ref = _generate(model.generate, inputs)
    with avl_lab.attach(model, "full") as session:
        got = _generate(session.generate, inputs)
    assert torch.equal(ref.sequences, got.sequences)
    assert _max_diff(ref.logits, got.logits) <= TOL_STOCK
    assert session.stats.stored == pytest.approx(1.0) and session.stats.used == pytest.approx(1.0)


def _runs_on(kind: str, name: str) -> bool:
    """Whether the family offers what the policy reads (the CLS attention of pre-LLM methods);
    where it does not, ``test_pre_llm.py`` checks the clear error."""
    from avl_lab.engine.families import family_for_type

    needs_vision = policies.build(policies.example(name)).needs_vision
    return not needs_vision or not family_for_type(kind).why_no_vision


@pytest.mark.parametrize(("kind", "name"), [(k, n) for n in policies.names() for k in OTHER_KINDS
                                            if _runs_on(k, n)])
def test_registered_policy_equals_masked_reference(kind, name):
    model, processor = _model(kind)
    _assert_matches_reference(model, family_inputs(processor, n=3), policies.example(name))


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_pruning_after_layer_0_keeps_positions(kind):
    """Pruning right after layer 0: every later layer (and Qwen3-VL's DeepStack additions after
    layer 1) works on the kept tokens at their original 1-D / 3-D positions."""
    model, processor = _model(kind)
    session = _assert_matches_reference(
        model, family_inputs(processor, n=3), {"name": "fastv", "keep": 50, "layer": 0}
    )
    assert session.stats.stored < 1.0


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_each_row_equals_that_row_alone(kind):
    model, processor = _model(kind)
    batch, b_session = run_policy(model, family_inputs(processor, n=3), AVL_ALL, NEW)
    for i in range(3):
        alone, a_session = run_policy(model, family_inputs(processor, rows=[i]), AVL_ALL, NEW)
        assert torch.equal(batch.tokens[i : i + 1], alone.tokens), (kind, i)
        torch.testing.assert_close(batch.logits[:, i : i + 1], alone.logits, atol=TOL_REF, rtol=0)
        assert b_session.stats.per_sample_stored[i] == pytest.approx(a_session.stats.stored)
        assert b_session.stats.per_sample_used[i] == pytest.approx(a_session.stats.used)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_video_tokens_are_vision_tokens(kind):
    from avl_lab.models.tiny_qwen import video_batch

    model, processor = _model(kind)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8) for w, h in [(32, 32), (48, 40)]]
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in QUESTIONS[:2]
    ]
    inputs = video_batch(processor, videos, prompts)
    session = _assert_matches_reference(model, inputs, AVL_ALL)
    video = inputs["input_ids"] == model.config.video_token_id
    assert video.sum() >= 8
    assert (session.last_run.base_layout.modality[video] == int(Modality.IMAGE)).all()
    assert session.stats.stored < 1.0


def test_gemma3_sliding_layers_hold_only_their_window():
    model, processor = _model("gemma3")
    inputs = family_inputs(processor, n=3)
    window = model.config.text_config.sliding_window
    assert inputs["input_ids"].shape[1] > 2 * window, "the prompt must outrun the window"
    with avl_lab.attach(model, "full") as session:
        session.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    kinds = model.config.text_config.layer_types
    cache = session.last_run.cache
    for layer, kind in zip(cache.layers, kinds, strict=True):
        held = layer.valid.sum(1)
        if kind == "sliding_attention":
            assert int(held.max()) <= window - 1
        else:
            assert torch.equal(held, session.last_run.full_rows())


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_load_a_saved_checkpoint_directory(kind, tmp_path):
    model, processor = _model(kind)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_proc = avl_lab.models.load(str(tmp_path))
    assert type(loaded) is type(model)
    inputs = family_inputs(processor, n=2)
    again = family_inputs(loaded_proc, n=2)
    assert torch.equal(inputs["input_ids"], again["input_ids"])
    with torch.no_grad():
        a = model(**inputs).logits
        b = loaded(**again).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_and_a_three_trial_sweep(kind, tmp_path):
    from avl_lab import sweep

    name = "tiny-random-" + kind.replace("_", "-")
    fast = [f"model={name}", "data=synth-docvqa", "generation.max_new_tokens=3", "batch_size=2"]
    summary = avl_lab.evaluation.evaluate([*fast, "data.limit=4", "policy=avl", "policy.S=45",
                                "policy.C=30", f"out_dir={tmp_path / 'eval'}"])
    assert summary.n == 4 and 0 < summary.stored < 1
    lines = (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all("prediction" in json.loads(x) for x in lines)
    rc = sweep.main(["--study", "docvqa_pareto", "--n-trials", "3", "--no-progress",
                     "--out", str(tmp_path / "sweep"), *fast, "data.limit=2"])
    assert rc == 0
    assert len((tmp_path / "sweep" / "pareto.csv").read_text().splitlines()) == 1 + 3
