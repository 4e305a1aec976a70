"""``alignkit demo``: the clip recipe on the captioned digits into ``runs/demo`` (about a minute on two
CPU cores; the first run on a machine also embeds the 1,797 captions with MiniLM once)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.cli._common import add_output_flags, add_overrides, overrides_of
from alignkit.cli.train import run_and_report

__all__ = ["add_command", "demo_command"]


def add_command(subparsers: Any) -> None:
    """Add ``demo`` to ``subparsers``."""
    demo = subparsers.add_parser(
        "demo",
        help="a one-minute run: the clip recipe on the captioned digits into runs/demo",
        description="Align an image tower trained from scratch with the frozen MiniLM text tower (LiT, "
        "CLIP loss) on scikit-learn's digits, evaluate zero-shot accuracy and instance-level "
        "retrieval on the test split, and write runs/demo/ with its report.",
    )
    demo.add_argument("-o", "--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--no-report", action="store_true", help="do not write report.html")
    add_overrides(demo)
    add_output_flags(demo)
    demo.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    """``alignkit demo``: the clip recipe (its defaults plus any overrides) into ``--out``."""
    from alignkit.recipes import load_config

    overrides: Sequence[str] = overrides_of(args)
    config = load_config(None, ["recipe=clip", *overrides])
    if config["recipe"] != "clip":
        raise ValueError(f"the demo runs the clip recipe; use alignkit train for recipe={config['recipe']!r}")
    quiet, as_json = getattr(args, "quiet", False), getattr(args, "json", False)
    return run_and_report(config, Path(args.out), False, not args.no_report, "alignkit demo", quiet, as_json)
