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
