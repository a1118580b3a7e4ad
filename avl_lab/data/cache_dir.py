"""Where avl_lab keeps generated and converted data on this machine."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$AVL_LAB_CACHE``, else ``$XDG_CACHE_HOME/avl_lab``, else ``~/.cache/avl_lab``.

    Synthetic splits live under ``<root>/data/``; real-benchmark parquet files converted to
    memory-mapped Arrow under ``<root>/parquet/``.
    """
    env = os.environ.get("AVL_LAB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "avl_lab"
