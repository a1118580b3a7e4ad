"""Deterministic generation and Arrow caching shared by the embedded synthetic tasks.

Each sample is drawn from its own ``random.Random`` seeded with the string
``"<task>|<seed>|<split>|<index>"`` (string seeds are hashed with SHA-512, so the stream is
the same in every process and Python version): sample ``i`` does not depend on how many
samples are generated, so ``limit=16`` equals the first 16 rows of a larger set, and the
``train`` and ``eval`` splits come from disjoint seed streams.

Generated splits are saved with ``Dataset.save_to_disk`` (Arrow) under
``<cache root>/data/<task>/v<GENERATOR_VERSION>-<config hash>/<split>-<n>``, where the cache
root is ``$AVL_LAB_CACHE`` or ``$XDG_CACHE_HOME/avl_lab`` (default ``~/.cache/avl_lab``) and
the config hash covers every config field and the font files. A request for ``n`` rows
reuses any cached set of the same config with at least ``n`` rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from datasets import Dataset, load_from_disk
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from PIL import Image

from avl_lab.data.cache_dir import cache_root
from avl_lab.data.render import font_signature, png_bytes
from avl_lab.data.schema import dump_meta, row_features

__all__ = [
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "SPLIT_ALIASES",
    "SPLITS",
    "Sample",
    "SynthConfig",
    "SynthTask",
    "build_split",
    "generate_row",
    "make_config",
    "register_task",
    "sample_row",
    "sample_rng",
]

log = logging.getLogger(__name__)

#: Bump whenever generated pixels or text change; part of every cache key.
GENERATOR_VERSION = "3"
SPLITS = ("train", "eval")
SPLIT_ALIASES = {"test": "eval", "validation": "eval", "val": "eval"}
DEFAULT_SIZES = {"train": 10_000, "eval": 500}


@dataclass(frozen=True)
class SynthConfig:
    """Fields shared by every synthetic task.

    Attributes
    ----------
    seed : int
        Base seed; with the split name and the sample index it seeds each sample.
    image_size : int
        Side of the square RGB image in pixels (160 gives 256 patches of 10 px; text is
        drawn on a 16 x 16 grid of cells, one character per cell, see
        :mod:`avl_lab.data.grid`).
    """

    seed: int = 0
    image_size: int = 160

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.image_size, int) or not 112 <= self.image_size <= 2048:
            raise ValueError(f"`image_size` must be an int in [112, 2048], got {self.image_size!r}")


@dataclass(frozen=True)
class Sample:
    """One generated sample before encoding."""

    image: Image.Image
    question: str
    answers: list[str]
    meta: dict[str, Any]


C = TypeVar("C", bound=SynthConfig)


@dataclass(frozen=True)
class SynthTask:
    """How to generate one synthetic task."""

    name: str
    metric: str
    config_cls: type[SynthConfig]
    make: Callable[[random.Random, Any], Sample]
    prompt: Callable[[str], str]


#: Synthetic tasks by name (filled by :func:`register_task` in each task module).
TASKS: dict[str, SynthTask] = {}


def register_task(task: SynthTask, description: str) -> SynthTask:
    """Record ``task`` in :data:`TASKS` (for :func:`sample_row`) and register its loader
    ``(split, limit, cache=True, path=None, **config_overrides) -> Dataset`` by name."""
    from avl_lab.data.registry import register

    def load(split: str, limit: int | None, cache: bool = True, path: str | None = None,
             **overrides: Any) -> Dataset:
        return build_split(task, split, limit, overrides, cache=cache, path=path)

    load.__doc__ = (f"Rows of ``{task.name}``; ``overrides`` are "
                    f":class:`{task.config_cls.__name__}` fields.")
    register(task.name, metric=task.metric, splits=SPLITS, aliases=SPLIT_ALIASES,
             kind="synthetic", description=description)(load)
    TASKS[task.name] = task
    return task


def make_config(config_cls: type[C], overrides: dict[str, Any]) -> C:
    """``config_cls(**overrides)``, with a ``ValueError`` naming unknown fields."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {config_cls.__name__}; known: {sorted(known)}"
        )
    return config_cls(**overrides)


def sample_rng(task: str, seed: int, split: str, index: int) -> random.Random:
    """The random stream of one sample (see the module docstring)."""
    return random.Random(f"{task}|{seed}|{split}|{index}")


