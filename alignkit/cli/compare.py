"""``alignkit compare``: train every recipe and write one objective × metrics table.

    alignkit compare --recipes clip,byol --out runs/compare --epochs-scale 0.5
"""

from __future__ import annotations

import argparse
from typing import Any

from alignkit.cli._common import parse_overrides

__all__ = ["add_command"]


def _compare(args: argparse.Namespace) -> int:
    from alignkit.recipes.compare import compare, markdown_table

    recipes = [r.strip() for r in str(args.recipes).split(",") if r.strip()]
    if not recipes:
        raise ValueError(f"--recipes must name at least one recipe, got {args.recipes!r}")
    table = compare(
        recipes, args.out, parse_overrides(args.overrides), epochs_scale=args.epochs_scale, reports=True
    )
    print(markdown_table(table), end="")
    print(f"wrote {args.out}/compare.json, compare.md, compare.html and each run's report.html")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``compare [--recipes …] [--out …] [--epochs-scale …] [--set K=V …]`` to ``subparsers``."""
    from alignkit.recipes.compare import DEFAULT_RECIPES

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
