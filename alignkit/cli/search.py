"""``alignkit search QUERIES INDEX``: score a query set against an index of another size.

    alignkit search queries.npy index.npy --ids truth.npy            # R@1 / R@10 / MRR, hubness
    alignkit search queries.npy migrated.npy --overlap native.npy    # + top-10 overlap with native search
    alignkit search queries.npy index.npy --csls 10 -o neighbours.npy --json

Exact cosine (or CSLS) search in row blocks (:func:`alignkit.search.search`): memory O(block·M + N·k).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alignkit.cli._common import check_out_dir, number, one_line

__all__ = ["add_command", "run_search", "search_args"]


def search_args(**options: Any) -> argparse.Namespace:
    """The arguments ``alignkit search`` parses with no command line — every option at its default,
    taken from :func:`add_command`'s parser, so an option added there is never missing — updated by
    ``options`` (argparse destinations: ``queries``, ``index``, ``ids``, ``k``, ``key_queries``, …).
    Other commands that run a search (``measure --queries``) build their arguments here.

    Raises:
        TypeError: an option that ``search`` does not have (a programming error, not bad input).
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["search"])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"alignkit search has no option(s) {unknown}")
    for name, value in options.items():
        setattr(args, name, value)
    return args


def run_search(args: argparse.Namespace) -> int:
    """Search, print the measures (table or JSON), optionally write the neighbour indices; returns 0."""
    try:
        return _search(args)
    except (ValueError, OSError) as err:
        raise ValueError(one_line(err)) from None


def _read_ids(path: str, n: int) -> Any:
    import numpy as np
    import torch

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--ids {file}: no such file")
    if file.suffix.lower() == ".npy":
        values = np.load(file, allow_pickle=False)
    else:
        try:
            words = file.read_text(encoding="utf-8").split()
            values = np.array([int(word) for word in words], dtype=np.int64)
        except ValueError as err:
            raise ValueError(f"--ids {file}: one integer index row per query expected ({err})") from None
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ValueError(
            f"--ids {file}: must hold {n} integers (one per query), got {values.dtype} {values.shape}"
        )
    return torch.from_numpy(values.astype(np.int64))


def _search(args: argparse.Namespace) -> int:
    from alignkit.io import load_embeddings
    from alignkit.search import search

    if args.queries is None or args.index is None:
        raise ValueError("needs a query file and an index file: alignkit search QUERIES INDEX")
    k = number(args.k, "--k", int, 1)
    csls_k = number(args.csls, "--csls", int, 0) or 0
    out = None
    if args.out is not None:
        out = Path(args.out)
        if out.suffix.lower() != ".npy":
            suffix = out.suffix or "(none)"
            raise ValueError(f"-o {out}: neighbour indices are written as .npy, got {suffix!r}")
        check_out_dir(out, "-o")
    queries = load_embeddings(args.queries, key=args.key_queries)
    index = load_embeddings(args.index, key=args.key_index)
    if queries.shape[1] != index.shape[1]:
        raise ValueError(
            f"QUERIES {args.queries} has {queries.shape[1]} columns and INDEX {args.index} has "
            f"{index.shape[1]}; "
            "map one of them first (alignkit transform)"
        )
    ids = _read_ids(args.ids, queries.shape[0]) if args.ids is not None else None
    options: dict[str, Any] = {"ids": ids, "k": k, "csls_k": csls_k}
    if args.overlap is not None:
        options["overlap_index"] = load_embeddings(args.overlap)
        if args.overlap_queries is not None:
            options["overlap_queries"] = load_embeddings(args.overlap_queries)
    elif args.overlap_queries is not None:
        raise ValueError("--overlap-queries needs --overlap OTHER_INDEX")
    result = search(queries, index, **options)
    if out is not None:
        import numpy as np

        from alignkit.io import atomic_write

        with atomic_write(out) as handle:
            np.save(handle, result.indices.cpu().numpy())
    metrics = result.metrics
    if args.json:
        payload = {"queries": args.queries, "index": args.index, "k": k, "csls_k": csls_k, **metrics}
        if out is not None:
            payload["neighbours"] = str(out)
        print(json.dumps(payload, indent=2, allow_nan=False))
        return 0
    if args.quiet:
        return 0
    n, m = int(metrics["n_queries"]), int(metrics["n_index"])
    scoring = f"CSLS k={csls_k}" if csls_k else "cosine"
    print(f"alignkit search: {n} queries ({args.queries}) → {m} index rows ({args.index}), {scoring}")
    if "recall@1" not in metrics:
        print("no ground truth (pass --ids, or equal row counts for query i → row i): hubness only")
    width = max(len(key) for key in metrics) + 2
    for key, value in metrics.items():
        if key in ("n_queries", "n_index"):
            continue
        print(f"{key:{width}}{value:.4f}")
    if out is not None:
        print(f"top-{k} neighbour indices written to {out}")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``search`` to an ``argparse`` sub-parsers action."""
    cmd = subparsers.add_parser(
        "search",
        help="score a query set against an index: R@k, MRR, hubness, CSLS, top-k overlap",
        description="Exact, blocked cosine search of QUERIES (N × d) in INDEX (M × d, M may differ). With "
        "ground-truth ids (--ids, or query i ↔ row i when N = M) it reports R@1, R@10 and MRR; always "
        "the hubness of the answers (share of queries won by the most frequent top-1 row, skew of the "
        "k-occurrence); with --overlap the share of top-k neighbours shared with a search of another "
        "index of the same items (e.g. natively re-embedded vs migrated).",
    )
    cmd.add_argument("queries", nargs="?", help="query embeddings (N × d)")
    cmd.add_argument("index", nargs="?", help="index embeddings (M × d)")
    cmd.add_argument(
        "--ids", help="right index row of each query: .npy of N integers or a text file, one per line"
    )
    cmd.add_argument("--k", default="10", help="neighbours per query (default 10)")
    cmd.add_argument("--csls", help="rank by CSLS with this neighbourhood size (default 0: cosine)")
    cmd.add_argument(
        "--overlap", metavar="OTHER_INDEX", help="another index of the same M items, same row order"
    )
    cmd.add_argument(
        "--overlap-queries", help="queries for OTHER_INDEX when its width differs (default QUERIES)"
    )
    cmd.add_argument("-o", "--out", help="write the (N, k) neighbour indices as .npy")
    cmd.add_argument(
        "--key-a", "--key-queries", dest="key_queries", help="array / column to read from QUERIES (file A)"
    )
    cmd.add_argument(
        "--key-b", "--key-index", dest="key_index", help="array / column to read from INDEX (file B)"
    )
    cmd.add_argument("--json", action="store_true", help="print the measures as JSON")
    cmd.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    cmd.set_defaults(func=run_search)
