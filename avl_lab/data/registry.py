"""Registry of dataset names: one decorator per adapter, one ``load`` for all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset

__all__ = ["TaskSpec", "get", "load", "metric_for", "names", "register"]

Loader = Callable[..., Dataset]


@dataclass(frozen=True)
class TaskSpec:
    """A registered dataset.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"synth-docvqa"``.
    metric : str
        The metric of its rows (a registered metric: :func:`avl_lab.metrics.metric_names`).
    splits : tuple of str
        Canonical split names.
    aliases : dict
        Other accepted split names -> canonical name.
    kind : str
        ``"synthetic"``, ``"package"`` (bundled third-party data) or ``"benchmark"``.
    description : str
        One line for listings.
    loader : callable
        ``loader(split, limit, **kwargs) -> datasets.Dataset`` with a canonical split.
    """

    name: str
    metric: str
    splits: tuple[str, ...]
    kind: str
    description: str
    loader: Loader
    aliases: dict[str, str] = field(default_factory=dict)

    def canonical_split(self, split: str) -> str:
        """Resolve an alias; ``ValueError`` listing the valid names otherwise."""
        if split in self.splits:
            return split
        if split in self.aliases:
            return self.aliases[split]
        valid = sorted(set(self.splits) | set(self.aliases))
        raise ValueError(f"dataset {self.name!r} has no split {split!r}; valid: {', '.join(valid)}")


_REGISTRY: dict[str, TaskSpec] = {}


def register(
    name: str,
    *,
    metric: str,
    splits: tuple[str, ...],
    kind: str,
    description: str,
    aliases: dict[str, str] | None = None,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(split, limit, **kwargs)`` under ``name``."""
    from avl_lab.metrics.registry import registered

    if metric not in registered():
        raise ValueError(f"task {name!r}: `metric` must be a registered metric "
                         f"({', '.join(registered())}), got {metric!r}")

    def deco(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"task name {name!r} is already registered by "
                             f"{_REGISTRY[name].loader.__module__}")
        _REGISTRY[name] = TaskSpec(name, metric, splits, kind, description, loader, aliases or {})
        return loader

    return deco


def _installed() -> dict[str, TaskSpec]:
    """The registry, with the tasks of installed plugins (entry points) loaded."""
    from avl_lab.plugins import load_installed

    load_installed()
    return _REGISTRY


def names() -> list[str]:
    """Registered dataset names, in registration order (built-in, then plugins)."""
    return list(_installed())


def get(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; ``ValueError`` listing the names otherwise."""
    try:
        return _installed()[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(names())}") from None


def metric_for(name: str) -> str:
    """The metric name of a dataset's rows, e.g. ``metric_for("docvqa") == "anls"``."""
    return get(name).metric


def load(name: str, split: str, limit: int | None = None, **kwargs) -> Dataset:
    """Load a registered dataset split in the common row schema.

    Parameters
    ----------
    name : str
        A name from :func:`names`.
    split : str
        A split of that dataset (or an alias, e.g. ``"test"`` for a synthetic ``"eval"``).
    limit : int, optional
        Keep only the first ``limit`` rows.
    **kwargs
        Adapter options: synthetic-task config fields (``seed``, ``image_size`` ...,
        ``cache``), or ``path`` for a real benchmark's local copy.

    Returns
    -------
    datasets.Dataset
        Rows with the columns of :mod:`avl_lab.data.schema`.
    """
    spec = get(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"`limit` must be a non-negative int or None, got {limit!r}")
    return spec.loader(spec.canonical_split(split), limit, **kwargs)
