"""Tiny random Gemma 3, Idefics3, SmolVLM, InternVL and LLaVA-OneVision builders."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

from avl_lab.models import tiny_gemma3, tiny_idefics3, tiny_internvl, tiny_onevision
from tests.helpers import random_image

BUILDERS = {
    **tiny_gemma3.BUILDERS,
    **tiny_idefics3.BUILDERS,
    **tiny_internvl.BUILDERS,
    **tiny_onevision.BUILDERS,
}
KINDS = ["gemma3", "idefics3", "smolvlm", "internvl", "llava_onevision"]
MODEL_CLASSES = {
    "gemma3": "Gemma3ForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}
PROMPTS = [
    "What is written in the image? Answer the question using a single word or phrase.",
    "What colour is it?",
]
# A square and a wide image: the tiling families give their rows different image-token counts.
SIZES = [(32, 32), (80, 24)]
IMAGE_TOKENS = {
    "gemma3": "<image_soft_token>",
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "internvl": "<IMG_CONTEXT>",
    "llava_onevision": "<image>",
}
# Families whose processor gives every image the same number of tokens whatever its size
# (Gemma 3 without pan-and-scan: always mm_tokens_per_image).
FIXED_IMAGE_TOKENS = {"gemma3"}


@pytest.fixture(scope="module", params=KINDS)
def family(request):
    """``(kind, model, processor)`` built once per kind with seed 0."""
    model, processor = BUILDERS[request.param](seed=0)
    return request.param, model, processor


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _inputs(processor, rows: list[int]):
    text = [processor.apply_chat_template(_messages(PROMPTS[i]), add_generation_prompt=True)
            for i in rows]  # fmt: skip
    images = [[random_image(SIZES[i], seed=i)] for i in rows]
    return processor(images=images, text=text, return_tensors="pt", padding=True)


def _image_token_id(model) -> int:
    return model.config.image_token_id


def _decoder_layers(model) -> torch.nn.ModuleList:
    inner = model.model
    text_model = getattr(inner, "language_model", None) or inner.text_model
    return text_model.layers


def _generate(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


def test_builds_small_model_of_the_family(family):
    kind, model, processor = family
    assert type(model).__name__ == MODEL_CLASSES[kind]
    assert not model.training and model.dtype == torch.float32
    tc = model.config.get_text_config()
    assert (tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers) == (64, 128, 4)
    assert (tc.num_attention_heads, tc.num_key_value_heads) == (4, 2)
    layers = _decoder_layers(model)
    assert len(layers) == 4 and all(layer.self_attn.head_dim == 16 for layer in layers)
    assert tc._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.config.vision_config.hidden_size == 32
    tok = processor.tokenizer
    assert tok.padding_side == "left"
    assert model.generation_config.eos_token_id is None
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert "Pil" in type(processor.image_processor).__name__


def test_config_token_ids_are_the_tokenizers(family):
    kind, model, processor = family
    tok = processor.tokenizer
    image_id = _image_token_id(model)
    assert image_id == tok.convert_tokens_to_ids(IMAGE_TOKENS[kind])
    if kind == "gemma3":
        # Gemma3Processor's image_token(_id) is the boi placeholder it expands, not the soft token.
        assert processor.image_token == "<start_of_image>"
        assert model.config.boi_token_id == tok.convert_tokens_to_ids("<start_of_image>")
        assert model.config.eoi_token_id == tok.convert_tokens_to_ids("<end_of_image>")
    if kind == "llava_onevision":
        assert model.config.video_token_id == tok.convert_tokens_to_ids("<video>")


def test_deterministic_by_seed(family):
    kind = family[0]
    a, _ = BUILDERS[kind](seed=3)
    b, _ = BUILDERS[kind](seed=3)
    c, _ = BUILDERS[kind](seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_unknown_override_is_rejected(family):
    with pytest.raises(ValueError, match="bogus"):
        BUILDERS[family[0]](bogus=1)


def test_chat_template_renders_image_placeholder(family):
    kind, _, processor = family
    text = processor.apply_chat_template(_messages("Hi"), add_generation_prompt=True)
    placeholder = processor.boi_token if kind == "gemma3" else processor.image_token
    assert text.count(placeholder) == 1 and "Hi" in text


def test_left_padded_batch_generates_like_single_rows(family):
    kind, model, processor = family
    batch = _inputs(processor, [0, 1])
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] != lengths[1] and (batch["attention_mask"][:, 0] == 0).any()
    counts = (batch["input_ids"] == _image_token_id(model)).sum(1).tolist()
    if kind in FIXED_IMAGE_TOKENS:
        assert counts[0] == counts[1] > 0
    else:
        assert counts[0] != counts[1] and min(counts) > 0
    assert max(counts) <= 64
    together = _generate(model, batch)
    for i in range(2):
        alone = _generate(model, _inputs(processor, [i]))
        assert torch.equal(together[i], alone[0]), (kind, i, together[i], alone[0])


def test_save_load_round_trip(family, tmp_path):
    kind, model, processor = family
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded_processor) is type(processor)
    assert type(loaded_processor.image_processor) is type(processor.image_processor)
    inputs = _inputs(processor, [0, 1])
    again = _inputs(loaded_processor, [0, 1])
    assert inputs.keys() == again.keys()
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    with torch.no_grad():
        expected = model(**inputs).logits
        got = loaded(**again).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_gemma3_mixes_sliding_and_global_layers():
    model, processor = tiny_gemma3.build(seed=0)
    tc = model.config.text_config
    assert {"sliding_attention", "full_attention"} <= set(tc.layer_types)
    attns = [layer.self_attn for layer in model.model.language_model.layers]
    assert [a.sliding_window for a in attns] == [
        tc.sliding_window if t == "sliding_attention" else None for t in tc.layer_types
    ]
    inputs = _inputs(processor, [0, 1])
    assert inputs["attention_mask"].sum(1).min() > tc.sliding_window
    # Image tokens are marked for the bidirectional image-block mask.
    is_image = inputs["input_ids"] == _image_token_id(model)
    assert torch.equal(inputs["token_type_ids"].bool(), is_image)
