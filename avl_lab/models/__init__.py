"""Models: the offline tiny random LLaVAs and the loader for named/local checkpoints."""

from avl_lab.models.tiny import TinyConfig, tiny_random

__all__ = ["TinyConfig", "tiny_random"]
