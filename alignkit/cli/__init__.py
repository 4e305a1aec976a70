"""The ``alignkit`` command line.

Every command turns bad input (``ValueError``, missing files) into one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from alignkit.cli import (
    caption,
    compare,
    demo,
    embed,
    fit,
    losses,
    measure,
    report,
    search,
    train,
    transform,
)

__all__ = ["COMMANDS", "main"]

#: One module per command, in the order ``alignkit --help`` lists them.
COMMANDS = (demo, train, compare, report, measure, fit, transform, embed, search, caption, losses)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="alignkit", description="Representation alignment for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"alignkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alignkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: one line unless ALIGNKIT_DEBUG=1 asks for the traceback
        if os.environ.get("ALIGNKIT_DEBUG") == "1":
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"alignkit {args.command}: internal error: {type(err).__name__}: {first} "
            "(set ALIGNKIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
