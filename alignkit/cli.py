"""The ``alignkit`` command line.

Every command turns bad input (``ValueError``, missing files) into one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from alignkit import fit_cli, report_cli

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    """Align two views of scikit-learn's digits with the CLIP loss and report retrieval.

    View A is the 8×8 image; view B is a different "sensor": the image's row and column ink
    profiles (16 numbers), with noise. Two small towers are trained from scratch so that an image
    retrieves its own profile among all test profiles (instance-level, chance = 1/N).
    """
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from tqdm import tqdm

    from alignkit import losses

    if args.epochs < 1 or args.batch_size < 2:
        raise ValueError(
            f"--epochs must be ≥ 1 and --batch-size ≥ 2, got {args.epochs} and {args.batch_size}"
        )
    torch.manual_seed(args.seed)
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    noise = torch.Generator().manual_seed(args.seed)
    profiles = torch.cat([images.sum(1), images.sum(2)], dim=1) / 8.0
    profiles = profiles + 0.02 * torch.randn(profiles.shape, generator=noise)
    order = torch.randperm(len(images), generator=noise)
    test, train = order[:360], order[360:]
    view_a, view_b = images.flatten(1), profiles

    def tower(d_in: int) -> nn.Module:
        return nn.Sequential(nn.Linear(d_in, 128), nn.GELU(), nn.Linear(128, 64))

    tower_a, tower_b = tower(64), tower(16)
    criterion = losses.build("clip", init_temperature=0.1)
    params = [*tower_a.parameters(), *tower_b.parameters(), *criterion.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)

    @torch.no_grad()
    def top1(rows: torch.Tensor) -> float:
        a = nn.functional.normalize(tower_a(view_a[rows]), dim=-1)
        b = nn.functional.normalize(tower_b(view_b[rows]), dim=-1)
        return float(((a @ b.T).argmax(1) == torch.arange(len(rows))).float().mean())

    before = top1(test)
    start = time.perf_counter()
    progress = tqdm(range(args.epochs), desc="demo", disable=not sys.stderr.isatty())
    for _ in progress:
        for batch in torch.randperm(len(train)).split(args.batch_size):
            rows = train[batch]
            loss = criterion(tower_a(view_a[rows]), tower_b(view_b[rows]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    after = top1(test)
    print(
        f"alignkit demo: digits image ↔ ink profile, CLIP loss, {args.epochs} epochs "
        f"in {time.perf_counter() - start:.1f} s"
    )
    print(f"{'':24}{'before':>10}{'after':>10}{'chance':>10}")
    print(f"{'test image→profile R@1':24}{before:>10.3f}{after:>10.3f}{1 / len(test):>10.3f}")
    print(f"{'final train loss':24}{'':>10}{loss.item():>10.3f}")
    print(f"{'learned temperature':24}{0.1:>10.3f}{1 / criterion.logit_scale.item():>10.3f}")
    return 0


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
    demo = sub.add_parser("demo", help="a one-minute alignment run on scikit-learn's digits")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--batch-size", type=int, default=256)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
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
