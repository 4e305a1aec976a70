"""The ``alignkit train`` and ``alignkit demo`` commands.

    alignkit train --config configs/clip.yaml [-o DIR] [--resume] [--quiet | --json] [KEY=VALUE ...]
    alignkit demo [-o runs/demo] [KEY=VALUE ...]

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
import contextlib
import json
import math
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alignkit.cli._common import add_output_flags, add_overrides, number, overrides_of

__all__ = [
    "add_command",
    "check_run_dir",
    "format_results",
    "prepare_run_dir",
    "run_and_report",
    "train_command",
]

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
    train.add_argument("-o", "--out", help="run directory (default runs/<recipe>)")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/last.json if it exists"
    )
    train.add_argument("--no-report", action="store_true", help="do not write report.html")
    train.add_argument(
        "--seeds",
        default="1",
        help="train N seeds (seed, seed+1, …) into OUT/seed-<s>/ and write the mean, sd and 95 %% "
        "interval of every metric to OUT/metrics.json (default 1)",
    )
    add_overrides(train)
    add_output_flags(train)
    train.set_defaults(func=train_command)


def check_run_dir(out: str | Path) -> Path:
    """``out`` as a Path after checking it is missing, empty, or an earlier run directory (reads only)."""
    from alignkit.io import LOCK_NAME

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a directory")
    if (
        path.is_dir()
        and any(p.name != LOCK_NAME for p in path.iterdir())
        and not any((path / m).exists() for m in _RUN_MARKERS)
    ):
        raise ValueError(
            f"--out {path} is a non-empty directory that is not an alignkit run directory (no config.yaml); "
            "choose another path"
        )
    return path


def prepare_run_dir(out: str | Path, resume: bool) -> Path:
    """Check that ``out`` may be used as a run directory and clear a previous run's results.

    ``out`` may be missing, empty, or an earlier run directory (it holds ``config.yaml``,
    ``metrics.jsonl`` or ``checkpoints/``). Anything else — a file, or a non-empty folder of other
    things — raises ``ValueError`` rather than being overwritten. Without ``resume``, an earlier
    run's ``metrics.json``, ``embeddings_test.safetensors``, ``report.html`` and ``plots/`` are
    removed (the Trainer resets ``metrics.jsonl`` and the checkpoints itself).
    """
    path = check_run_dir(out)
    if not resume and path.is_dir():
        for name in _RUN_ARTEFACTS:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    return path


def format_results(metrics: Mapping[str, Any], n_test: int, n_classes: int = 10) -> str:
    """A plain-text table of the test metrics: label, ↑/↓ (higher / lower is better), value and the
    chance level where one exists — labels, order and chance levels from
    :mod:`alignkit.report.labels` (the report shows the same) — and the permutation null (mean ± sd,
    p-value) where the run measured one, then any recipe-specific numbers."""
    from alignkit.report.html import format_metric
    from alignkit.report.labels import METRIC_INFO, metric_rows

    nulls = metrics.get("null") if isinstance(metrics.get("null"), Mapping) else {}
    header = f"{'test split (' + str(n_test) + ' rows)':50}{'value':>10}{'chance':>10}"
    lines = [header + ("   permutation null (p)" if nulls else "")]
    for info, value, chance in metric_rows(metrics, n_test, n_classes):
        if info.key in ("epochs", "seconds"):
            continue  # in the title line
        known = info.key in METRIC_INFO
        text = "n/a" if value is None else format_metric(info if known else None, value)
        ref = "" if chance is None else format_metric(info, chance)
        label = f"{info.label} {info.arrow}".rstrip()
        null = nulls.get(info.key)
        tail = f"   {null['null_mean']:.3f} ± {null['null_sd']:.3f} ({null['p_value']:.3f})" if null else ""
        lines.append(f"{label:50}{text:>10}{ref:>10}{tail}")
    return "\n".join(lines)


def _write_report(run_dir: Path, quiet: bool = False) -> None:
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
    print(f"report: {path}", file=sys.stderr if quiet else sys.stdout)


def run_and_report(
    config: Mapping[str, Any],
    out: Path,
    resume: bool,
    report: bool,
    title: str,
    quiet: bool = False,
    as_json: bool = False,
) -> int:
    """Train ``config`` into ``out`` holding its lock (:func:`alignkit.io.directory_lock`: a second
    writer is refused naming the holder's pid); ``resume`` first checks the requested config against
    the run's (:func:`alignkit.recipes.run.check_resume`, before anything is written) and says where it
    resumes. Prints the results table (or, with ``as_json``, only the metrics as JSON on stdout) and
    writes the report. Progress goes to stderr: a bar in a terminal, else one line per stage and
    epoch; ``quiet`` silences it."""
    from alignkit.io import directory_lock
    from alignkit.recipes import run_recipe
    from alignkit.recipes.data import load_recipe_data
    from alignkit.recipes.run import check_resume
    from alignkit.train import cleanup, dist_info

    info = dist_info()
    show = info.is_main and not quiet
    lock = contextlib.nullcontext()
    if info.is_main:
        check_run_dir(out)  # before the lock file goes into a folder that is not ours
        lock = directory_lock(out)
    with lock:
        if info.is_main:
            if resume:
                _say_resume(title, out, config, check_resume(config, out))
            prepare_run_dir(out, resume)
        if show:
            world = f" on {info.world_size} processes (DDP)" if info.distributed else ""
            epochs = config["train"]["epochs"]
            line = f"{title}: training recipe {config['recipe']} for {epochs} epochs{world} → {out}"
            print(line, file=sys.stderr, flush=True)
        data = load_recipe_data(config, progress=show)
        try:
            metrics = run_recipe(config, out, resume=resume, data=data, progress=show)
        finally:
            if info.distributed:
                cleanup()
    if not info.is_main:
        return 0
    if as_json:
        from alignkit.io import json_safe

        print(json.dumps(json_safe(metrics), indent=2, allow_nan=False))
    else:
        world = f", {info.world_size} processes" if info.distributed else ""
        print(
            f"{title}: recipe {metrics['recipe']}, {metrics['epochs']} epochs{world}, "
            f"{metrics['seconds']:.1f} s → {out}"
        )
        classes = 10 if data.class_names is None else len(data.class_names)
        print(format_results(metrics, n_test=len(data.splits["test"]), n_classes=classes))
    if report:
        _write_report(out, quiet=quiet or as_json)
    return 0


def _say_resume(title: str, out: Path, config: Mapping[str, Any], where: Mapping[str, int] | None) -> None:
    if where is None:
        print(f"{title}: --resume: {out} holds no checkpoint yet; starting fresh", file=sys.stderr)
        return
    epochs = config["train"]["epochs"]
    if where["epoch"] >= epochs:
        line = f"{title}: resumed {out}: all {epochs} epochs were done (step {where['step']}); evaluating"
        print(line, file=sys.stderr)
        return
    inside = f", batch {where['batch_in_epoch']}" if where["batch_in_epoch"] else ""
    line = f"{title}: resumed {out} from epoch {where['epoch'] + 1} of {epochs}{inside}, step {where['step']}"
    print(line, file=sys.stderr)


def train_command(args: argparse.Namespace) -> int:
    """``alignkit train``: load ``--config`` (or ``OUT/config.yaml`` when resuming without one, or
    the clip defaults) with the overrides, train, evaluate, report."""
    from alignkit.recipes import load_config

    config_path = args.config
    if config_path is None and args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        config_path = Path(args.out) / "config.yaml"
    config = load_config(config_path, overrides_of(args))
    out = Path(args.out) if args.out else Path("runs") / config["recipe"]
    seeds = number(getattr(args, "seeds", "1"), "--seeds", int, 1, 1000)
    if seeds > 1:
        report = not args.no_report
        return run_seeds_and_report(config, out, seeds, args.resume, report, args.quiet, args.json)
    return run_and_report(
        config, out, args.resume, not args.no_report, "alignkit train", args.quiet, args.json
    )




def format_seeds(summary: Mapping[str, Any]) -> str:
    """A plain-text table of every metric's mean ± sd and its 95 % interval over the seeds."""
    lines = [f"{str(summary['n_seeds']) + ' seeds':36}{'mean':>9}{'± sd':>8}   95 % interval"]
    for key, mean in summary["mean"].items():
        if key in ("epochs", "seeds"):
            continue
        sd, low, high = summary["sd"].get(key), summary["low"].get(key), summary["high"].get(key)
        spread = f"{sd:8.3f}   [{low:.3f}, {high:.3f}]" if sd is not None and math.isfinite(sd) else ""
        lines.append(f"{key:36}{mean:9.3f}{spread}")
    return "\n".join(lines)


def run_seeds_and_report(
    config: Mapping[str, Any],
    out: Path,
    seeds: int,
    resume: bool,
    report: bool,
    quiet: bool = False,
    as_json: bool = False,
) -> int:
    """Train ``seeds`` seeds of ``config`` into ``out/seed-<s>/`` holding ``out``'s lock, print the
    summary table, write each seed's report; ``out/metrics.json`` holds the mean / sd / interval of
    every metric."""
    from alignkit.io import directory_lock
    from alignkit.recipes.run import run_seeds

    check_run_dir(out)
    with directory_lock(out):  # one writer per run directory (its seed-<s>/ runs included)
        prepare_run_dir(out, resume)

        def said(i: int, seed: int, metrics: Mapping[str, Any]) -> None:
            r1 = metrics.get("i2t_recall@1")
            text = f", i2t R@1 {r1:.3f}" if isinstance(r1, float) else ""
            if not quiet:
                line = f"[{i + 1}/{seeds}] seed {seed}: {metrics.get('seconds', 0.0):.1f} s{text}"
                print(line, file=sys.stderr, flush=True)
            if report:
                _write_report(out / f"seed-{seed}", quiet=quiet or as_json)

        summary = run_seeds(config, out, seeds, resume=resume, on_run=said, progress=not quiet)
    if as_json:
        from alignkit.io import json_safe

        print(json.dumps(json_safe(summary), indent=2, allow_nan=False))
        return 0
    print(f"alignkit train: recipe {summary['recipe']}, {seeds} seeds → {out}/metrics.json")
    print(format_seeds(summary))
    return 0
