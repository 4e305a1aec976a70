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
    config,
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

__all__ = ["COMMANDS", "GRAMMAR", "main", "parse_args"]

#: One module per command, in the order ``alignkit --help`` lists them.
COMMANDS = (demo, train, compare, report, caption, config, measure, fit, transform, embed, search, losses)

#: The grammar every command follows (``alignkit --help`` prints it; README repeats it).
GRAMMAR = """\
grammar (every command):
  alignkit COMMAND [RUN | FILES…] [options] [KEY=VALUE …]
  RUN first      a command that reads a run directory takes it as its first argument:
                 alignkit report RUN, alignkit caption RUN
  -o/--out       names what the command writes (a run directory, a file, a folder)
  KEY=VALUE      config overrides are positional: alignkit train train.epochs=5 model.embed_dim=64
                 (--set KEY=VALUE is the same); list the keys with alignkit config keys RECIPE
  --key-a/--key-b  the array / column to read from file A / B when it holds several
  --quiet        no progress; otherwise a bar in a terminal, one line per stage / epoch elsewhere
  --json         only JSON on stdout (progress stays on stderr)
  errors         one line on stderr, exit code 2 (ALIGNKIT_DEBUG=1 shows tracebacks)
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="alignkit",
        description="Representation alignment for PyTorch.",
        epilog=GRAMMAR,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_command(sub)
    return parser


def _unknown(argv: list[str], unknown: list[str]) -> str:
    """The one-line error for unrecognised options, with a config-key hint for each ``--foo N``."""
    from alignkit.cli._common import config_hint

    hints = []
    for item in unknown:
        if not item.startswith("--"):
            continue
        flag, sep, value = item.partition("=")
        if not sep:
            at = argv.index(item) if item in argv else -1
            following = argv[at + 1] if 0 <= at < len(argv) - 1 else None
            value = following if following is not None and not following.startswith("-") else None
        hint = config_hint(flag, value if sep or value is not None else None)
        if hint:
            hints.append(f"{flag}: {hint}")
    shown = " ".join(unknown)
    return f"unrecognized arguments: {shown}" + ("; " + "; ".join(hints) if hints else "")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` with the one grammar: ``KEY=VALUE`` items may stand anywhere after the command
    (argparse alone takes positionals only in their first run), so any left over join
    ``args.overrides`` of a command that takes overrides. Returns ``(args, still unknown)``."""
    args, unknown = _parser().parse_known_args(list(argv))
    if hasattr(args, "overrides"):
        extra = [u for u in unknown if not u.startswith("-") and "=" in u]
        args.overrides = [*(args.overrides or []), *extra]
        unknown = [u for u in unknown if u not in extra]
    return args, unknown


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parse_args(argv)
    if unknown:
        command = getattr(args, "command", None)
        print(f"alignkit {command}: error: {_unknown(argv, unknown)} (see --help)", file=sys.stderr)
        return 2
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
