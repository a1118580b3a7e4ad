"""Stock processors of the video-capable families on machines without torchvision.

Without ``torchvision``, transformers 5.24 hides ``VideoProcessorMixin`` (so
``ProcessorMixin.__init__``'s class check fails for every processor with a video slot, even an
empty one) and maps every model type to no video processor (so ``AutoProcessor.from_pretrained``
fails). LLaVA-OneVision, SmolVLM and InternVL processors are such processors. This exposes the
mixin again and registers each family's video processor class, so that their image inputs,
``save_pretrained`` and ``AutoProcessor.from_pretrained`` work; processing *videos* still needs
torchvision. (The Qwen families use image-only processor subclasses instead, see
:mod:`avl_lab.models.tiny_qwen`.) A no-op when torchvision is installed; idempotent.
"""

from __future__ import annotations

import functools

from transformers import InternVLConfig, LlavaOnevisionConfig, SmolVLMConfig
from transformers import processing_utils as _processing_utils
from transformers.models.auto.video_processing_auto import AutoVideoProcessor
from transformers.models.llava_onevision.video_processing_llava_onevision import (
    LlavaOnevisionVideoProcessor,
)
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
from transformers.utils import is_torchvision_available
from transformers.video_processing_utils import BaseVideoProcessor, VideoProcessorMixin


def internvl_video_processor() -> type:
    """InternVL's video processor class, or ``BaseVideoProcessor`` without torchvision."""
    # Its module imports torchvision at the top; a plain BaseVideoProcessor fills the slot then.
    try:
        from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor
    except ImportError:
        return BaseVideoProcessor
    return InternVLVideoProcessor


@functools.cache
def processors_without_torchvision() -> None:
    """Make the video-capable families' processors buildable and loadable without torchvision."""
    if is_torchvision_available():
        return
    module = _processing_utils.transformers_module
    if not hasattr(module, "VideoProcessorMixin"):
        module.VideoProcessorMixin = VideoProcessorMixin
    for config_class, video_processor_class in (
        (LlavaOnevisionConfig, LlavaOnevisionVideoProcessor),
        (SmolVLMConfig, SmolVLMVideoProcessor),
        (InternVLConfig, internvl_video_processor()),
    ):
        AutoVideoProcessor.register(config_class, video_processor_class, exist_ok=True)
