"""``quiet_loading()``: transformers' own "Loading weights" bars off while we load a checkpoint.

transformers 5.x draws a tqdm bar per ``from_pretrained`` (one per model a sweep or a figure
loads). Our commands show their own bars over trials and samples instead, so the library's are
switched off for the duration of our loads and restored afterwards (a caller that turned them
off itself keeps them off).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from transformers.utils import logging as hf_logging

__all__ = ["quiet_loading"]


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' progress bars off inside the block, as they were after it."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
