"""Models: the offline tiny random LLaVAs, the embedded ``avl-tiny`` and real checkpoints."""

from avl_lab.models.loader import (
    ModelNotAvailableError,
    default_model,
    embedded_path,
    load,
    names,
)
from avl_lab.models.tiny import TinyConfig, tiny_random

__all__ = [
    "ModelNotAvailableError",
    "TinyConfig",
    "default_model",
    "embedded_path",
    "load",
    "names",
    "tiny_random",
]
