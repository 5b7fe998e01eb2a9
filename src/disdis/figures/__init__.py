"""Figures a person reads at a glance: curves and labelled grids (matplotlib, Agg backend), at least
512 px wide, written atomically; every figure of a run by name (:mod:`.run_figures`)."""

from disdis.figures.curves import plot_factor_shares, plot_training_curves
from disdis.figures.grids import save_grid
from disdis.figures.run_figures import FIGURES, interchange_grid, make_figures

__all__ = ["FIGURES", "interchange_grid", "make_figures", "plot_factor_shares", "plot_training_curves", "save_grid"]
