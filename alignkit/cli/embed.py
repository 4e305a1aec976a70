"""``alignkit embed TEXTS -o X.npy --model PATH_OR_NAME``: embed a file of texts with a local model.

    alignkit embed corpus.txt -o corpus.npy                                  # packaged MiniLM
    alignkit embed docs.jsonl --column body -o docs.npy --model /models/e5 --prefix "passage: " --normalize

See :mod:`alignkit.embed`: text (one item per line), JSONL, CSV / TSV or Parquet; a sentence-transformers
directory, the packaged all-MiniLM-L6-v2 or a Hugging Face directory (mean / cls pooling); batched,
cached per chunk, streamed into the ``.npy``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alignkit.cli._common import check_out_dir, number, one_line, same_file

__all__ = ["add_command", "run_embed"]


def run_embed(args: argparse.Namespace) -> int:
    """Embed TEXTS into OUT; returns 0."""
    try:
        return _embed(args)
    except (ValueError, OSError) as err:
        raise ValueError(one_line(err)) from None


def _embed(args: argparse.Namespace) -> int:
    import time

    from alignkit.embed import embed_file

    if args.texts is None:
        raise ValueError("needs a text file: alignkit embed TEXTS -o X.npy --model PATH_OR_NAME")
    if args.out is None:
        raise ValueError("-o/--out is required: the .npy to write (e.g. -o vectors.npy)")
    out = Path(args.out)
    if out.suffix.lower() != ".npy":
        raise ValueError(f"-o {out}: embeddings are written as .npy, got {out.suffix or '(none)'!r}")
    check_out_dir(out, "-o")
    if same_file(args.texts, args.out):
        raise ValueError(f"-o {out} is the TEXTS file; choose another name so the input is not overwritten")
    options: dict[str, Any] = {
        "batch_size": number(args.batch_size, "--batch-size", int, 1),
        "max_length": number(args.max_length, "--max-length", int, 1),
    }
    kwargs = {key: value for key, value in options.items() if value is not None}
    start = time.perf_counter()
    n, d = embed_file(
        args.texts,
        out,
        args.model,
        column=args.column,
        prefix=args.prefix,
        pooling=args.pooling,
        normalize=args.normalize,
        cache=not args.no_cache,
        device=args.device,
        progress=not args.quiet,  # a bar in a terminal, else a few lines; stderr, so --json stays clean
        **kwargs,
    )
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"texts": args.texts, "out": str(out), "model": args.model, "rows": n, "dim": d,
                          "seconds": seconds}))  # fmt: skip
    elif not args.quiet:
        print(
            f"alignkit embed: {n} items of {args.texts} → {out} ({n}, {d}) with {args.model}, {seconds:.1f} s"
        )
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``embed`` to an ``argparse`` sub-parsers action."""
    cmd = subparsers.add_parser(
        "embed",
        help="embed a file of texts with a local model (sentence-transformers, MiniLM, Hugging Face)",
        description="Embed every item of TEXTS (.txt: one per line; .jsonl / .csv / .tsv / .parquet: "
        "--column, default 'text') with a local model and write an (N, d) float32 .npy, streamed chunk "
        "by chunk and cached per chunk (a rerun or an interrupted run reuses what was computed). "
        "Nothing is downloaded.",
    )
    cmd.add_argument("texts", nargs="?", help="the texts (.txt .jsonl .csv .tsv .parquet)")
    cmd.add_argument("-o", "--out", help="output .npy")
    cmd.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="all-MiniLM-L6-v2 (default, packaged), a sentence-transformers directory or a Hugging Face "
        "model directory",
    )
    cmd.add_argument("--column", help="field / column holding the text (default 'text')")
    cmd.add_argument("--prefix", default="", help="prepended to every item, e.g. 'query: ' or 'passage: '")
    cmd.add_argument("--pooling", help="mean (default) | cls, for a plain Hugging Face directory")
    cmd.add_argument("--max-length", help="truncate items to this many tokens (default: the model's)")
    cmd.add_argument("--normalize", action="store_true", help="L2-normalise the rows")
    cmd.add_argument("--batch-size", help="items per forward pass (default 64)")
    cmd.add_argument("--device", default="cpu", help="torch device (default cpu)")
    cmd.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    cmd.add_argument("--json", action="store_true", help="print a JSON summary")
    cmd.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    cmd.set_defaults(func=run_embed)
