"""Turning dataset prompts and images into the model's inputs, for every supported family."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

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


@dataclass
class Generated:
    """One batch's greedy generation: the encoded ``inputs``, the ``sequences`` ``generate``
    returned (prompt + new tokens), the ``new`` tokens and their decoded, stripped ``texts``."""

    inputs: Any
    sequences: Tensor
    new: Tensor
    texts: list[str]


def prompt_and_generate(
    processor: Any,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    generate: Callable[..., Any],
    *,
    device: torch.device | str | None = None,
    inputs: Any = None,
    **generate_kwargs: Any,
) -> Generated:
    """Encode (:func:`encode`; or take ``inputs``, their encoding), run ``generate`` greedily
    without gradients, strip the prompt.

    ``generate`` is ``model.generate`` or a session's ``generate`` (a policy attached);
    ``generate_kwargs`` go to it (``max_new_tokens``, ``num_beams``, ...).
    """
    inputs = encode(processor, images, prompts) if inputs is None else inputs
    if device is not None:
        inputs = inputs.to(device)
    with torch.no_grad():
        sequences = generate(**inputs, do_sample=False, **generate_kwargs)
    new = sequences[:, inputs["input_ids"].shape[1]:]
    texts = [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    return Generated(inputs=inputs, sequences=sequences, new=new, texts=texts)
