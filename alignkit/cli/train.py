"""The ``alignkit train`` and ``alignkit demo`` commands.

    alignkit train --config configs/clip.yaml [--out DIR] [--resume] [key=value ...]
    alignkit demo [--out runs/demo]

``train`` runs one recipe (:mod:`alignkit.recipes`) into a run directory — ``config.yaml``,
``metrics.jsonl``, ``checkpoints/``, ``metrics.json``, ``embeddings_test.safetensors`` and, when
:mod:`alignkit.report` provides ``write_report``, ``report.html`` with ``plots/`` — and prints a
results table. ``demo`` is the clip recipe into ``runs/demo``: about a minute on two CPU cores (the
first run on a machine also embeds the 1,797 captions with MiniLM once, then they are cached).

Bad input (an unknown config key, a bad value, a directory that is not a run directory) raises
``ValueError``, which ``alignkit.cli.main`` prints as one line with exit code 2. Under
``torchrun --nproc_per_node=N -m alignkit train ...`` the Trainer runs DDP; only rank 0 writes and
prints.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_command", "format_results", "prepare_run_dir", "run_and_report", "train_command"]

#: Files and folders a fresh (non-resumed) run replaces in an existing run directory.
_RUN_ARTEFACTS = ("metrics.json", "embeddings_test.safetensors", "report.html", "plots")
#: What marks a directory as an alignkit run directory.
_RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")


def add_command(subparsers: Any) -> None:
    """Add the ``train`` and ``demo`` sub-commands (each with ``set_defaults(func=...)``) to an
    ``argparse`` sub-parsers object."""
    train = subparsers.add_parser(
        "train",
        help="train and evaluate an alignment recipe (clip, byol, supcon, joint, binder, disentangled)",
        description="Train a recipe on the captioned digits, evaluate it on the test split and write a "
        "run directory (config.yaml, metrics.jsonl, checkpoints/, metrics.json, "
        "embeddings_test.safetensors, report.html). Override any config key with key=value, "
        "e.g. train.epochs=3 model.embed_dim=64.",
    )
    train.add_argument("--config", help="YAML config (default: the clip recipe's defaults)")
    train.add_argument("--out", help="run directory (default runs/<recipe>)")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/last.json if it exists"
    )
    train.add_argument("--no-report", action="store_true", help="do not write report.html")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.set_defaults(func=train_command)


def prepare_run_dir(out: str | Path, resume: bool) -> Path:
    """Check that ``out`` may be used as a run directory and clear a previous run's results.

    ``out`` may be missing, empty, or an earlier run directory (it holds ``config.yaml``,
    ``metrics.jsonl`` or ``checkpoints/``). Anything else — a file, or a non-empty folder of other
    things — raises ``ValueError`` rather than being overwritten. Without ``resume``, an earlier
    run's ``metrics.json``, ``embeddings_test.safetensors``, ``report.html`` and ``plots/`` are
    removed (the Trainer resets ``metrics.jsonl`` and the checkpoints itself).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in _RUN_MARKERS):
        raise ValueError(
            f"--out {path} is a non-empty directory that is not an alignkit run directory (no config.yaml); "
            "choose another path"
        )
    if not resume and path.is_dir():
        for name in _RUN_ARTEFACTS:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    return path


_ROWS = (
    ("zero_shot_accuracy", "zero-shot accuracy", "classes"),
    ("i2t_recall@1", "image→text R@1", "rows"),
    ("i2t_recall@5", "image→text R@5", "rows5"),
    ("i2t_recall@10", "image→text R@10", "rows10"),
    ("t2i_recall@1", "text→image R@1", "rows"),
    ("t2i_recall@5", "text→image R@5", "rows5"),
    ("t2i_recall@10", "text→image R@10", "rows10"),
    ("median_rank", "median rank (i2t)", "median"),
    ("cka_linear", "linear CKA (joint)", None),
    ("cka_towers", "linear CKA (towers)", None),
    ("mutual_knn", "mutual 10-NN", "knn"),
    ("alignment", "alignment (↓)", None),
    ("uniformity", "uniformity (↓)", None),
)


def format_results(metrics: Mapping[str, Any], n_test: int, n_classes: int = 10) -> str:
    """A plain-text table of the test metrics with the chance level of each where it has one
    (zero-shot 1/C, R@K = K/N, median rank (N+1)/2, mutual k-NN k/(N−1)), then any
    recipe-specific numbers."""
    chance = {
        "classes": 1 / n_classes,
        "rows": 1 / n_test,
        "rows5": min(1.0, 5 / n_test),
        "rows10": min(1.0, 10 / n_test),
        "median": (n_test + 1) / 2,
        "knn": 10 / max(1, n_test - 1),
    }
    lines = [f"{'test split (' + str(n_test) + ' rows)':28}{'value':>10}{'chance':>10}"]
    shown = {"recipe", "epochs", "seconds"}
    for key, label, kind in _ROWS:
        if key not in metrics:
            continue
        shown.add(key)
        value = metrics[key]
        text = "n/a" if value is None else f"{value:.3f}"
        ref = "" if kind is None else f"{chance[kind]:.3f}"
        lines.append(f"{label:28}{text:>10}{ref:>10}")
    for key, value in metrics.items():
        if key not in shown and isinstance(value, (int, float)):
            lines.append(f"{key:28}{value:>10.3f}")
    return "\n".join(lines)


def _write_report(run_dir: Path) -> None:
    try:
        from alignkit.report import write_report  # provided by the report module
    except ImportError as err:
        print(
            f"report: not written — alignkit.report.write_report is not available ({err}); "
            f"the numbers are in {run_dir / 'metrics.json'}",
            file=sys.stderr,
        )
        return
    try:
        path = write_report(run_dir)
    except Exception as err:  # the run itself succeeded: say so, and why the report did not
        print(f"report: could not be written: {type(err).__name__}: {err}", file=sys.stderr)
        return
    print(f"report: {path}")


def run_and_report(config: Mapping[str, Any], out: Path, resume: bool, report: bool, title: str) -> int:
    from alignkit.recipes import run_recipe
    from alignkit.recipes.data import load_recipe_data
    from alignkit.train import cleanup, dist_info

    info = dist_info()
    if info.is_main:
        prepare_run_dir(out, resume)
    data = load_recipe_data(config, progress=info.is_main)
    try:
        metrics = run_recipe(config, out, resume=resume, data=data)
    finally:
        if info.distributed:
            cleanup()
    if not info.is_main:
        return 0
    print(
        f"{title}: recipe {metrics['recipe']}, {metrics['epochs']} epochs, {metrics['seconds']:.1f} s → {out}"
    )
    classes = 10 if data.class_names is None else len(data.class_names)
    print(format_results(metrics, n_test=len(data.splits["test"]), n_classes=classes))
    if report:
        _write_report(out)
    return 0


def train_command(args: argparse.Namespace) -> int:
    """``alignkit train``: load ``--config`` (or ``OUT/config.yaml`` when resuming without one, or
    the clip defaults) with the overrides, train, evaluate, report."""
    from alignkit.recipes import load_config

    config_path = args.config
    if config_path is None and args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        config_path = Path(args.out) / "config.yaml"
    config = load_config(config_path, list(args.overrides))
    out = Path(args.out) if args.out else Path("runs") / config["recipe"]
    return run_and_report(config, out, args.resume, not args.no_report, "alignkit train")
