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

from alignkit import caption_cli, fit_cli, report_cli, train_cli

__all__ = ["main"]


def _losses(args: argparse.Namespace) -> int:
    from alignkit import losses

    for name in losses.available():
        print(name)
    return 0


def _measure(args: argparse.Namespace) -> int:
    from alignkit.measure import run_command

    return run_command(
        args.a,
        args.b,
        metrics=args.metrics,
        k=args.k,
        as_json=args.json,
        key_a=args.key_a,
        key_b=args.key_b,
        layers=args.layers,
        out=args.out,
        samples=args.samples,
    )


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="alignkit", description="Representation alignment for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cli.add_commands(sub)
    listing = sub.add_parser("losses", help="list the registered loss names")
    listing.set_defaults(func=_losses)
    measure = sub.add_parser(
        "measure",
        help="how aligned two embedding files are (CKA, mutual kNN, SVCCA, …), or MiniLM's layers",
        description="Compare two (N, d) embedding files row by row (.npy .npz .pt .safetensors .parquet; "
        "d may differ, N must match), or with --layers draw the layer×layer CKA heatmap of MiniLM.",
    )
    measure.add_argument("a", nargs="?", help="embedding file A (N × d_a)")
    measure.add_argument("b", nargs="?", help="embedding file B (N × d_b)")
    measure.add_argument("--metrics", help="comma-separated metric names (default: cka,unbiased_cka,…)")
    measure.add_argument("--k", default="10", help="neighbours for mutual_knn and cknna (default 10)")
    measure.add_argument("--json", action="store_true", help="print JSON instead of a table")
    measure.add_argument("--key-a", help="array / column to read from A when it holds several")
    measure.add_argument("--key-b", help="array / column to read from B when it holds several")
    measure.add_argument("--layers", action="store_true", help="layer×layer CKA of MiniLM on digit captions")
    measure.add_argument("--out", help="heatmap PNG for --layers (default layer_cka.png)")
    measure.add_argument("--samples", default="300", help="captions for --layers (default 300)")
    measure.set_defaults(func=_measure)
    fit_cli.add_commands(sub)
    report_cli.add_commands(sub)
    caption_cli.add_commands(sub)
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
