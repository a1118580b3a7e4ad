"""Checks an evaluation makes before it writes anything or loads a model's weights."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from avl_lab.errors import ConfigError, InputFileError
from avl_lab.evaluation.config import EvalConfig, parse_devices

__all__ = ["check_accelerator", "check_model", "check_out_dir", "check_policy_fits", "check_rows",
           "make_out_dir", "model_facts", "preflight"]


def check_out_dir(path: str | Path, key: str = "out_dir") -> None:
    """``path`` is, or can be made, a writable directory. Where it does not exist yet, a folder
    is made and removed in its nearest existing parent (what permission bits cannot tell: a
    root user, a read-only or pseudo file system such as ``/proc``)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"`{key}` {path} is a file, not a directory; give a directory")
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"`{key}` {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"`{key}` {path}: {parent} is not writable")
            if parent != path:
                try:
                    os.rmdir(tempfile.mkdtemp(prefix=".avl_lab_probe_", dir=parent))
                except OSError as err:
                    raise ConfigError(f"`{key}` {path} cannot be created in {parent} "
                                      f"({err.strerror}); give a writable directory") from None
            return


def make_out_dir(path: Path, key: str = "out_dir") -> None:
    """Create ``path`` (and its parents); an OS refusal is one error naming ``key``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"`{key}` {path} cannot be created ({err.strerror}); "
                          "give a writable directory") from None


def check_model(cfg: EvalConfig) -> int | None:
    """Find the checkpoint and check its files, without reading weights; the number of decoder
    layers its config declares (None for the random models, which are built in memory)."""
    return model_facts(cfg)[0]


def model_facts(cfg: EvalConfig) -> tuple[int | None, str | None]:
    """:func:`check_model`'s layer count and the model's ``model_type`` (its family), from one
    check of the checkpoint."""
    from avl_lab.models.checks import check_checkpoint, decoder_layers
    from avl_lab.models.loader import RANDOM_MODELS, _resolve

    if cfg.model.name in RANDOM_MODELS:
        return None, RANDOM_MODELS[cfg.model.name]
    config = check_checkpoint(_resolve(cfg.model.name))
    return decoder_layers(config), config.get("model_type")


def check_policy_fits(policy: dict[str, Any], num_layers: int | None, model: str,
                      kind: str | None = None) -> None:
    """Every prefill-pruning layer (``layer``, ``stages``) must be one of the model's decoder
    layers, and the model's family must allow the policy (renumbered positions)."""
    from avl_lab import policies
    from avl_lab.engine.families import family_for_type

    built = policies.build(dict(policy))
    family = family_for_type(kind) if kind is not None else None
    if family is not None:
        try:
            family.check_policy(built)
        except ValueError as err:
            raise ConfigError(f"`policy` ({policy.get('name')}) on {model}: {err}") from None
    if num_layers is None:
        return
    for layer in (*built.prune_layers, *built.prune_before_layers):
        if not 0 <= layer < num_layers:
            key = "policy.stages" if "stages" in policies.registry.fields(policy["name"]) \
                else "policy.layer"
            raise ConfigError(f"`{key}` {layer} is not a decoder layer of {model} "
                              f"(it has {num_layers}: 0..{num_layers - 1})")


def check_accelerator(cfg: EvalConfig) -> None:
    """The accelerator (and device count) asked for exists on this machine."""
    import torch

    devices = parse_devices(cfg.devices)
    if cfg.accelerator in ("gpu", "cuda"):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == 0:
            raise ConfigError(f"`accelerator` {cfg.accelerator}: no CUDA device on this machine; "
                              "use accelerator=cpu or auto")
        want = len(devices) if isinstance(devices, list) else devices
        if isinstance(want, int) and want > have:
            raise ConfigError(f"`devices` {cfg.devices}: this machine has {have} CUDA device(s)")
        if isinstance(devices, list) and max(devices) >= have:
            raise ConfigError(f"`devices` {cfg.devices}: device ids go up to {have - 1} here")
    if cfg.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("`accelerator` mps: MPS is not available on this machine")


def check_rows(ids: list[str], cfg: EvalConfig) -> None:
    """A dataset with rows, each with its own id (a duplicate would silently shrink n)."""
    source = f"{cfg.data.name} (split {cfg.data.split}" + (f", {cfg.data.path})" if cfg.data.path
                                                           else ")")
    if not ids:
        raise InputFileError(f"`data`: {source} has 0 rows; nothing to evaluate")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        raise InputFileError(f"`data`: {source} has {len(dupes)} duplicate sample id(s), e.g. "
                             f"{dupes[:3]}; each row needs its own id")


def preflight(cfg: EvalConfig, policies: list[dict[str, Any]] | None = None) -> list[str]:
    """Every check of an evaluation that reads no weights (for commands that write before
    they evaluate, e.g. a sweep's storage); returns the row ids.

    ``policies`` (default ``[cfg.policy]``) are checked against the model's layer count.
    """
    from avl_lab.evaluation.datamodule import EvalDataModule

    check_accelerator(cfg)
    layers, kind = model_facts(cfg)
    for policy in policies or [cfg.policy]:
        check_policy_fits(policy, layers, cfg.model.name, kind)
    ds = EvalDataModule(cfg.data, cfg.batch_size, set()).load()
    ids = list(ds["id"])
    check_rows(ids, cfg)
    check_some_image(ds, cfg)
    return ids


def check_some_image(ds: Any, cfg: EvalConfig) -> None:
    """At least one row has reference answers and an image that decodes (the run skips the
    others and refuses when none is left); stops at the first such row."""
    import warnings

    from datasets import Image

    from avl_lab.data import safe_image

    if "image" not in ds.column_names or not len(ds):
        return
    raw = ds.cast_column("image", Image(decode=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run warns per row; one error here says it all
        if any(len(raw[i]["answers"]) and safe_image(raw[i]["image"]) is not None
               for i in range(len(raw))):
            return
    raise InputFileError(f"`data`: no row of {cfg.data.name} could be scored: none of its "
                         f"{len(raw)} rows has reference answers and an image that decodes; "
                         "nothing would be written")