def _config_dir(task: str, config: SynthConfig) -> Path:
    key = json.dumps(
        {"config": dataclasses.asdict(config), "fonts": font_signature()}, sort_keys=True
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_root() / "data" / task / f"v{GENERATOR_VERSION}-{digest}"


def _fields(
    task: SynthTask, config: SynthConfig, split: str, index: int
) -> tuple[Sample, dict[str, Any]]:
    s = task.make(sample_rng(task.name, config.seed, split, index), config)
    row = {
        "id": f"{task.name}-{split}-s{config.seed}-{index:06d}",
        "question": s.question,
        "prompt": task.prompt(s.question),
        "answers": list(s.answers),
        "metric": task.metric,
        "meta": dump_meta(s.meta),
    }
    return s, row


def generate_row(task: SynthTask, config: SynthConfig, split: str, index: int) -> dict[str, Any]:
    """Row ``index`` of ``split`` in the common schema (image as PNG bytes)."""
    s, row = _fields(task, config, split, index)
    return {**row, "image": {"bytes": png_bytes(s.image), "path": None}}


def sample_row(name: str, split: str, index: int, **overrides: Any) -> dict[str, Any]:
    """Row ``index`` of a synthetic split, generated on the fly with a PIL image.

    Equal to row ``index`` of :func:`avl_lab.data.load` (same seed stream), without
    encoding or caching: handy for an endless training stream, e.g.
    ``sample_row("synth-ocr", "train", step * batch + i)``.
    """
    if name not in TASKS:
        raise ValueError(f"unknown synthetic task {name!r}; known: {', '.join(TASKS)}")
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(
            f"synthetic split must be one of {SPLITS} (or {tuple(SPLIT_ALIASES)}), got {split!r}"
        )
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"`index` must be a non-negative int, got {index!r}")
    task = TASKS[name]
    s, row = _fields(task, make_config(task.config_cls, overrides), split, index)
    return {**row, "image": s.image}


def _generate(task: SynthTask, config: SynthConfig, split: str, n: int) -> Dataset:
    rows = [generate_row(task, config, split, i) for i in range(n)]
    columns = {c: [r[c] for r in rows] for c in row_features()}
    return Dataset.from_dict(columns, features=row_features())


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence datasets' progress bars for a moment (restoring the previous state)."""
    was_enabled = not are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            enable_progress_bars()


def _cached(base: Path, split: str, n: int) -> Path | None:
    """Smallest complete cached set of ``split`` with at least ``n`` rows."""
    found = []
    for d in base.glob(f"{split}-*") if base.is_dir() else []:
        size = d.name.rsplit("-", 1)[-1]
        if size.isdigit() and int(size) >= n and (d / "state.json").is_file():
            found.append((int(size), d))
    return min(found)[1] if found else None


def build_split(
    task: SynthTask,
    split: str,
    limit: int | None,
    overrides: dict[str, Any],
    cache: bool = True,
    path: str | None = None,
) -> Dataset:
    """Generate (or load from the cache) ``limit`` rows of ``split``.

    Parameters
    ----------
    task : SynthTask
        The task.
    split : {"train", "eval"}
        Canonical split.
    limit : int, optional
        Number of rows; :data:`DEFAULT_SIZES` when ``None``.
    overrides : dict
        Config fields (``seed``, ``image_size`` and task fields).
    cache : bool
        Read and write the Arrow cache; ``False`` generates in memory only.
    path : None
        Accepted for a uniform ``load`` signature; synthetic data has no local copy.
    """
    if path is not None:
        raise ValueError(f"{task.name} is generated, not read: `path` must be None, got {path!r}")
    config = make_config(task.config_cls, overrides)
    n = DEFAULT_SIZES[split] if limit is None else limit
    if not cache:
        return _generate(task, config, split, n)
    base = _config_dir(task.name, config)
    hit = _cached(base, split, n)
    if hit is not None:
        ds = load_from_disk(str(hit))
        return ds if len(ds) == n else ds.select(range(n))
    target = base / f"{split}-{n}"
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-{n}-", dir=base))
    try:
        ds = _generate(task, config, split, n)
        with _quiet_progress():
            ds.save_to_disk(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: use its copy
            log.debug("cache dir %s already exists", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated %s %s (%d rows) in %s", task.name, split, n, target)
    return load_from_disk(str(target))
