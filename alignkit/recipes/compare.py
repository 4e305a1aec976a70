"""Run every recipe and tabulate them: objective × test-split metrics.

    from alignkit.recipes.compare import compare
    table = compare(["clip", "byol"], "runs/compare")   # runs/compare/<recipe>/, compare.{json,md,html}

Each recipe is trained by ``alignkit.recipes.run_recipe(name, out_dir, overrides)`` into
``out_dir/<recipe>/`` (a run directory of the contract); its ``metrics.json`` (or, if absent, the
dict ``run_recipe`` returned) gives one row. The table goes to ``compare.json`` (exact numbers),
``compare.md`` (the markdown table for the README) and ``compare.html``; each run's ``report.html``
is then rewritten so that it carries the comparison section.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "DEFAULT_RECIPES", "compare", "markdown_table"]

#: the recipes ``compare`` trains unless told otherwise: every retrieval recipe that trains in seconds.
#: Not ``itm`` (one seed of its default config trains for 96-149 s on the 2-core CI machine, 10-30× the
#: others' 5-17 s; README has its own table, ``bench/readme_tables.py itm``) nor ``repa`` (a generative
#: recipe: its metrics are sample quality, not the table's retrieval columns). Name them in ``recipes``.
DEFAULT_RECIPES: tuple[str, ...] = ("clip", "byol", "supcon", "joint", "binder", "disentangled")

#: (metrics.json key, column title, format) of the comparison table, in order
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("zero_shot_accuracy", "zero-shot acc", ".3f"),
    ("i2t_recall@1", "i2t R@1", ".3f"),
    ("i2t_recall@5", "i2t R@5", ".3f"),
    ("t2i_recall@1", "t2i R@1", ".3f"),
    ("median_rank", "median rank", ".1f"),
    ("cka_linear", "CKA", ".3f"),
    ("mutual_knn", "mutual kNN", ".3f"),
    ("alignment", "alignment", ".3f"),
    ("uniformity", "uniformity", ".3f"),
    ("seconds", "seconds", ".1f"),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def markdown_table(table: Mapping[str, Any]) -> str:
    """The markdown table of a comparison (``compare.json`` object): one row per recipe.

    Numbers use the column's format of :data:`COLUMNS` (3 decimals; median rank and seconds 1); a
    missing or non-finite value prints as ``—``; over several seeds a cell is ``mean ± sd``.
    """
    rows = table.get("rows")
    if not isinstance(rows, list):
        raise ValueError("table must be a compare.json object with a 'rows' list")
    formats = {key: fmt for key, _, fmt in COLUMNS}
    keys = [c["key"] for c in table.get("columns", [{"key": k} for k, _, _ in COLUMNS])]
    titles = {key: title for key, title, _ in COLUMNS}
    lines = [
        "| objective | " + " | ".join(titles.get(k, k) for k in keys) + " |",
        "|:--|" + "".join("--:|" for _ in keys),
    ]
    for row in rows:
        cells = []
        for key in keys:
            value, sd = _number(row.get(key)), _number(row.get(f"{key}_sd"))
            text = "—" if value is None else format(value, formats.get(key, ".4g"))
            if value is not None and sd is not None:
                text += " ± " + format(sd, formats.get(key, ".4g"))
            cells.append(text)
        lines.append(f"| {row.get('recipe')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _config(recipe: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The validated config of ``recipe`` (a name, or a YAML path) with ``settings`` applied."""
    from alignkit.recipes import load_config

    is_file = recipe.endswith((".yaml", ".yml"))
    items = [] if is_file else [f"recipe={recipe}"]
    items += [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    return load_config(recipe if is_file else None, items)


def _epoch_override(recipe: str, scale: float) -> dict[str, int]:
    """``{"train.epochs": max(1, round(epochs · scale))}`` from the recipe's config."""
    epochs = _config(recipe, {})["train"]["epochs"]
    return {"train.epochs": max(1, round(int(epochs) * scale))}


def _runner() -> Any:
    try:
        from alignkit.recipes import run_recipe
    except ImportError as err:
        raise ValueError(f"compare needs alignkit.recipes.run_recipe ({err})") from None
    return run_recipe


def compare(
    recipes: Sequence[str] = DEFAULT_RECIPES,
    out_dir: str | os.PathLike[str] = "runs/compare",
    overrides: Mapping[str, Any] | None = None,
    *,
    epochs_scale: float | None = None,
    reports: bool = True,
    progress: bool = True,
    seeds: int = 1,
    on_recipe: Any = None,
) -> dict[str, Any]:
    """Train each recipe into ``out_dir/<recipe>/`` and write the comparison table.

    Args:
        recipes: recipe names (or config paths; the row is named by the file's stem), unique.
        out_dir: where the runs and ``compare.{json,md,html}`` go (created).
        overrides: dotted config keys → values passed to every ``run_recipe`` call.
        epochs_scale: multiply each recipe's configured epochs by this (> 0; at least 1 epoch), e.g.
            0.2 for a quick look; the epochs come from ``alignkit.recipes.load_config``.
        reports: rewrite each run's ``report.html`` with the comparison section.
        progress: say on stderr which recipe runs (``[2/6] byol: training → runs/compare/byol``)
            and show each run's progress labelled with it (a bar in a terminal, else one line per
            epoch).
        seeds: train each recipe with this many seeds (:func:`alignkit.recipes.run.run_seeds`, into
            ``out_dir/<recipe>/seed-<s>/``); the row then holds each metric's mean over the seeds and
            ``<metric>_sd`` / ``<metric>_low`` / ``<metric>_high`` (its 95 % Student-t interval).
        on_recipe: ``on_recipe(i, name)`` called before each recipe is trained.

    Returns:
        The ``compare.json`` object: ``{"columns": [{"key", "title"}…], "rows": [{"recipe", "run_dir",
        <metric>: float | None …}…], "overrides": {…}, "epochs_scale": …}``.

    Raises:
        ValueError: empty or duplicated recipe names, bad epochs_scale, or a run that produced no
        metrics (neither ``metrics.json`` nor a returned dict).
    """
    if isinstance(recipes, str) or not isinstance(recipes, Sequence) or not recipes:
        raise ValueError(f"recipes must be a non-empty list of recipe names, got {recipes!r}")
    names = [Path(str(r)).stem if str(r).endswith((".yaml", ".yml")) else str(r) for r in recipes]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"recipes must be distinct non-empty names, got {list(recipes)}")
    if epochs_scale is not None and (
        isinstance(epochs_scale, bool)
        or not isinstance(epochs_scale, (int, float))
        or not (math.isfinite(epochs_scale) and epochs_scale > 0)
    ):
        raise ValueError(f"epochs_scale must be a finite number > 0, got {epochs_scale!r}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(
            f"overrides must be a mapping of config keys to values, got {type(overrides).__name__}"
        )
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 1000:
        raise ValueError(f"seeds must be an integer in [1, 1000], got {seeds!r}")
    from alignkit.report.html import write_comparison_page, write_report, write_text_atomic

    run_recipe = _runner()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    run_dirs: list[Path] = []
    for number, (recipe, name) in enumerate(zip(recipes, names, strict=True), start=1):
        run_dir = out / name
        settings = dict(overrides or {})
        if epochs_scale is not None:
            settings.update(_epoch_override(str(recipe), float(epochs_scale)))
        label = f"[{number}/{len(names)}] {name}: "
        if on_recipe is not None:
            on_recipe(len(rows), name)
        if progress:
            extra = f" ({seeds} seeds)" if seeds > 1 else ""
            print(f"{label}training{extra} → {run_dir}", file=sys.stderr, flush=True)
        shown: bool | str = label if progress else False
        start = time.perf_counter()
        if seeds > 1:
            from alignkit.recipes.run import run_seeds

            summary = run_seeds(_config(str(recipe), settings), run_dir, seeds, progress=shown)
            elapsed = time.perf_counter() - start
            if progress:
                print(f"{label}done in {elapsed:.1f} s", file=sys.stderr, flush=True)
            row = {"recipe": name, "run_dir": str(run_dir / f"seed-{summary['seeds'][0]}"), "seeds": seeds}
            for key, _, _ in COLUMNS:
                row[key] = _number(summary["mean"].get(key))
                for part in ("sd", "low", "high"):
                    row[f"{key}_{part}"] = _number(summary[part].get(key))
            rows.append(row)
            run_dirs.append(Path(row["run_dir"]))
            continue
        returned = run_recipe(_config(str(recipe), settings), run_dir, progress=shown)
        elapsed = time.perf_counter() - start
        if progress:
            print(f"{label}done in {elapsed:.1f} s", file=sys.stderr, flush=True)
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        elif isinstance(returned, Mapping):
            metrics = dict(returned)
        else:
            raise ValueError(f"recipe {name!r} wrote no {metrics_path} and returned no metrics dict")
        row = {"recipe": name, "run_dir": str(run_dir)}
        for key, _, _ in COLUMNS:
            row[key] = _number(metrics.get(key))
        if row["seconds"] is None:
            row["seconds"] = elapsed
        rows.append(row)
        run_dirs.append(run_dir)
    table: dict[str, Any] = {
        "columns": [{"key": key, "title": title} for key, title, _ in COLUMNS],
        "rows": rows,
        "overrides": {
            str(k): v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
            for k, v in (overrides or {}).items()
        },
        "epochs_scale": epochs_scale,
        "seeds": seeds,
    }
    write_text_atomic(out / "compare.json", json.dumps(table, indent=2, allow_nan=False) + "\n")
    markdown = markdown_table(table)
    write_text_atomic(out / "compare.md", markdown)
    if reports:
        for run_dir in run_dirs:
            if (run_dir / "metrics.json").is_file():
                write_report(run_dir)
    write_comparison_page(out, table)
    return table
