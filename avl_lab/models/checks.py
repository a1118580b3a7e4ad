"""Checks of a checkpoint directory before its weights are read: one clear error per problem."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from avl_lab.errors import InputFileError

__all__ = ["check_checkpoint", "decoder_layers"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _check_safetensors(path: Path) -> None:
    """The header of a ``.safetensors`` file: 8 bytes of length, then that much JSON."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        ok = 0 < n <= size - 8
        if ok:
            try:
                json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                ok = False
    if not ok:
        raise InputFileError(f"{path} is not a valid safetensors file (truncated or corrupt); "
                             "copy the checkpoint again")


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Validate a checkpoint directory without loading it; return its ``config.json``.

    Raises
    ------
    InputFileError
        ``config.json`` is malformed or not of a supported vision-language family, the
        weights or the tokenizer are missing, or a safetensors file is cut short.
    """
    from avl_lab.engine.families import families

    path = Path(path)
    cfg_file = path / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise InputFileError(f"{cfg_file} is not valid JSON (line {err.lineno}, column "
                             f"{err.colno}: {err.msg})") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{cfg_file} is not a text (JSON) file") from None
    if not isinstance(config, dict):
        raise InputFileError(f"{cfg_file} must hold a JSON object, not {type(config).__name__}")
    supported = [t for fam in families() for t in fam.model_types]
    if config.get("model_type") not in supported:
        raise InputFileError(
            f"{path} holds a {config.get('model_type')!r} model, not a vision-language model "
            f"avl_lab supports (config.json model_type one of: {', '.join(supported)})")
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise InputFileError(f"{path} has a config.json but no weights (*.safetensors or "
                             "pytorch_model*.bin); copy the whole checkpoint directory")
    for f in weights:
        if f.suffix == ".safetensors":
            _check_safetensors(f)
    if not any((path / name).exists() for name in _TOKENIZER_FILES):
        raise InputFileError(f"{path} has no tokenizer ({' or '.join(_TOKENIZER_FILES)}); "
                             "copy the processor files with the checkpoint")
    return config


def decoder_layers(config: dict[str, Any]) -> int | None:
    """The text decoder's layer count from a ``config.json`` (None when it does not say)."""
    for key in ("text_config", "llm_config"):
        sub = config.get(key)
        if isinstance(sub, dict) and isinstance(sub.get("num_hidden_layers"), int):
            return sub["num_hidden_layers"]
    n = config.get("num_hidden_layers")
    return n if isinstance(n, int) else None
