"""Figures and reports: :func:`similarity_heatmap` (matplotlib, Agg canvas)."""

from alignkit.report import plots
from alignkit.report.plots import *  # noqa: F403

__all__ = [*plots.__all__]
