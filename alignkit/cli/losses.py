"""``alignkit losses``: list the registered losses, each with its aliases."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_command"]


def _losses(args: argparse.Namespace) -> int:
    from alignkit.losses.registry import _REGISTRY, aliases

    table = aliases()
    if args.json:
        listing = {n: {"class": _REGISTRY[n].__name__, "aliases": a} for n, a in table.items()}
        print(json.dumps(listing, indent=2))
        return 0
    width = max(len(name) for name in table)
    for name, others in table.items():
        also = f"  (aliases: {', '.join(others)})" if others else ""
        print(f"{name:{width}}  {_REGISTRY[name].__name__}{also}")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``losses`` to ``subparsers``."""
    listing = subparsers.add_parser(
        "losses",
        help="list the registered losses (name, class, aliases) for loss.name / alignkit.losses.build",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_losses)
