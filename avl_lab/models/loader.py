"""``avl_lab.models.load``: the embedded ``avl-tiny``, the offline random models, real checkpoints.

Real checkpoints (``llava-hf/llava-1.5-7b-hf``, ``llava-hf/llava-v1.6-vicuna-7b-hf``, ...) load
from a local directory or the local Hugging Face cache only; there is no download.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin

from avl_lab.models.checks import check_checkpoint
from avl_lab.models.quiet import quiet_loading
from avl_lab.models.tiny import KINDS, tiny_random

log = logging.getLogger(__name__)

#: ``tiny-random-<kind>`` (underscores as dashes) for every family ``tiny_random`` builds.
RANDOM_MODELS = {"tiny-random-" + kind.replace("_", "-"): kind for kind in KINDS}
EMBEDDED = "avl-tiny"
#: Shipped models under ``avl_lab/assets/<name>``: ``avl-tiny`` (its decoder learned from the
#: answer loss only) and ``avl-tiny-guided`` (two heads taught where to look; a stress case).
SHIPPED = (EMBEDDED, "avl-tiny-guided")
KNOWN_CHECKPOINTS = (
    "llava-hf/llava-1.5-7b-hf",
    "llava-hf/llava-1.5-13b-hf",
    "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava-hf/llava-v1.6-vicuna-13b-hf",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen/Qwen3-VL-8B-Instruct",
    "google/gemma-3-4b-it",
    "HuggingFaceM4/Idefics3-8B-Llama3",
    "HuggingFaceTB/SmolVLM-Instruct",
    "OpenGVLab/InternVL3-8B-hf",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotAvailableError(FileNotFoundError):
    """A named model's weights are not on this machine; the message says how to provide them."""


def embedded_path(name: str = EMBEDDED) -> Path:
    """Where the shipped weights of ``name`` (one of :data:`SHIPPED`) live (in the package)."""
    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not a shipped model; shipped: {', '.join(SHIPPED)}")
    return Path(__file__).resolve().parent.parent / "assets" / name


def default_model() -> str:
    """The embedded default: ``avl-tiny`` when its weights are shipped, else the random LLaVA."""
    return EMBEDDED if (embedded_path() / "config.json").exists() else "tiny-random-llava"


def names() -> list[str]:
    """Model names ``load`` understands besides local paths."""
    return [*SHIPPED, *RANDOM_MODELS, *KNOWN_CHECKPOINTS]


def load(
    name: str, dtype: str = "float32", device: str = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load ``(model, processor)`` by name or local path, in eval mode.

    Parameters
    ----------
    name : str
        ``avl-tiny``, ``avl-tiny-guided``, ``tiny-random-llava``, ``tiny-random-llava-next``, a local checkpoint
        directory, or a Hugging Face id already in the local cache.
    dtype : str
        ``float32`` | ``bfloat16`` | ``float16``.
    device : str
        Torch device for the model.
    seed : int
        Seed of the random models.

    Raises
    ------
    ModelNotAvailableError
        The weights are not on this machine.
    ValueError
        Unknown ``dtype``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"`model.dtype` must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if name in RANDOM_MODELS:
        model, processor = tiny_random(RANDOM_MODELS[name], seed=seed)
    else:
        path = _resolve(name)
        model, processor = _from_pretrained(path, _DTYPES[dtype])
    model = model.to(device=device, dtype=_DTYPES[dtype]).eval()
    return model, processor


def _resolve(name: str) -> Path:
    if name in SHIPPED:
        path = embedded_path(name)
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(
                f"the embedded model {name} is not in this checkout ({path}); train it with "
                "`python -m avl_lab.train` (README: avl-tiny) or use model=tiny-random-llava"
            )
        return path
    path = Path(os.path.expanduser(name))
    if (path / "config.json").exists():
        check_checkpoint(path)  # malformed or incomplete: one clear error, before any weights
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # not in the local cache (or not a valid id)
        raise ModelNotAvailableError(
            f"model {name!r} not found: it is neither a local checkpoint directory (with "
            "config.json) nor in the local Hugging Face cache, and avl_lab never downloads. "
            f"Put the checkpoint in a directory and pass model=/path/to/dir, or run "
            f"`hf download {name}` on a machine with network and copy "
            "~/.cache/huggingface here. Known names: " + ", ".join(names())
        ) from err


def _from_pretrained(path: Path, dtype: torch.dtype):
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    from avl_lab.engine.families import families
    from avl_lab.models import tiny_qwen  # noqa: F401  (registers the image-only Qwen processors)
    from avl_lab.models.compat import processors_without_torchvision

    processors_without_torchvision()

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    supported = [t for fam in families() for t in fam.model_types]
    if config.model_type not in supported:
        raise ValueError(
            f"`model` {path} is a {config.model_type!r} checkpoint; avl_lab supports "
            + ", ".join(supported)
        )
    with quiet_loading():
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, local_files_only=True, attn_implementation="sdpa"
        )
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    if getattr(processor, "image_processor", None) is not None:
        # the PIL image processor whether or not torchvision is installed (the same pixels on
        # every machine). transformers 5 names it backend="pil" (use_fast=False is deprecated);
        # given to AutoProcessor it would reach the video processors too, which have no PIL one
        processor.image_processor = AutoImageProcessor.from_pretrained(
            path, local_files_only=True, backend="pil"
        )
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"
    log.info("loaded %s from %s", type(model).__name__, path)
    return model, processor
