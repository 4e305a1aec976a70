"""The ``caption`` sub-command of the ``alignkit`` command line.

    alignkit caption --checkpoint runs/demo --fit                      # train + score every method
    alignkit caption --checkpoint runs/demo                            # caption the digits test split
    alignkit caption --checkpoint runs/demo --images x.npy --method decap --search greedy --json

Bad input raises ``ValueError`` (the ``alignkit`` entry point prints it as one line, exit code 2).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_command", "format_table"]

_COLUMNS = (
    ("digit_accuracy", "digit acc"),
    ("attribute_accuracy", "attribute acc"),
    ("attribute_precision", "attribute precision"),
    ("bleu4", "BLEU-4"),
    ("mean_length", "words"),
)


def format_table(metrics: dict[str, Any]) -> str:
    """The markdown table of ``RUN/captions/metrics.json``: one row per method and search."""
    lines = [
        "| method | search | " + " | ".join(label for _, label in _COLUMNS) + " |",
        "|---|---|" + "---:|" * len(_COLUMNS),
    ]
    for method, searches in metrics.get("methods", {}).items():
        for search, scores in searches.items():
            cells = []
            for key, _ in _COLUMNS:
                value = scores.get(key)
                cells.append("—" if value is None or value != value else f"{value:.3f}")
            lines.append(f"| {method} | {search} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _methods(text: str) -> list[str]:
    from alignkit.captioning import METHODS

    if text == "all":
        return list(METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)} or all")
    if not methods:
        raise ValueError("--methods must name at least one method")
    return methods


def _settings(overrides: list[str]) -> Any:
    from alignkit.captioning import CaptionSettings
    from alignkit.cli._common import parse_overrides

    values = parse_overrides(overrides)
    return CaptionSettings.from_dict(values) if values else None


def _caption(args: argparse.Namespace) -> int:
    import torch

    from alignkit.captioning import caption_images, fit_captioners, load_captioner, load_run, read_images

    if args.beam_size is not None and args.beam_size < 1:
        raise ValueError(f"--beam-size must be ≥ 1, got {args.beam_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be ≥ 1, got {args.limit}")
    torch.set_num_threads(max(1, args.threads))
    if args.fit:
        extra = [
            flag
            for flag, value in (
                ("--images", args.images),
                ("--method", args.method),
                ("--search", args.search),
                ("--beam-size", args.beam_size),
                ("--limit", args.limit),
                ("--json", args.json or None),
            )
            if value is not None
        ]
        if extra:
            raise ValueError(
                f"--fit trains and scores on the digits splits; {', '.join(extra)} "
                "only apply when captioning (run without --fit)"
            )
        settings = _settings(args.overrides)
        metrics = fit_captioners(args.checkpoint, _methods(args.methods), settings, progress=True)
        print(format_table(metrics), end="")
        print(f"wrote {args.checkpoint}/captions/metrics.json and samples.json")
        from pathlib import Path

        if (Path(args.checkpoint) / "metrics.json").is_file():
            from alignkit.report.html import write_report

            print(f"wrote {write_report(args.checkpoint)}")
        return 0
    if args.overrides:
        raise ValueError("--set only applies with --fit (settings are fixed once the decoders are trained)")
    method, search = args.method or "clipcap", args.search or "beam"
    images = read_images(args.images) if args.images else None
    run = load_run(args.checkpoint)
    references: list[str] | None = None
    if images is None:
        test = run.digits.splits["test"]
        images = run.data.images[torch.as_tensor(test)]
        references = [run.digits.captions[int(i)] for i in test]
        index = [int(i) for i in test]
    else:
        index = list(range(images.shape[0]))
    if args.limit is not None:
        images, index = images[: args.limit], index[: args.limit]
        references = None if references is None else references[: args.limit]
    if method != "iterative-memory":
        try:
            load_captioner(run, method)
        except ValueError:  # not trained yet (or interrupted): train it once, it says so on stderr
            fit_captioners(args.checkpoint, [method], progress=True, searches=(search,))
    captions = caption_images(run, images, method, search, args.beam_size)
    rows = [{"index": i, "caption": c} for i, c in zip(index, captions, strict=True)]
    if references is not None:
        for row, ref in zip(rows, references, strict=True):
            row["reference"] = ref
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            extra = f"\t(reference: {row['reference']})" if "reference" in row else ""
            print(f"{row['index']}\t{row['caption']}{extra}")
    return 0


def add_command(subparsers: Any) -> None:
    """Add ``caption --checkpoint RUN [--fit | --images FILE] …`` to ``subparsers``."""
    from alignkit.captioning import METHODS
    from alignkit.models.captioning import SEARCHES

    cap = subparsers.add_parser(
        "caption",
        help="turn a run's joint embeddings into text: ClipCap, CapDec, DeCap, CoCa, iterative decoding",
        description="Caption images with decoders trained on an alignkit train run. --fit trains every "
        "method on the run's training split and scores them on its test split (digit-word and attribute "
        "accuracy, BLEU-4) into RUN/captions/metrics.json; otherwise caption --images (a .npy of (N, 8, 8) "
        "or (N, 64) values in [0, 1]) or the digits test split.",
    )
    cap.add_argument("--checkpoint", required=True, metavar="RUN", help="the run directory of alignkit train")
    cap.add_argument("--images", help="images to caption (default: the digits test split)")
    cap.add_argument("--method", default=None, choices=METHODS, help="decoder to use (default clipcap)")
    cap.add_argument("--search", default=None, choices=SEARCHES, help="greedy or beam (default beam)")
    cap.add_argument("--beam-size", type=int, default=None, help="beams (default: the trained setting, 3)")
    cap.add_argument("--limit", type=int, default=None, help="caption only the first N images")
    cap.add_argument("--json", action="store_true", help="print JSON instead of lines")
    cap.add_argument("--fit", action="store_true", help="train and evaluate the decoders")
    cap.add_argument("--methods", default="all", help="with --fit: comma-separated methods (default all)")
    cap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --fit: a decoder setting, e.g. epochs=20 (see alignkit.captioning.CaptionSettings)",
    )
    cap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny models)")
    cap.set_defaults(func=_caption)
