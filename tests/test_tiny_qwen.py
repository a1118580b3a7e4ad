"""The tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL builders: offline, seeded, batched, videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from avl_lab.models.tiny_qwen import (
    BUILDERS,
    KINDS,
    TinyQwenConfig,
    _video_patches,
    tiny_qwen,
    video_batch,
    video_inputs,
)

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
SMALL, LARGE = (40, 56), (70, 90)
IMAGE, VIDEO = "<|image_pad|>", "<|video_pad|>"


def image(size: tuple[int, int], seed: int) -> Image.Image:
    h, w = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def image_prompt(processor, question: str = "What is written in the image?") -> str:
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )


def greedy(model, inputs, n: int = 8) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + n
    return out[:, -n:]


@pytest.fixture(scope="module", params=KINDS)
def built(request):
    model, processor = BUILDERS[request.param](seed=0)
    return request.param, model, processor


def test_architecture_and_ids(built):
    kind, model, processor = built
    assert type(model).__name__ == MODEL_CLASSES[kind]
    cfg, tok = model.config, processor.tokenizer
    tc, vc = cfg.text_config, cfg.vision_config
    assert (tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers) == (64, 128, 4)
    assert (tc.num_attention_heads, tc.num_key_value_heads) == (4, 2)
    assert model.model.language_model.layers[0].self_attn.head_dim == 16
    assert tc.rope_parameters["mrope_section"] == [2, 3, 3]
    assert (vc.depth, vc.spatial_merge_size, vc.temporal_patch_size) == (2, 2, 2)
    assert model.dtype == torch.float32 and not model.training
    assert cfg._attn_implementation == tc._attn_implementation == vc._attn_implementation == "sdpa"
    assert model.generation_config.eos_token_id is None
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert cfg.image_token_id == processor.image_token_id == tok.convert_tokens_to_ids(IMAGE)
    assert cfg.video_token_id == processor.video_token_id == tok.convert_tokens_to_ids(VIDEO)
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert tc.vocab_size == len(tok) and tok.padding_side == "left"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    if kind == "qwen3_vl":
        assert list(vc.deepstack_visual_indexes) == [0, 1]
        assert len(model.model.visual.deepstack_merger_list) == 2


def test_seed_determines_weights(built):
    kind, model, _ = built
    same, _ = BUILDERS[kind](seed=0)
    other, _ = BUILDERS[kind](seed=1)
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in same.state_dict().items())
    assert any(not torch.equal(v, ref[k]) for k, v in other.state_dict().items())


def test_overrides_are_validated():
    with pytest.raises(ValueError, match="unknown tiny_qwen override"):
        tiny_qwen("qwen2_vl", hidden=32)
    with pytest.raises(ValueError, match="kind"):
        tiny_qwen("qwen4_vl")
    with pytest.raises(ValueError, match="mrope_section"):
        TinyQwenConfig(mrope_section=(2, 2, 2))
    model, _ = tiny_qwen("qwen3_vl", num_hidden_layers=2, deepstack_visual_indexes=(1,))
    assert model.config.text_config.num_hidden_layers == 2


def test_chat_template_and_image_token_counts(built):
    _, _, processor = built
    prompt = image_prompt(processor, "Hi")
    assert prompt.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    counts = []
    for size in [(10, 12), SMALL, LARGE, (300, 400)]:
        ids = processor(images=[image(size, 0)], text=[prompt], return_tensors="pt")["input_ids"]
        counts.append(int((ids == processor.image_token_id).sum()))
    assert counts == sorted(counts) and counts[1] < counts[2]
    assert min(counts) >= 4 and max(counts) <= 30


def test_padded_batch_generates_as_each_row_alone(built):
    _, model, processor = built
    prompt = image_prompt(processor)
    images = [image(SMALL, 1), image(LARGE, 2)]
    batch = processor(images=images, text=[prompt, prompt], return_tensors="pt", padding=True)
    n_image = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert n_image[0] != n_image[1]
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    tokens = greedy(model, batch)
    for i, img in enumerate(images):
        alone = processor(images=[img], text=[prompt], return_tensors="pt")
        assert alone["attention_mask"].all()
        assert torch.equal(greedy(model, alone)[0], tokens[i])


def test_video_inputs_generate(built):
    kind, model, processor = built
    inputs = video_inputs(processor, n_frames=3, size=SMALL, prompt="Describe the video.", seed=0)
    grid = inputs["video_grid_thw"]
    assert grid.tolist() == [[2, 4, 8]]  # 3 frames padded to 4; 40x56 -> 32x64 pixels
    assert inputs["pixel_values_videos"].shape == (int(grid.prod()), 3 * 2 * 8 * 8)
    ids = inputs["input_ids"][0]
    assert int((ids == processor.video_token_id).sum()) == int(grid.prod()) // 4
    assert torch.equal(inputs["mm_token_type_ids"][0] == 2, ids == processor.video_token_id)
    text = processor.tokenizer.decode(ids)
    if kind == "qwen3_vl":
        # per temporal patch <t seconds><|vision_start|>tokens<|vision_end|>, inside the template's
        assert text.count("seconds>") == 2 and text.count("<|vision_start|>") == 3
    else:
        assert "<|vision_start|>" + "<|video_pad|>" * 16 + "<|vision_end|>" in text
    if kind == "qwen2_5_vl":
        assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / 24])
    greedy(model, inputs)


def test_video_batch_generates_as_each_row_alone(built):
    _, model, processor = built
    rng = np.random.default_rng(3)
    videos = [rng.integers(0, 256, (4, *size, 3), dtype=np.uint8) for size in (SMALL, LARGE)]
    content = [{"type": "video"}, {"type": "text", "text": "What happens?"}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    batch = video_batch(processor, videos, [prompt, prompt])
    assert batch["attention_mask"][0, 0] == 0
    tokens = greedy(model, batch)
    for i, video in enumerate(videos):
        assert torch.equal(greedy(model, video_batch(processor, [video], [prompt]))[0], tokens[i])


def test_video_patches_match_the_video_processor_layout():
    qwen3_video = pytest.importorskip("transformers.models.qwen3_vl.video_processing_qwen3_vl")
    _, processor = BUILDERS["qwen2_vl"]()
    frames = np.random.default_rng(0).integers(0, 256, (4, *SMALL, 3), dtype=np.uint8)
    flat, grid = _video_patches(processor.image_processor, frames)
    # the normalised frames, recovered from the image processor's own patches
    out = processor.image_processor(images=list(frames), return_tensors="np")
    _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    patches = out["pixel_values"].reshape(4, gh // 2, gw // 2, 2, 2, 3, 2, 8, 8)[..., 0, :, :]
    normalised = patches.transpose(0, 5, 1, 3, 6, 2, 4, 7).reshape(1, 4, 3, gh * 8, gw * 8)
    ref, *ref_grid = qwen3_video.Qwen3VLVideoProcessor().patchify(
        torch.from_numpy(np.ascontiguousarray(normalised)),
        patch_size=8,
        merge_size=2,
        temporal_patch_size=2,
    )
    assert ref_grid == grid
    np.testing.assert_array_equal(ref[0].numpy(), flat)


def test_save_load_round_trip(built, tmp_path):
    _, model, processor = built
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded_processor) is type(processor)
    assert loaded.config._attn_implementation == "sdpa" and not loaded.training
    prompt = image_prompt(processor)
    images = [image(SMALL, 4), image(LARGE, 5)]
    a = processor(images=images, text=[prompt, prompt], return_tensors="pt", padding=True)
    b = loaded_processor(images=images, text=[prompt, prompt], return_tensors="pt", padding=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        diff = (model(**a).logits - loaded(**b).logits).abs().max().item()
    assert diff <= 1e-6
