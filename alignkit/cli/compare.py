"""``alignkit compare``: train every recipe and write one objective × metrics table.

    alignkit compare --recipes clip,byol -o runs/compare --epochs-scale 0.5 train.batch_size=64
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from alignkit.cli._common import add_output_flags, add_overrides, number, overrides_of, parse_overrides

__all__ = ["add_command"]


def _compare(args: argparse.Namespace) -> int:
    from alignkit.recipes.compare import compare, markdown_table

    recipes = [r.strip() for r in str(args.recipes).split(",") if r.strip()]
    if not recipes:
        raise ValueError(f"--recipes must name at least one recipe, got {args.recipes!r}")
    seeds = number(args.seeds, "--seeds", int, 1, 1000)

    table = compare(
        recipes,
        args.out,
        parse_overrides(overrides_of(args)),
        epochs_scale=args.epochs_scale,
        reports=True,
        progress=not args.quiet,
        seeds=seeds,
    )
    if args.json:
        print(json.dumps(table, indent=2, allow_nan=False))
        return 0
    print(markdown_table(table), end="")
    print(f"wrote {args.out}/compare.json, compare.md, compare.html and each run's report.html")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``compare [--recipes …] [-o OUT] [--epochs-scale …] [KEY=VALUE …]`` to ``subparsers``."""
    from alignkit.recipes.compare import DEFAULT_RECIPES

    comp = subparsers.add_parser(
        "compare",
        help="train every recipe and write one objective × metrics table",
        description="Train each recipe into OUT/<recipe>/ and write OUT/compare.json, compare.md "
        "(markdown table) and compare.html; each run's report.html gets the table. KEY=VALUE "
        "overrides apply to every recipe. Progress: one line per recipe and per epoch on stderr.",
    )
    comp.add_argument(
        "--recipes",
        default=",".join(DEFAULT_RECIPES),
        help=f"comma-separated recipe names (default {','.join(DEFAULT_RECIPES)}; itm is left out for "
        "its run time, 96-149 s a seed against 5-17 s, and repa as a generative recipe: name them here)",
    )
    comp.add_argument("-o", "--out", default="runs/compare", help="output directory (default runs/compare)")
    comp.add_argument(
        "--epochs-scale", type=float, default=None, help="multiply every recipe's epochs (e.g. 0.25)"
    )
    comp.add_argument(
        "--seeds", default="1", help="seeds per recipe: cells become mean ± sd (default 1)"
    )
    add_overrides(comp, "config override passed to every recipe")
    add_output_flags(comp)
    comp.set_defaults(func=_compare)
