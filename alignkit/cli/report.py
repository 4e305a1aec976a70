"""``alignkit report RUN``: draw a run's plots and write one self-contained ``RUN/report.html``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_command"]


def _report(args: argparse.Namespace) -> int:
    import json

    from alignkit.cli._common import check_out_dir, number
    from alignkit.report.html import write_report

    samples = number(str(args.samples), "--samples", int, 2, 10_000)
    dpi = number(str(args.dpi), "--dpi", int, 20, 600)
    if args.out is not None:
        check_out_dir(Path(args.out), "-o")
    path = write_report(args.run_dir, samples=samples, dpi=dpi, out=args.out)
    if args.json:
        print(json.dumps({"report": str(path)}))
    elif not args.quiet:
        print(f"wrote {path}")
    return 0


def add_command(subparsers: Any) -> None:
    from alignkit.cli._common import add_output_flags

    """Add ``report RUN`` to ``subparsers`` (what ``ArgumentParser.add_subparsers()`` returned)."""

    report = subparsers.add_parser(
        "report",
        help="write RUN/report.html (plots, metrics, config, comparison) from a finished run",
        description="Draw the run's plots into RUN/plots/ and write one self-contained "
        "page, RUN/report.html or -o PATH (needs RUN/metrics.json).",
    )
    report.add_argument("run_dir", metavar="RUN", help="a run directory, e.g. runs/demo")
    report.add_argument("-o", "--out", help="the page to write (an .html path; default RUN/report.html)")
    report.add_argument("--samples", default=40, help="items in the similarity matrix (default 40)")
    report.add_argument("--dpi", default=110, help="resolution of the plots (default 110)")
    add_output_flags(report)
    report.set_defaults(func=_report)
