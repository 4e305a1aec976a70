"""``alignkit report RUN``: draw a run's plots and write one self-contained ``RUN/report.html``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_command"]


def _report(args: argparse.Namespace) -> int:
    from alignkit.report.html import write_report

    path = write_report(args.run_dir, samples=args.samples, dpi=args.dpi)
    print(f"wrote {path}")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``report RUN_DIR`` to ``subparsers`` (what ``ArgumentParser.add_subparsers()`` returned)."""

    report = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report.html (plots, metrics, config, comparison) from a finished run",
        description="Draw the run's plots into RUN_DIR/plots/ and write one self-contained "
        "RUN_DIR/report.html (needs RUN_DIR/metrics.json).",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/demo")
    report.add_argument("--samples", type=int, default=40, help="items in the similarity matrix (default 40)")
    report.add_argument("--dpi", type=int, default=110, help="resolution of the plots (default 110)")
    report.set_defaults(func=_report)
