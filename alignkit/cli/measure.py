"""``alignkit measure A B``: how aligned two embedding files are, or ``--layers`` for MiniLM's layers."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_command"]


def _measure(args: argparse.Namespace) -> int:
    from alignkit.measure import run_command

    if args.queries is not None or args.index is not None:
        return _index_search(args)
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
        permutations=args.permutations,
        seed=args.seed,
    )


def _index_search(args: argparse.Namespace) -> int:
    """``measure --queries Q --index I``: retrieval of a query set in an index of another size, the
    same as ``alignkit search Q I`` (R@k, MRR, hubness; ``--ids`` gives each query's true row)."""
    from alignkit.cli.search import run_search, search_args

    if args.a is not None or args.b is not None or args.layers:
        raise ValueError("--queries / --index search an index; they take no A B files and no --layers")
    if args.queries is None or args.index is None:
        raise ValueError("--queries and --index go together: measure --queries Q.npy --index I.npy")
    search = search_args(  # search's own defaults for every option measure does not have
        queries=args.queries,
        index=args.index,
        ids=args.ids,
        k=args.k,
        key_queries=args.key_a,
        key_index=args.key_b,
        json=args.json,
    )
    return run_search(search)


def add_command(subparsers: Any) -> None:
    """Add ``measure`` to ``subparsers``."""
    measure = subparsers.add_parser(
        "measure",
        help="how aligned two embedding files are (CKA, mutual kNN, SVCCA, …), or MiniLM's layers",
        description="Compare two (N, d) embedding files row by row (.npy .npz .pt .safetensors .parquet; "
        "d may differ, N must match), or with --layers draw the layer×layer CKA heatmap of MiniLM.",
    )
    measure.add_argument("a", nargs="?", help="embedding file A (N × d_a)")
    measure.add_argument("b", nargs="?", help="embedding file B (N × d_b)")
    measure.add_argument("--queries", help="with --index: search a query set in an index of another size")
    measure.add_argument("--index", help="the index file searched by --queries (M × d)")
    measure.add_argument("--ids", help="with --queries: each query's true index row (.npy / .txt)")
    measure.add_argument("--metrics", help="comma-separated metric names (default: cka,unbiased_cka,…)")
    measure.add_argument("--k", default="10", help="neighbours for mutual_knn and cknna (default 10)")
    measure.add_argument("--json", action="store_true", help="print JSON instead of a table")
    measure.add_argument("--key-a", help="array / column to read from A when it holds several")
    measure.add_argument("--key-b", help="array / column to read from B when it holds several")
    measure.add_argument("--layers", action="store_true", help="layer×layer CKA of MiniLM on digit captions")
    measure.add_argument("-o", "--out", help="heatmap PNG for --layers (default layer_cka.png)")
    measure.add_argument("--samples", default="300", help="captions for --layers (default 300)")
    measure.add_argument(
        "--permutations",
        help="K shuffles of B's rows for the permutation null and p-value printed beside every value "
        "(default 100 when N·(d_a + d_b) ≤ 131072, e.g. 1000 × (64 + 64), none above; 0 turns it off)",
    )
    measure.add_argument("--seed", default="0", help="seed of the permutations (default 0)")
    measure.set_defaults(func=_measure)
