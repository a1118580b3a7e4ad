"""The one plot style of the lab's figures: headless matplotlib, seaborn's whitegrid theme."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> tuple[Any, Any]:
    """``(matplotlib.pyplot, seaborn)`` with the Agg backend (no screen) and the lab's theme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    return plt, sns


def save(fig: Any, path: Path | str, dpi: int = 120) -> None:
    """Lay out, write ``path`` as PNG and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
