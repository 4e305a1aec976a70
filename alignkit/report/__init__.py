"""Figures and reports: plots (matplotlib, Agg canvas) and the self-contained ``report.html``.

from alignkit.report import write_report
write_report("runs/demo")     # plots in runs/demo/plots/, page in runs/demo/report.html
"""

from alignkit.report import html, plots
from alignkit.report.html import *  # noqa: F403
from alignkit.report.plots import *  # noqa: F403

__all__ = [*plots.__all__, *html.__all__]
