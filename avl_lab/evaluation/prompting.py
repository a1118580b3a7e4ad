"""Turning dataset prompts and images into the model's inputs, for every supported family."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


def chat_prompt(processor: Any, prompt: str) -> str:
    """The processor's chat template around one image and ``prompt`` (LLaVA style fallback)."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(prompt=prompt)


def encode(processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]) -> Any:
    """One left-padded batch: each prompt in the chat template around its one image.

    Returns the processor's ``BatchFeature`` (``input_ids``, ``attention_mask``, pixel values and
    whatever the family adds: ``image_grid_thw``, ``token_type_ids``, ...).
    """
    texts = [chat_prompt(processor, p) for p in prompts]
    # One list of images per sample: every family's processor accepts it; Gemma 3's and
    # SmolVLM's need it.
    return processor(images=[[im] for im in images], text=texts, return_tensors="pt", padding=True)
