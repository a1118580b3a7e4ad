"""Turning a dataset prompt into the model's chat format."""

from __future__ import annotations

from typing import Any

FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


def chat_prompt(processor: Any, prompt: str) -> str:
    """The processor's chat template around one image and ``prompt`` (LLaVA style fallback)."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(prompt=prompt)
