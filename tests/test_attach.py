"""attach() restores the model exactly; errors are clear."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import avl_lab
from avl_lab import policies
from tests.helpers import make_inputs


def _greedy(model, inputs):
    return model.generate(**inputs, max_new_tokens=8, do_sample=False)


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_model_restored_after_with_block(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    before = _greedy(model, inputs)
    impl = model.config.text_config._attn_implementation
    hooks = _hook_count(model)
    with avl_lab.attach(model, "full") as session:
        session.generate(**inputs, max_new_tokens=4)
        assert model.config.text_config._attn_implementation != impl
    assert model.config.text_config._attn_implementation == impl
    assert _hook_count(model) == hooks
    assert not any(hasattr(m, "_avl_session") for m in model.modules())
    assert torch.equal(_greedy(model, inputs), before)


def test_model_restored_after_exception(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    before = _greedy(model, inputs)
    hooks = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"), avl_lab.attach(model, "full") as session:
        session.generate(**inputs, max_new_tokens=2)
        raise RuntimeError("boom")
    assert _hook_count(model) == hooks
    assert not any(hasattr(m, "_avl_session") for m in model.modules())
    assert torch.equal(_greedy(model, inputs), before)


def test_unknown_policy_lists_registered_names(llava):
    with pytest.raises(ValueError, match="registered policies: .*full"):
        policies.build("no_such_policy")
    with pytest.raises(ValueError, match="registered policies"), avl_lab.attach(llava[0], "nope"):
        pass


def test_unknown_policy_field_is_named():
    with pytest.raises(ValueError, match="bogus"):
        policies.build({"name": "full", "bogus": 1})


def test_non_llava_model_is_a_type_error():
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(TypeError, match=r"supported families: LLaVA-1.5 .*Qwen3-VL.*InternVL"), \
            avl_lab.attach(lm, "full"):
        pass
    with pytest.raises(TypeError, match="does not support Linear"), \
            avl_lab.attach(torch.nn.Linear(2, 2), "full"):
        pass


def test_session_rejects_a_user_cache(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=1)
    for key in ("cache", "past_key_values"):
        with avl_lab.attach(model, "full") as session, pytest.raises(ValueError, match="`cache`"):
            session.generate(**inputs, **{key: object()})


AVL = {"name": "avl", "S": 20, "C": 10, "K": 3}


def test_model_generate_inside_attach_applies_the_policy(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    full = _greedy(model, inputs)
    with avl_lab.attach(model, AVL) as session:
        want = session.generate(**inputs, max_new_tokens=8, do_sample=False)
        want_stats = session.stats
        got = _greedy(model, inputs)  # the model's own generate, as a harness calls it
        assert torch.equal(got, want) and session.stats == want_stats
    assert want_stats.used < 0.5 and not torch.equal(full, want)  # the policy did act
    assert torch.equal(_greedy(model, inputs), full)  # restored on exit
    assert "generate" not in model.__dict__


def test_a_pipeline_inside_attach_applies_the_policy(llava):
    from transformers import pipeline

    from tests.helpers import PROMPTS, SIZES, random_image

    model, processor = llava
    image, prompt = random_image(SIZES[1], seed=1), PROMPTS[1]
    pipe = pipeline("image-text-to-text", model=model, processor=processor, device="cpu")
    with avl_lab.attach(model, AVL) as session:
        out = pipe(images=image, text=prompt, max_new_tokens=8, generate_kwargs={"do_sample": False},
                   return_full_text=False)
        stats = session.stats
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        ref = session.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = ref[0, inputs["input_ids"].shape[1]:]
    assert out[0]["generated_text"] == processor.decode(new, skip_special_tokens=True)
    assert stats == session.stats and stats.used < 0.5


def test_nested_attach_is_refused_and_the_outer_session_keeps_its_policy(llava):
    model, processor = llava
    inputs = make_inputs(processor, n=2)
    with avl_lab.attach(model, AVL) as fresh:
        fresh.generate(**inputs, max_new_tokens=6, do_sample=False)
    with avl_lab.attach(model, AVL) as outer:
        with pytest.raises(RuntimeError, match="already has a policy attached"), \
                avl_lab.attach(model, "full"):
            pass
        outer.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert outer.stats == fresh.stats and outer.stats.used < 0.5
