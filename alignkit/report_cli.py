"""The ``report`` and ``compare`` sub-commands of the ``alignkit`` command line.

    alignkit report runs/demo                              # → runs/demo/report.html
    alignkit compare --recipes clip,byol --out runs/compare --epochs-scale 0.5

:func:`add_commands` adds both to an ``argparse`` sub-parser set; each sets ``func(args) -> int``.
Bad input raises ``ValueError`` (the ``alignkit`` entry point prints it as one line, exit code 2).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

__all__ = ["add_commands", "parse_overrides"]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=3", "lr=1e-3", "name=x"]`` → ``{"a.b": 3, "lr": 0.001, "name": "x"}``.

    Values are parsed as YAML scalars (``true``, ``null``, ``[1, 2]`` …); a string that Python reads
    as a float (``1e-3``, which YAML 1.1 leaves a string) becomes that float."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and value.strip():
            with contextlib.suppress(ValueError):
                value = float(value)
        out[key.strip()] = value
    return out


def _report(args: argparse.Namespace) -> int:
    from alignkit.report.html import write_report

    path = write_report(args.run_dir, samples=args.samples, dpi=args.dpi)
    print(f"wrote {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from alignkit.compare import compare, markdown_table

    recipes = [r.strip() for r in str(args.recipes).split(",") if r.strip()]
    if not recipes:
        raise ValueError(f"--recipes must name at least one recipe, got {args.recipes!r}")
    table = compare(
        recipes, args.out, parse_overrides(args.overrides), epochs_scale=args.epochs_scale, reports=True
    )
    print(markdown_table(table), end="")
    print(f"wrote {args.out}/compare.json, compare.md, compare.html and each run's report.html")
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``report RUN_DIR`` and ``compare [--recipes …] [--out …] [--epochs-scale …] [--set K=V …]``
    to ``subparsers`` (what ``ArgumentParser.add_subparsers()`` returned)."""
    from alignkit.compare import DEFAULT_RECIPES

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

    comp = subparsers.add_parser(
        "compare",
        help="train every recipe and write one objective × metrics table",
        description="Train each recipe into OUT/<recipe>/ and write OUT/compare.json, compare.md "
        "(markdown table) and compare.html; each run's report.html gets the table.",
    )
    comp.add_argument(
        "--recipes",
        default=",".join(DEFAULT_RECIPES),
        help=f"comma-separated recipe names (default {','.join(DEFAULT_RECIPES)})",
    )
    comp.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    comp.add_argument(
        "--epochs-scale", type=float, default=None, help="multiply every recipe's epochs (e.g. 0.25)"
    )
    comp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to every recipe (repeatable)",
    )
    comp.set_defaults(func=_compare)
