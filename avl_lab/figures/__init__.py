"""The paper's Figure 9 / Figure 10 parameter studies: ``python -m avl_lab.figures fig9``."""

from avl_lab.figures.run import plot_figure, run_figure, run_points
from avl_lab.figures.specs import FIGURES, Grids, Point, fig9, fig10

__all__ = ["FIGURES", "Grids", "Point", "fig9", "fig10", "plot_figure", "run_figure", "run_points"]
