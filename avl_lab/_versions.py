"""The dependency ranges avl_lab is tested with, checked when it is imported.

The engine uses transformers internals (the attention interface, the cache API, generation's
position helpers), so a transformers outside the tested range is refused in one line instead of
failing deep inside (``ModuleNotFoundError``) or running a silently different engine.
``pyproject.toml`` declares the same range (``tests/test_versions.py`` keeps them equal);
``constraints.txt`` pins every tested version (``make lock`` refreshes it after an upgrade).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: The transformers versions the test suite ran on.
TRANSFORMERS = ">=5.25,<5.26"


def problem(installed: str | None = None) -> str | None:
    """Why the installed transformers is not supported (None when it is)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if installed is None:
        try:
            installed = version("transformers")
        except PackageNotFoundError:
            return None  # the import of transformers itself will say so
    if Version(installed) in SpecifierSet(TRANSFORMERS):
        return None
    return (f"avl_lab is tested with transformers{TRANSFORMERS}, found {installed}: "
            f"pip install 'transformers{TRANSFORMERS}' (or `make install`, which installs the "
            "tested versions from constraints.txt)")


def check() -> None:
    """``ImportError`` naming the supported range when the installed transformers is outside it."""
    why = problem()
    if why is not None:
        raise ImportError(why)
