"""The paper's Figure 9 / Figure 10 parameter studies and Table 2/3 (run by ``python -m avl_lab figures``)."""

from avl_lab.experiments.figures.run import plot_figure, run_figure, run_points
from avl_lab.experiments.figures.specs import FIGURES, Grids, Point, fig9, fig10

__all__ = ["FIGURES", "Grids", "Point", "fig9", "fig10", "plot_figure", "run_figure", "run_points"]
