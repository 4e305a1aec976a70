"""``alignkit losses``: list the registered loss names."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_command"]


def _losses(args: argparse.Namespace) -> int:
    from alignkit import losses

    for name in losses.available():
        print(name)
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``losses`` to ``subparsers``."""
    listing = subparsers.add_parser("losses", help="list the registered loss names")
    listing.set_defaults(func=_losses)
