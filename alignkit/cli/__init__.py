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
    except ValueError as err:  # bad input: one line, the whole reason
        print(f"alignkit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment: permissions, a full disk, a symlink loop, a missing path
        where = _os_error(err, getattr(args, "out", None))
        print(f"alignkit {args.command}: error: {where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alignkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: one line unless ALIGNKIT_DEBUG=1 asks for the traceback
        if os.environ.get("ALIGNKIT_DEBUG") == "1":
            raise
        print(
            f"alignkit {args.command}: internal error: {type(err).__name__}: {_one_line(err)} "
            "(set ALIGNKIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(err: BaseException, limit: int = 2000) -> str:
    """The whole message on one line (a state-dict mismatch keeps its reason), cut only when very long."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _os_error(err: OSError, out: object = None) -> str:
    """``PATH: reason`` for an OSError (``PATH → OTHER`` for a rename); without a path in the error
    (a failed ``write``), the command's output path."""
    reason = err.strerror or _one_line(err) or type(err).__name__
    if err.filename is None:
        return f"{out}: {reason}" if out else reason
    where = str(err.filename) + (f" → {err.filename2}" if err.filename2 is not None else "")
    return f"{where}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
