"""The shipped models load offline and answer from the image: ``avl-tiny`` (the default; its
decoder learned from the answer loss alone) and ``avl-tiny-guided`` (two heads taught where
to look, kept as a stress case).

Floors are set a little below what each shipped checkpoint scores on these 16 eval samples
per task (measured with the evaluation runner, policy ``full``); a random or untrained
model scores ~0 on every task, so a wrong checkpoint cannot pass.
"""

import pytest

import avl_lab
from avl_lab.models import embedded_path, load

# model -> task -> minimum score on the first 16 eval samples (CIDEr on the x1 scale).
FLOORS = {
    # measured (generator v3 data, policy full, batch 16): docvqa 1.000, ocr 1.000,
    # textvqa 1.000, caption 3.574, easy-vqa 1.000
    "avl-tiny-guided": {
        "synth-docvqa": 0.9,
        "synth-ocr": 0.9,
        "synth-textvqa": 0.9,
        "synth-caption": 2.8,
        "easy-vqa": 0.9,
    },
    # measured (the unguided retraining of issue 19, policy full, batch 16): docvqa 0.917,
    # ocr 1.000, textvqa 1.000, caption 3.693, easy-vqa 1.000 (200 samples: 0.967 / 1.000 /
    # 1.000 / 3.506 / 0.890)
    "avl-tiny": {
        "synth-docvqa": 0.85,
        "synth-ocr": 0.9,
        "synth-textvqa": 0.9,
        "synth-caption": 3.0,
        "easy-vqa": 0.9,
    },
}
CASES = [(m, t) for m, floors in FLOORS.items() for t in sorted(floors)]


def _shipped(name: str) -> bool:
    return (embedded_path(name) / "model.safetensors").exists()


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_model_is_a_small_trained_llava(name):
    if not _shipped(name):
        pytest.skip(f"{name} weights not shipped")
    model, processor = load(name)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.image_seq_length >= 256
    tc = model.config.text_config
    assert tc.num_key_value_heads < tc.num_attention_heads and tc.num_hidden_layers >= 4
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    size = sum(f.stat().st_size for f in embedded_path(name).iterdir())
    assert size < 50e6


@pytest.mark.parametrize(("name", "task"), CASES)
def test_quality_floor(name, task, tmp_path):
    if not _shipped(name):
        pytest.skip(f"{name} weights not shipped")
    summary = avl_lab.evaluation.evaluate(
        [f"model={name}", f"data={task}", "data.limit=16", "policy=full", "batch_size=16",
         "progress=false", f"out_dir={tmp_path}"]
    )  # fmt: skip
    assert summary.n == 16
    assert summary.score >= FLOORS[name][task], (name, task, summary.score)


def test_unknown_shipped_name_is_refused():
    with pytest.raises(ValueError, match="not a shipped model"):
        embedded_path("avl-huge")


def test_loading_is_quiet_and_keeps_the_pil_processor(capfd):
    """No "Loading weights" bar, no use_fast deprecation: stderr stays empty; the processor is
    the PIL one the checkpoint was trained with (same pixels as the old ``use_fast=False``)."""
    import warnings

    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, processor = load("avl-tiny")
    assert capfd.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled()  # restored for the caller
    reference = AutoProcessor.from_pretrained(embedded_path(), use_fast=False)  # the old call
    assert type(processor.image_processor) is type(reference.image_processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), np.uint8))
    ours = processor(images=[image], text=["USER: <image>\nWhat? ASSISTANT:"], return_tensors="pt")
    theirs = reference(images=[image], text=["USER: <image>\nWhat? ASSISTANT:"], return_tensors="pt")
    assert (ours["pixel_values"] == theirs["pixel_values"]).all()
    assert (ours["input_ids"] == theirs["input_ids"]).all()
