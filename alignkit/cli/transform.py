"""``alignkit transform ADAPTER INPUT -o OUTPUT``: apply a fitted adapter to an embedding file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alignkit.cli._common import check_out_dir, number, one_line, same_file

__all__ = ["add_command", "run_transform"]


def run_transform(args: argparse.Namespace) -> int:
    """``alignkit transform ADAPTER INPUT -o OUTPUT``: map every row of INPUT; returns 0."""
    try:
        return _transform(args)
    except (ValueError, OSError) as err:
        raise ValueError(one_line(err)) from None


def _transform(args: argparse.Namespace) -> int:
    from alignkit.adapters import Adapter
    from alignkit.io import SAVABLE_EXTENSIONS, load_embeddings, save_embeddings

    if args.adapter is None or args.input is None:
        raise ValueError("needs an adapter and an input file: alignkit transform ADAPTER INPUT -o OUTPUT")
    if args.out is None:
        raise ValueError("-o/--out is required: where to write the mapped embeddings (e.g. -o mapped.npy)")
    out = Path(args.out)
    if out.suffix.lower() not in SAVABLE_EXTENSIONS:
        raise ValueError(
            f"-o {out}: cannot write extension {out.suffix or '(none)'!r}; "
            f"use one of {', '.join(SAVABLE_EXTENSIONS)}"
        )
    check_out_dir(out, "-o")
    if same_file(args.adapter, args.out):
        raise ValueError(
            f"-o {out} is the adapter file; choose another name so the adapter is not overwritten"
        )
    if same_file(args.input, args.out):
        raise ValueError(
            f"-o {out} is the input file {args.input} (also through links); choose another name so the "
            "input is not overwritten"
        )
    batch = number(args.batch_size, "--batch-size", int, 1)
    adapter = Adapter.load(args.adapter)
    try:
        x = load_embeddings(args.input, key=args.key)
    except ValueError as err:
        raise ValueError(str(err).replace("key=", "--key ")) from None
    if x.shape[1] != adapter.source_dim:
        raise ValueError(
            f"INPUT {args.input} has {x.shape[1]} columns (shape {tuple(x.shape)}) but the adapter "
            f"{args.adapter} maps {adapter.source_dim}-dimensional embeddings"
        )
    csls_k = number(args.csls_k, "--csls-k", int, 1)
    if csls_k is not None and args.csls is None:
        raise ValueError("--csls-k needs --csls QUERIES (the sample of queries the radii come from)")
    y = adapter.transform(x, chunk_size=batch) if batch is not None else adapter.transform(x)
    note = ""
    if args.normalize:
        import torch.nn.functional as F

        from alignkit.functional._checks import EPS

        y = F.normalize(y, dim=-1, eps=EPS)
        note = ", rows L2-normalised"
    if args.csls is not None:
        from alignkit.search import csls_index

        reference = load_embeddings(args.csls, key=args.key_csls)
        if reference.shape[1] != y.shape[1]:
            raise ValueError(
                f"--csls {args.csls} has {reference.shape[1]} columns but the mapped rows have {y.shape[1]} "
                "(it must hold target-model query embeddings)"
            )
        if reference.shape[0] < 1:
            raise ValueError(f"--csls {args.csls} holds no rows")
        k = min(csls_k or 10, reference.shape[0])
        y = csls_index(y, reference.to(y.dtype), k=k)
        note = (
            f", CSLS k={k} column appended: search by inner product with queries [q/‖q‖, 1] "
            f"({y.shape[1]} columns)"
        )
    save_embeddings(out, y)
    if not args.quiet:
        print(
            f"alignkit transform: {args.input} {tuple(x.shape)} → {out} {tuple(y.shape)} "
            f"({adapter.method} adapter, {str(y.dtype).removeprefix('torch.')}{note})"
        )
    return 0



def add_command(subparsers: Any) -> None:
    """Add ``transform`` to an ``argparse`` sub-parsers action."""
    transform = subparsers.add_parser(
        "transform",
        help="apply a fitted adapter to an embedding file",
        description="Map every row of INPUT with ADAPTER (from `alignkit fit`) and write OUTPUT "
        "(.npy .pt .safetensors, written atomically).",
    )
    transform.add_argument("adapter", nargs="?", help="adapter file (.safetensors from alignkit fit)")
    transform.add_argument("input", nargs="?", help="embeddings to map (N × d_s)")
    transform.add_argument("-o", "--out", help="output file (.npy, .pt or .safetensors)")
    transform.add_argument(
        "--key", "--key-a", dest="key", help="array / column to read from INPUT when it holds several"
    )
    transform.add_argument("--batch-size", help="rows per block (default 65536)")
    transform.add_argument("--normalize", action="store_true", help="L2-normalise the mapped rows")
    transform.add_argument(
        "--csls",
        metavar="QUERIES",
        help="target-model query sample: append the CSLS hub penalty as one extra column "
        "(search the result by inner product with queries [q/‖q‖, 1])",
    )
    transform.add_argument("--csls-k", help="CSLS neighbourhood size (default 10)")
    transform.add_argument("--key-csls", help="array / column to read from QUERIES when it holds several")
    transform.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    transform.set_defaults(func=run_transform)

