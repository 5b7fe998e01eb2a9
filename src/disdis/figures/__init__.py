"""Figures a person reads at a glance: curves (matplotlib, Agg backend) and image grids, at least
512 px wide, labelled, written atomically."""

from disdis.figures.curves import plot_factor_shares
from disdis.figures.grids import interchange_grid, reconstructions, save_grid

__all__ = ["interchange_grid", "plot_factor_shares", "reconstructions", "save_grid"]
