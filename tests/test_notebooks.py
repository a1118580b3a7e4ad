"""Every notebook runs end to end (nbclient) on a tiny random model and writes its CSV/PNG."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
OUTPUTS = {
    "fig9_vision_params": ["fig9.csv", "fig9.png"],
    "fig10_prefill_text": ["fig10.csv", "fig10.png"],
    "observations": ["sparsity.csv", "layer-ppci.png", "step-ppci.csv", "modality-attention.png"],
    "new_policy": ["pareto.csv", "methods.csv", "paired.csv", "pareto.png"],
}
SMALL_GRIDS = {"S": [20, 60], "C": [10], "K": [2], "P": [60, 100], "T": [20, 100]}


def _inject(nb, out: Path) -> None:
    """Papermill-style: a cell after the ``parameters`` cell overrides its values."""
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    src = (f'MODEL = "tiny-random-llava"\nLIMIT = 2\nMAX_NEW_TOKENS = 4\nBATCH_SIZE = 2\n'
           f'OUT = "{out}"\nGRIDS = {SMALL_GRIDS!r}\nBUDGETS = [30]\nN_TRIALS = 3\n')
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(src))


def test_notebooks_are_stored_without_outputs():
    assert {p.stem for p in NOTEBOOKS} == set(OUTPUTS)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    out = tmp_path / "out"
    _inject(nb, out)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    for name in OUTPUTS[path.stem]:
        assert (out / name).exists(), name
