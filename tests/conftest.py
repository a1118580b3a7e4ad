"""Shared fixtures: tiny random LLaVA / LLaVA-NeXT models."""

from __future__ import annotations

import pytest
import torch

from avl_lab.models import tiny_random


@pytest.fixture(scope="session")
def llava():
    torch.manual_seed(0)
    return tiny_random("llava", seed=0)


@pytest.fixture(scope="session")
def llava_next():
    return tiny_random("llava_next", seed=0)


@pytest.fixture(scope="session", params=["llava", "llava_next"])
def tiny(request, llava, llava_next):
    """Both model kinds: ``(kind, model, processor)``."""
    model, processor = llava if request.param == "llava" else llava_next
    return request.param, model, processor


@pytest.fixture(scope="session")
def llava15_shaped():
    """A random LLaVA with LLaVA-1.5's layout (576 image tokens, ~60 others) and one prompt."""
    from tests.helpers import make_inputs

    model, processor = tiny_random("llava", image_seq_length=576, patch_size=1, num_hidden_layers=2)
    prompt = ("USER: <image>\nA chat between a curious human and an artificial intelligence "
              "assistant. The assistant gives helpful answers. "
              "questions. What is written on the sign? ASSISTANT:")
    inputs = make_inputs(processor, n=1, prompts=[prompt], sizes=[(24, 24)])
    return model, inputs
