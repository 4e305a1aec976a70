"""The ``caption`` sub-command of the ``alignkit`` command line.

    alignkit caption runs/demo --fit                      # train + score every method
    alignkit caption runs/demo --fit epochs=30            # … with a decoder setting (KEY=VALUE)
    alignkit caption runs/demo                            # caption the digits test split
    alignkit caption runs/demo --images x.npy --method decap --search greedy --json

``--checkpoint RUN`` is the older spelling of the positional ``RUN`` (kept, deprecated).

Bad input raises ``ValueError`` (the ``alignkit`` entry point prints it as one line, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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


def _run_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The run directory (positional RUN, or the deprecated ``--checkpoint RUN``) and the overrides."""
    from alignkit.cli._common import overrides_of

    run, extra = args.run, []
    if args.checkpoint is not None:
        if run is not None and "=" in run:  # --checkpoint RUN key=value: the positional is an override
            extra, run = [run], None
        if run is not None and run != args.checkpoint:
            raise ValueError(f"two runs given: RUN {run} and --checkpoint {args.checkpoint}; give RUN once")
        print("alignkit caption: --checkpoint RUN is deprecated; write alignkit caption RUN", file=sys.stderr)
        run = args.checkpoint
    if run is None:
        raise ValueError("needs a run directory: alignkit caption RUN [--fit] (the -o of alignkit train)")
    if "=" in run and not Path(run).exists():
        raise ValueError(f"the first argument is the run directory, got the override {run!r}")
    args.overrides = [*extra, *(args.overrides or [])]
    return run, overrides_of(args)


def _caption(args: argparse.Namespace) -> int:
    import torch

    from alignkit.captioning import (
        MAX_BEAMS,
        caption_images,
        fit_captioners,
        load_captioner,
        load_run,
        read_images,
    )

    run_dir, overrides = _run_and_overrides(args)
    progress = not args.quiet

    if args.beam_size is not None and not 1 <= args.beam_size <= MAX_BEAMS:
        raise ValueError(f"--beam-size must be in [1, {MAX_BEAMS}] (beams), got {args.beam_size}")
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
        settings = _settings(overrides)
        metrics = fit_captioners(run_dir, _methods(args.methods), settings, progress=progress)
        print(format_table(metrics), end="")
        print(f"wrote {run_dir}/captions/metrics.json and samples.json")
        if (Path(run_dir) / "metrics.json").is_file():
            from alignkit.report.html import write_report

            print(f"wrote {write_report(run_dir)}")
        return 0
    if overrides:
        raise ValueError(
            "KEY=VALUE decoder settings only apply with --fit (they are fixed once the decoders are trained)"
        )
    method, search = args.method or "clipcap", args.search or "beam"
    images = read_images(args.images) if args.images else None
    run = load_run(run_dir)
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
        except ValueError as err:  # missing, interrupted or stale: (re)train it once, saying so
            if progress:
                print(f"alignkit caption: {err}", file=sys.stderr, flush=True)
                print(
                    f"alignkit caption: training the {method} decoder once (it is then reused); its "
                    f"scores on the whole test split go to captions/metrics.json, then the "
                    f"{len(index)} requested image(s) are captioned",
                    file=sys.stderr,
                    flush=True,
                )
            fit_captioners(run_dir, [method], progress=progress, searches=(search,))
            run = load_run(run_dir)
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
    """Add ``caption RUN [--fit | --images FILE] [KEY=VALUE …]`` to ``subparsers``."""
    from alignkit.cli._common import add_overrides
    from alignkit.names import CAPTION_METHODS, CAPTION_SEARCHES  # no torch: --help lists them


    cap = subparsers.add_parser(
        "caption",
        help="turn a run's joint embeddings into text: ClipCap, CapDec, DeCap, CoCa, iterative decoding",
        description="Caption images with decoders trained on an alignkit train run. --fit trains every "
        "method on the run's training split and scores them on its test split (digit-word and attribute "
        "accuracy, BLEU-4) into RUN/captions/metrics.json; otherwise caption --images (a .npy of (N, 8, 8) "
        "or (N, 64) values in [0, 1]) or the digits test split.",
    )
    cap.add_argument("run", nargs="?", metavar="RUN", help="the run directory (the -o of alignkit train)")
    cap.add_argument("--checkpoint", metavar="RUN", help=argparse.SUPPRESS)  # the older spelling of RUN
    cap.add_argument("--images", help="images to caption (default: the digits test split)")
    cap.add_argument(
        "--method", default=None, choices=CAPTION_METHODS, metavar="METHOD",
        help="decoder to use: %(choices)s (default clipcap)",
    )
    cap.add_argument(
        "--search", default=None, choices=CAPTION_SEARCHES, metavar="SEARCH",
        help="%(choices)s (default beam)",
    )
    cap.add_argument("--beam-size", type=int, default=None, help="beams (default: the trained setting, 3)")
    cap.add_argument("--limit", type=int, default=None, help="caption only the first N images")
    cap.add_argument("--json", action="store_true", help="print JSON instead of lines")
    cap.add_argument("--fit", action="store_true", help="train and evaluate the decoders")
    cap.add_argument("--methods", default="all", help="with --fit: comma-separated methods (default all)")
    add_overrides(cap, "with --fit: a decoder setting (alignkit.captioning.CaptionSettings), e.g. epochs=20;")
    cap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    cap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny models)")
    cap.set_defaults(func=_caption)
