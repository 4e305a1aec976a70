"""``alignkit fit`` and ``alignkit transform``: learn a map between two embedding spaces from files.

    alignkit fit old.npy new.npy --out adapter.safetensors          # mlp / clip from the ridge solution
    alignkit fit old.npy new.npy --out a.safetensors --method linear   # closed-form ridge, ridge by GCV
    alignkit transform adapter.safetensors old_index.npy -o migrated_index.npy

:func:`add_commands` adds both sub-commands to the ``alignkit`` parser (:mod:`alignkit.cli`). Each
command raises ``ValueError`` (one line) for every bad input; ``alignkit.cli.main`` prints it on
stderr and exits with code 2. Arguments are parsed as strings and validated here, so that a bad
number is such a one-line error too rather than argparse's usage text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_command", "run_fit"]


from alignkit.cli._common import check_out_dir, number, one_line, same_file


def run_fit(args: argparse.Namespace) -> int:
    """``alignkit fit SOURCE TARGET --out ADAPTER``: fit, save, print the report; returns 0."""
    try:
        return _fit(args)
    except (ValueError, OSError) as err:
        raise ValueError(one_line(err)) from None


def _load(path: str, key: str | None, flag: str) -> Any:
    """:func:`alignkit.io.load_embeddings`, its "choose one with key=" hint naming the CLI flag."""
    from alignkit.io import load_embeddings

    try:
        return load_embeddings(path, key=key)
    except ValueError as err:
        raise ValueError(str(err).replace("key=", f"{flag} ")) from None


def _fit(args: argparse.Namespace) -> int:
    from alignkit.adapters import METHODS, OBJECTIVES, fit_adapter

    if args.source is None or args.target is None:
        raise ValueError("needs two embedding files: alignkit fit SOURCE TARGET --out adapter.safetensors")
    if args.out is None:
        raise ValueError("--out is required: where to write the adapter (e.g. --out adapter.safetensors)")
    if args.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    if args.objective is not None and args.objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {args.objective!r}")
    out = Path(args.out)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(
            f"--out {out}: an adapter is written as .safetensors, got {out.suffix or '(none)'!r}"
        )
    check_out_dir(out, "--out")
    for name, path in (("SOURCE", args.source), ("TARGET", args.target)):
        if same_file(path, args.out):
            raise ValueError(
                f"--out {out} is the {name} file; choose another name so the input is not overwritten"
            )
    options: dict[str, Any] = {
        "test_fraction": number(args.test_fraction, "--test-fraction", float, 0.0),
        "val_fraction": number(args.val_fraction, "--val-fraction", float, 0.0),
        "seed": number(args.seed, "--seed", int, 0),
        "epochs": number(args.epochs, "--epochs", int, 1, 100_000),
        "lr": number(args.lr, "--lr", float, 0.0),
        "weight_decay": number(args.weight_decay, "--weight-decay", float, 0.0),
        "hidden_dim": number(args.hidden_dim, "--hidden-dim", int, 1, 65_536),
        "batch_size": number(args.batch_size, "--batch-size", int, 1, 1 << 30),
        "temperature": number(args.temperature, "--temperature", float, 0.0),
        "csls_k": number(args.csls, "--csls", int, 0),
        "refine_iters": number(args.refine_iters, "--refine-iters", int, 0),
    }
    for flag in ("test_fraction", "val_fraction"):
        if options[flag] >= 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be in [0, 1), got {options[flag]!r}")
    if options["lr"] is not None and options["lr"] <= 0:
        raise ValueError(f"--lr must be a number > 0, got {args.lr!r}")
    if options["temperature"] is not None and options["temperature"] <= 0:
        raise ValueError(f"--temperature must be a number > 0, got {args.temperature!r}")
    options["ridge"] = "auto" if args.ridge == "auto" else number(args.ridge, "--ridge", float, 0.0)
    if options["ridge"] is None:
        raise ValueError("--ridge must be a number ≥ 0 or 'auto'")
    if args.ridge_cv is not None:
        if options["ridge"] != "auto":
            raise ValueError(
                f"--ridge-cv chooses the ridge of --ridge auto; it has no effect with --ridge {args.ridge}"
            )
        from alignkit.adapters import _ridge_selection

        try:
            _ridge_selection(args.ridge_cv)
        except ValueError:
            raise ValueError(
                f"--ridge-cv must be gcv, kfold or kfold:K (K ≥ 2 folds), got {args.ridge_cv!r}"
            ) from None
        options["ridge_cv"] = args.ridge_cv
    if args.no_restore_mean:
        options["restore_mean"] = False
    if (args.unpaired_source is None) != (args.unpaired_target is None):
        raise ValueError("--unpaired-source and --unpaired-target go together (old-model and new-model rows)")
    source = _load(args.source, args.key_a, "--key-a")
    target = _load(args.target, args.key_b, "--key-b")
    if source.shape[0] != target.shape[0]:
        raise ValueError(
            f"SOURCE {args.source} has {source.shape[0]} rows and TARGET {args.target} has "
            f"{target.shape[0]}; "
            "fit needs the same items in the same order (row i of both files embeds item i)"
        )
    if args.unpaired_source is not None:
        options["unpaired_source"] = _load(args.unpaired_source, None, "--unpaired-source")
        options["unpaired_target"] = _load(args.unpaired_target, None, "--unpaired-target")
    kwargs = {key: value for key, value in options.items() if value is not None}
    adapter, report = fit_adapter(
        source,
        target,
        method=args.method,
        objective=args.objective,
        progress=not args.quiet,  # a bar in a terminal, else plain lines on stderr
        **kwargs,
    )
    adapter.save(out)
    if args.json:
        print(
            json.dumps(
                {"adapter": str(out), **report.to_dict()}, indent=2, allow_nan=False, ensure_ascii=False
            )
        )
    elif args.quiet:
        print(f"{report.recall_at_1_after:.4f}")
    else:
        print(f"alignkit fit: {args.source} → {args.target}")
        print(report.format_table())
        print(f"adapter written to {out}")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``fit`` to an ``argparse`` sub-parsers action (``parser.add_subparsers()``)."""
    fit = subparsers.add_parser(
        "fit",
        help="learn a map from one embedding space to another from paired rows (procrustes, linear, mlp)",
        description="Fit an adapter SOURCE → TARGET on paired rows (row i of both files embeds the same "
        "item; .npy .npz .pt .safetensors .parquet) and write it as .safetensors. The report is what a "
        "migrated index will do: target-model rows of held-out items search their mapped source rows "
        "(R@1, R@10, MRR, top-10 overlap with native search, hubness), beside keep-old / before / native "
        "references. Held-out rows are never used to choose anything; closed forms (procrustes, "
        "linear + mse) use every training pair, iterative fits take a validation split out of them. "
        "E.g. to move a vector index to a new embedding model: embed a sample with both models, fit, "
        "then `alignkit transform` the old index.",
    )
    fit.add_argument("source", nargs="?", help="source embeddings (N × d_s)")
    fit.add_argument("target", nargs="?", help="target embeddings of the same N items (N × d_t)")
    fit.add_argument(
        "--method",
        default="mlp",
        help="mlp (default: the ridge map plus a residual MLP, trained with --objective; the winner of "
        "experiments/migration.py) | linear (with mse: closed-form ridge regression) | procrustes",
    )
    fit.add_argument(
        "--objective",
        help="mse | cosine | clip | info_nce (procrustes: mse or cosine); default: the method's own "
        "(mlp: clip; linear and procrustes: mse, their closed forms)",
    )
    fit.add_argument("-o", "--out", help="adapter file to write (.safetensors)")
    fit.add_argument(
        "--test-fraction",
        default="0.2",
        help="held-out rows, only measured (default 0.2; 0: report on train)",
    )
    fit.add_argument(
        "--val-fraction",
        default="0.1",
        help="validation share of the training rows for iterative fits (default 0.1; closed forms use none)",
    )
    fit.add_argument(
        "--ridge",
        default="auto",
        help="relative ridge strength ≥ 0, or auto: chosen on the training pairs by --ridge-cv (default)",
    )
    fit.add_argument(
        "--ridge-cv",
        help="how --ridge auto chooses: gcv (default; generalised cross-validation, one SVD) | kfold | "
        "kfold:K (K-fold cross-validation on the training pairs, K = 5 by default)",
    )
    fit.add_argument("--csls", help="score the report's searches with CSLS of this k (default 0: cosine)")
    fit.add_argument(
        "--no-restore-mean",
        action="store_true",
        help="keep a cosine / contrastive fit's outputs as trained (default: re-centred on the target mean)",
    )
    fit.add_argument(
        "--unpaired-source", help="extra source rows with no pair (e.g. the old index) to refine with"
    )
    fit.add_argument("--unpaired-target", help="extra target rows with no pair (any new-model embeddings)")
    fit.add_argument("--refine-iters", help="refinement rounds with unpaired rows (default 3)")
    fit.add_argument("--epochs", help="maximum epochs of gradient training (default 100)")
    fit.add_argument("--seed", default="0", help="split / initialisation seed (default 0)")
    fit.add_argument("--lr", help="AdamW learning rate (default 1e-3)")
    fit.add_argument("--weight-decay", help="AdamW weight decay (default 1e-4)")
    fit.add_argument("--hidden-dim", help="MLP hidden width (default 2·max(d_s, d_t), 64 to 2048)")
    fit.add_argument("--batch-size", help="rows per training step (default 1024)")
    fit.add_argument("--temperature", help="clip / info_nce temperature (default 0.07)")
    for flag, old, name in (("--key-a", "--key-source", "SOURCE"), ("--key-b", "--key-target", "TARGET")):
        what = f"array / column to read from {name} when it holds several ({old} is the older name)"
        fit.add_argument(flag, old, dest=flag[2:].replace("-", "_"), help=what)
    fit.add_argument("--json", action="store_true", help="print the report as JSON")
    fit.add_argument("-q", "--quiet", action="store_true", help="print only the held-out R@1 after mapping")
    fit.set_defaults(func=run_fit)
