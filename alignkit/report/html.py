"""The run report: ``runs/<name>/report.html``, one self-contained page (no external asset, no JS).

    from alignkit.report import write_report
    write_report("runs/demo")          # → runs/demo/report.html, plots in runs/demo/plots/*.png

The page shows the run's resolved config (``config.yaml``), the final test-split metrics
(``metrics.json``), the plots of :func:`write_plots` embedded as ``data:image/png;base64`` URIs, and
— when a ``compare.json`` (:func:`alignkit.recipes.compare.compare`) sits in the run directory or its parent —
the all-recipes comparison table. Every file is written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from alignkit.io import atomic_write
from alignkit.report.labels import METRIC_INFO, MetricInfo, chance_level, metric_rows
from alignkit.report.plots import (
    best_index,
    cka_heatmap,
    comparison_bars,
    embedding_projection,
    image_png,
    image_text_similarity,
    loss_curves,
)

__all__ = [
    "EMBEDDINGS_FILE",
    "METRICS_FILE",
    "PLOT_FILES",
    "comparison_table_html",
    "find_comparison",
    "format_metric",
    "format_number",
    "load_run_embeddings",
    "metrics_table_html",
    "retrieval_examples_html",
    "run_weights_digest",
    "write_comparison_page",
    "write_plots",
    "write_report",
    "write_text_atomic",
]

METRICS_FILE = "metrics.json"
EMBEDDINGS_FILE = "embeddings_test.safetensors"
#: plot name → (file under ``plots/``, caption)
PLOT_FILES: dict[str, tuple[str, str]] = {
    "loss_curves": (
        "loss_curves.png",
        "Training loss per optimiser step (left); validation loss and validation scores per epoch on "
        "their own axes; ★ marks the epochs that improved the monitored metric (best checkpoint saved).",
    ),
    "similarity": (
        "similarity.png",
        "Image–caption cosine similarity on a class-stratified test sample sorted by digit: a bright "
        "diagonal is instance-level alignment, bright blocks class-level alignment.",
    ),
    "projection": (
        "projection.png",
        "2-D PCA fitted on both modalities together (images ●, captions ×), coloured by digit; grey "
        "segments join a few images to their own captions.",
    ),
    "cka": ("cka.png", "Linear CKA between the raw tower outputs and the joint embeddings"),
}
_TOWER_KEYS = ("image_tower", "text_tower", "image", "text")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;
color:#1d1d1f;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}th{background:#f4f4f6}tr.current td{background:#fff7d6}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;
font-size:.9rem}.note{color:#8a5a00}code{background:#f4f4f6;padding:0 .2rem}
td.best{font-weight:700;background:#fff0c2}td.dir{text-align:center;color:#555}td.chance{color:#777}
img.digit{width:56px;height:56px;image-rendering:pixelated;border:1px solid #ccc;vertical-align:middle}
img.thumb{width:40px;height:40px;image-rendering:pixelated;border:2px solid #ccc;margin-right:.3rem}
img.thumb.hit{border-color:#1a7f37}img.thumb.near{border-color:#4a7bd0}
ol.top{margin:0;padding-left:1.4rem}li.hit{color:#1a7f37;font-weight:600}li.near{color:#2f5ea8}
li.miss{color:#777}.sim{color:#888;font-size:.8rem}.legend{color:#555;font-size:.85rem}
"""


def format_number(value: Any) -> str:
    """How the report prints a value: floats with 4 decimals (``{:.4g}`` when tiny or huge), ints as
    they are, ``None`` / non-finite as ``—``, anything else as ``str``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}"
    return str(value)


def format_metric(info: MetricInfo | None, value: Any) -> str:
    """A metric value as the tables print it: the metric's format (3 decimals; a rank as an integer
    when it is one, else 1 decimal; seconds 1 decimal; epochs an integer), ``—`` for a missing or
    non-finite value; an unknown metric falls back to :func:`format_number`."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return format_number(value)
    if not math.isfinite(value):
        return "—"
    if info is None:
        return format_number(value)
    if info.chance == "median" or info.fmt == "d":
        return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
    return format(value, info.fmt)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same directory + ``os.replace``."""
    path = Path(path)
    with atomic_write(path, "w") as out:
        out.write(text)
    return path


def _run_dir(run_dir: str | os.PathLike[str]) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"run_dir {str(run)!r} is not a directory")
    return run


def _read_metrics_json(run: Path) -> dict[str, Any]:
    path = run / METRICS_FILE
    if not path.is_file():
        raise ValueError(
            f"run_dir {str(run)!r} has no {METRICS_FILE} (the final test-split evaluation written at the "
            "end of training); is it a finished run directory?"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metric names to numbers")
    return metrics


def load_run_embeddings(run_dir: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of ``run_dir/embeddings_test.safetensors``, checked against the run contract.

    Required: ``image`` and ``text`` (N, E) floating, ``labels`` (N,) integer; optional
    ``class_text`` (C, E), ``image_tower`` (N, d_i), ``text_tower`` (N, d_t).

    Raises:
        ValueError: the file is missing or a tensor is missing / has the wrong shape.
    """
    from alignkit.io import load_safetensors

    run = _run_dir(run_dir)
    path = run / EMBEDDINGS_FILE
    if not path.exists() and not path.is_symlink():
        raise ValueError(f"run_dir {str(run)!r} has no {EMBEDDINGS_FILE}")
    tensors, _ = load_safetensors(path)
    for key in ("image", "text", "labels"):
        if key not in tensors:
            raise ValueError(f"{path}: missing tensor {key!r} (has {sorted(tensors)})")
    image, text, labels = tensors["image"], tensors["text"], tensors["labels"]
    if image.dim() != 2 or text.shape != image.shape or labels.shape != (image.shape[0],):
        raise ValueError(
            f"{path}: expected image and text (N, E) and labels (N,), got image {tuple(image.shape)}, "
            f"text {tuple(text.shape)}, labels {tuple(labels.shape)}"
        )
    for key in ("image_tower", "text_tower"):
        if key in tensors and (tensors[key].dim() != 2 or tensors[key].shape[0] != image.shape[0]):
            raise ValueError(
                f"{path}: {key} must be (N={image.shape[0]}, d), got {tuple(tensors[key].shape)}"
            )
    return tensors


def write_plots(run_dir: str | os.PathLike[str], *, samples: int = 40, dpi: int = 110) -> dict[str, Path]:
    """Draw the run's plots into ``run_dir/plots/`` (PNG, atomic) and return name → path.

    * ``loss_curves`` from ``metrics.jsonl`` (:func:`~alignkit.report.plots.loss_curves`);
    * ``similarity``, ``projection`` and ``cka`` from ``embeddings_test.safetensors``
      (:func:`~alignkit.report.plots.image_text_similarity` on ``samples`` items,
      :func:`~alignkit.report.plots.embedding_projection`,
      :func:`~alignkit.report.plots.cka_heatmap` over image_tower, text_tower, image, text).

    A plot whose input file is absent (or holds no record) is skipped, not an error; names follow
    :data:`PLOT_FILES`. Cost: O(N·E²) for the PCA and O(N·d²) per CKA pair.
    """
    from alignkit.train.trainer import read_metrics

    run = _run_dir(run_dir)
    out = run / "plots"
    out.mkdir(exist_ok=True)
    written: dict[str, Path] = {}
    log = run / "metrics.jsonl"
    if log.is_file():
        records = read_metrics(log)
        if any(r.get("type") in ("step", "epoch") for r in records):
            target = out / PLOT_FILES["loss_curves"][0]
            recipe = _run_recipe(run)
            title = f"training curves of run {run.name}" + (f" (recipe {recipe})" if recipe else "")
            loss_curves(records, path=target, title=title, dpi=dpi)
            written["loss_curves"] = target
    if (run / EMBEDDINGS_FILE).is_file():
        tensors = load_run_embeddings(run)
        image, text = tensors["image"].float(), tensors["text"].float()
        labels = tensors["labels"].long()
        target = out / PLOT_FILES["similarity"][0]
        image_text_similarity(image, text, labels, samples=samples, path=target, dpi=dpi)
        written["similarity"] = target
        target = out / PLOT_FILES["projection"][0]
        embedding_projection(image, text, labels, path=target, dpi=dpi)
        written["projection"] = target
        towers = {k: tensors[k].float() for k in _TOWER_KEYS if k in tensors}
        target = out / PLOT_FILES["cka"][0]
        cka_heatmap(towers, path=target, dpi=dpi)
        written["cka"] = target
    return written


def _run_recipe(run: Path) -> str | None:
    """The recipe named by ``run/metrics.json`` or ``run/config.yaml`` (``None`` if neither says)."""
    import yaml

    for name, parse in (("metrics.json", json.loads), ("config.yaml", yaml.safe_load)):
        try:
            data = parse((run / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(data, Mapping) and isinstance(data.get("recipe"), str):
            return data["recipe"]
    return None


def find_comparison(run_dir: str | os.PathLike[str]) -> Path | None:
    """``compare.json`` in the run directory, else in its parent (a ``compare`` output), else ``None``."""
    run = Path(run_dir)
    for candidate in (run / "compare.json", run.parent / "compare.json"):
        if candidate.is_file():
            return candidate
    return None


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(config, Mapping):
        rows: list[tuple[str, Any]] = []
        for key, value in config.items():
            rows += _flatten(value, f"{prefix}{key}.")
        return rows
    return [(prefix[:-1] or "value", config)]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], highlight: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{html.escape(format_number(v))}</td>'
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{html.escape(format_number(v))}</td>"
            for v in row
        )
        attr = ' class="current"' if r == highlight else ""
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def metrics_table_html(metrics: Mapping[str, Any], n_test: int | None, n_classes: int = 10) -> str:
    """The test-split metrics as an HTML table: label, ↑/↓, value, chance level, ``metrics.json`` key —
    in the order of :data:`alignkit.report.labels.METRICS` (recipe-specific numbers after), with the
    chance level of :func:`~alignkit.report.labels.chance_level` on ``n_test`` rows (blank where a
    metric has none or ``n_test`` is unknown)."""
    nulls = metrics.get("null") if isinstance(metrics.get("null"), Mapping) else {}
    seeds = metrics.get("n_seeds")
    values = metrics.get("mean") if seeds else metrics
    columns = ["metric", "better", f"mean ± sd over {seeds} seeds" if seeds else "value"]
    columns += ["95 % interval"] if seeds else []
    columns += [f"chance{'' if n_test is None else f' (N={n_test})'}"]
    columns += ["permutation null (p)"] if nulls else []
    head = "".join(f"<th>{h}</th>" for h in [*columns, "key"])
    body = []
    for info, value, chance in metric_rows(values, n_test, n_classes):
        known = info.key in METRIC_INFO
        shown = info if known else None
        direction = {"↑": "↑ higher", "↓": "↓ lower"}.get(info.arrow, "")
        level = "" if chance is None else html.escape(format_metric(info, chance))
        text = format_metric(shown, value)
        cells = ""
        if seeds:
            sd, low, high = (metrics.get(part, {}).get(info.key) for part in ("sd", "low", "high"))
            text += "" if sd is None else f" ± {format_metric(shown, sd)}"
            span = "" if low is None else f"[{format_metric(shown, low)}, {format_metric(shown, high)}]"
            cells = f'<td class="num">{html.escape(span)}</td>'
        cells += f'<td class="num chance">{level}</td>'
        if nulls:
            z = nulls.get(info.key)
            spread = "" if not z else f"{format_number(z['null_mean'])} ± {format_number(z['null_sd'])}"
            p_value = f" ({z['p_value']:.3f})" if z else ""
            cells += f'<td class="num chance">{html.escape(spread + p_value)}</td>'
        body.append(
            f"<tr><td>{html.escape(info.label)}</td><td class=\"dir\">{direction}</td>"
            f'<td class="num">{html.escape(text)}</td>{cells}'
            f"<td><code>{html.escape(info.key)}</code></td></tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _report_link(row: Mapping[str, Any], compare_dir: Path | None, page_dir: Path | None) -> str | None:
    """The relative href from ``page_dir`` to the row's ``report.html``, when its run directory
    (looked up beside ``compare.json`` first, then as recorded) holds a report or its inputs."""
    recorded = row.get("run_dir")
    if page_dir is None or not isinstance(recorded, str) or not recorded:
        return None
    candidates = [Path(recorded)]
    if compare_dir is not None:
        candidates.insert(0, compare_dir / Path(recorded).name)
    for run in candidates:
        if (run / "report.html").is_file() or (run / METRICS_FILE).is_file():
            return Path(os.path.relpath(run / "report.html", page_dir)).as_posix()
    return None


def _separated(rows: Sequence[Any], key: str, marked: set[int]) -> set[int]:
    """The best rows of a column, kept only where their interval (``<key>_low`` / ``<key>_high``,
    present over several seeds) overlaps no other row's: a difference inside the noise is no winner."""

    def span(row: Any) -> tuple[float, float] | None:
        if not isinstance(row, Mapping):
            return None
        low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
        ok = isinstance(low, (int, float)) and isinstance(high, (int, float))
        return (float(low), float(high)) if ok else None

    spans = [span(r) for r in rows]
    if all(sp is None for sp in spans):
        return marked
    kept: list[int] = []
    for r in marked:
        mine = spans[r]
        others = [sp for i, sp in enumerate(spans) if i != r and sp is not None]
        if mine is not None and all(mine[0] > hi or mine[1] < lo for lo, hi in others):
            kept.append(r)
    return set(kept)


def comparison_table_html(
    table: Mapping[str, Any],
    current: str | None = None,
    *,
    page_dir: str | os.PathLike[str] | None = None,
    compare_dir: str | os.PathLike[str] | None = None,
) -> str:
    """An HTML ``<table>`` of a ``compare.json`` object (``{"columns": [{"key", "title"}…], "rows": […]}``):
    one row per recipe, one column per metric (titled with ↑ / ↓), values in each metric's format
    (:func:`format_metric`: ranks as integers), the best value of each column in bold on a yellow
    ground, and the row whose recipe is ``current`` highlighted.

    With ``page_dir`` (the directory of the page that will hold the table) each recipe links to its
    run's ``report.html`` by a relative path; ``compare_dir`` is where ``compare.json`` lives (the
    run directories are looked up there first, so a moved comparison still links)."""
    columns = table.get("columns")
    rows = table.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ValueError("table must be a compare.json object with 'columns' and 'rows' lists")
    keys = [c["key"] if isinstance(c, Mapping) else str(c) for c in columns]
    titles = [c.get("title", c["key"]) if isinstance(c, Mapping) else str(c) for c in columns]
    infos = [METRIC_INFO.get(k) for k in keys]
    best = [
        best_index([r.get(k) if isinstance(r, Mapping) else None for r in rows], i.better if i else "")
        for k, i in zip(keys, infos, strict=True)
    ]
    best = [_separated(rows, key, marked) for key, marked in zip(keys, best, strict=True)]
    page = None if page_dir is None else Path(page_dir)
    where = None if compare_dir is None else Path(compare_dir)
    head = "<th>objective</th>" + "".join(
        f"<th>{html.escape(str(t))}{' ' + i.arrow if i and i.arrow else ''}</th>"
        for t, i in zip(titles, infos, strict=True)
    )
    body = []
    for r, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"table row {r} must be an object, got {type(row).__name__}")
        name = html.escape(str(row.get("recipe")))
        href = _report_link(row, where, page)
        cells = [f'<td><a href="{html.escape(href)}">{name}</a></td>' if href else f"<td>{name}</td>"]
        for c, (key, info) in enumerate(zip(keys, infos, strict=True)):
            css = "num best" if r in best[c] else "num"
            text = format_metric(info, row.get(key))
            if isinstance(row.get(f"{key}_sd"), (int, float)):
                text += " ± " + format_metric(info, row.get(f"{key}_sd"))
            cells.append(f'<td class="{css}">{html.escape(text)}</td>')
        attr = ' class="current"' if current is not None and row.get("recipe") == current else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    note = (
        '<p class="legend">↑ higher is better, ↓ lower is better; <b>bold</b> on yellow: the best value '
        "of the column (over several seeds: mean ± sd, and marked only when its 95 % interval overlaps "
        "no other row's).</p>"
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _comparison_chance(table: Mapping[str, Any], compare_dir: Path) -> dict[str, float]:
    """Chance levels for the comparison's columns from the first run's test-split size (read from its
    ``embeddings_test.safetensors`` header; empty when there is none)."""
    from safetensors import safe_open

    for row in table.get("rows", []):
        recorded = row.get("run_dir") if isinstance(row, Mapping) else None
        if not isinstance(recorded, str):
            continue
        for run in (compare_dir / Path(recorded).name, Path(recorded)):
            path = run / EMBEDDINGS_FILE
            if path.is_file():
                try:
                    with safe_open(str(path), framework="pt") as f:
                        n_test = int(f.get_slice("image").get_shape()[0])
                except Exception:  # an unreadable file only costs the chance lines
                    continue
                out = {}
                for column in table.get("columns", []):
                    key = column["key"] if isinstance(column, Mapping) else str(column)
                    level = chance_level(key, n_test)
                    if level is not None:
                        out[key] = level
                return out
    return {}


def write_comparison_page(
    out_dir: str | os.PathLike[str], table: Mapping[str, Any], *, dpi: int = 110
) -> Path:
    """Write ``out_dir/compare.html`` (and the figure ``out_dir/compare.png`` it embeds) for a
    ``compare.json`` object: the table of :func:`comparison_table_html` with each recipe linked to its
    run's report, and :func:`~alignkit.report.plots.comparison_bars` (the metrics side by side, chance
    dashed). Self-contained (the figure is a ``data:`` URI). Returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "compare.png"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>alignkit: recipes compared</title><style>{_CSS}</style></head><body>",
        "<h1>alignkit: recipes compared</h1>",
        f'<p class="sub">runs in <code>{html.escape(str(out))}</code>; each objective links to its '
        "run's report. "
        + (
            f"Test-split metrics: mean ± sd over {table['seeds']} seeds (bars: ± sd).</p>"
            if isinstance(table.get("seeds"), int) and table["seeds"] > 1
            else "Test-split metrics of one seed each.</p>"
        ),
    ]
    settings = {k: table.get(k) for k in ("overrides", "epochs_scale") if table.get(k) not in (None, {})}
    if settings:
        parts.append(f'<p class="sub">settings: <code>{html.escape(json.dumps(settings))}</code></p>')
    parts.append(comparison_table_html(table, page_dir=out, compare_dir=out))
    try:
        comparison_bars(table, chance=_comparison_chance(table, out), path=figure, dpi=dpi)
    except ValueError as err:
        parts.append(f'<p class="note">no figure: {html.escape(str(err))}</p>')
    else:
        parts += [
            "<h2>Metrics side by side</h2>",
            f'<figure><img alt="metrics side by side" src="{_data_uri(figure)}">'
            "<figcaption>One panel per metric, one bar per recipe; the best bar of each panel is "
            "yellow, the chance level dashed.</figcaption></figure>",
        ]
    parts.append("</body></html>\n")
    return write_text_atomic(out / "compare.html", "\n".join(parts))


def _distinct_label_queries(labels: Tensor, count: int, seed: int) -> list[int]:
    """Up to ``count`` row indices with distinct labels (as far as the labels allow), in a seeded
    random order."""
    import torch

    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen: list[int] = []
    seen: set[int] = set()
    for i in order:
        if int(labels[i]) not in seen:
            chosen.append(i)
            seen.add(int(labels[i]))
        if len(chosen) == count:
            return chosen
    rest = [i for i in order if i not in chosen]
    return chosen + rest[: count - len(chosen)]


def _ranked(index: Tensor, query: Tensor, own: int, k: int) -> tuple[Tensor, list[int], int]:
    """Cosine scores of ``query`` (d,) against ``index`` (n, d) rows, the top-``k`` rows (ties by
    index) and the 1-based rank of row ``own``."""
    import torch

    scores = index @ query
    order = torch.argsort(scores, descending=True, stable=True)
    return scores, order[:k].tolist(), int((order == own).nonzero()[0, 0]) + 1


def retrieval_examples_html(
    tensors: Mapping[str, Tensor],
    data_seed: int,
    *,
    queries: int = 4,
    caption_queries: int = 3,
    top: int = 5,
    seed: int = 0,
) -> str:
    """Retrieval on the test split as pictures: a few test images with their ``top`` nearest test
    captions, and a few test captions with their ``top`` nearest test images.

    The images and captions are the captioned digits of ``data_seed``
    (:func:`alignkit.data.load_digits_captions`, the recipe's ``data.seed``): row i of
    ``embeddings_test.safetensors`` is test row i. Similarity is the cosine of the joint embeddings,
    the gallery every test item (as :func:`alignkit.functional.recall_at_k` scores it). Marks: ✓ the
    query's own caption / image or one with the identical caption (what the grouped R@K counts), ≈ an
    item of the same digit, ✗ another digit;
    when the own item is not among the ``top``, its rank is given. Queries are drawn with distinct
    digits, seeded by ``seed``.

    Cost: O((queries + caption_queries)·N·E) — no N×N matrix.

    Raises:
        ValueError: the test split of ``data_seed`` does not match the embeddings (another data
            source, or a different seed): its size or its labels differ.
    """
    import torch

    from alignkit.data import load_digits_captions

    image = torch.nn.functional.normalize(tensors["image"].float(), dim=-1)
    text = torch.nn.functional.normalize(tensors["text"].float(), dim=-1)
    labels = tensors["labels"].long()
    digits = load_digits_captions(seed=int(data_seed))
    rows = [int(i) for i in digits.splits["test"]]
    expected = [int(digits.labels[i]) for i in rows]
    if len(rows) != labels.numel() or expected != labels.tolist():
        raise ValueError(
            f"the test split of data.seed={data_seed} ({len(rows)} rows) does not match the "
            f"embeddings ({labels.numel()} rows) — not the captioned digits of this seed"
        )
    captions = [digits.captions[i] for i in rows]
    pixels = [digits.images[i] for i in rows]
    n = labels.numel()
    k = min(top, n)
    thumbs: dict[int, str] = {}

    def thumb(i: int) -> str:
        if i not in thumbs:
            thumbs[i] = "data:image/png;base64," + base64.b64encode(image_png(pixels[i])).decode("ascii")
        return thumbs[i]

    def mark(query: int, hit: int) -> tuple[str, str]:
        if hit == query or captions[hit] == captions[query]:  # an identical caption is as right
            return "hit", "✓"
        return ("near", "≈") if int(labels[hit]) == int(labels[query]) else ("miss", "✗")

    parts = [
        '<p class="legend">Nearest neighbours among all '
        f"{n} test items by cosine similarity in the joint space. ✓ the query's own caption / image, "
        "or one with the identical caption (what the grouped R@K counts) · ≈ same digit · ✗ another "
        "digit.</p>",
        "<h3>Image → captions</h3>",
        "<table><thead><tr><th>test image</th><th>digit</th>"
        f"<th>top-{k} captions (cosine)</th></tr></thead><tbody>",
    ]
    for q in _distinct_label_queries(labels, min(queries, n), seed):
        scores, top, own_rank = _ranked(text, image[q], q, k)
        items = []
        for j in top:
            css, sign = mark(q, j)
            items.append(
                f'<li class="{css}">{sign} {html.escape(captions[j])} '
                f'<span class="sim">{float(scores[j]):.3f}</span></li>'
            )
        tail = "" if own_rank <= k else f'<p class="legend">own caption at rank {own_rank} of {n}</p>'
        parts.append(
            f'<tr><td><img class="digit" alt="test image {q}" src="{thumb(q)}"></td>'
            f'<td class="num">{int(labels[q])}</td><td><ol class="top">{"".join(items)}</ol>{tail}</td></tr>'
        )
    parts += [
        "</tbody></table>",
        "<h3>Caption → images</h3>",
        f"<table><thead><tr><th>test caption</th><th>digit</th><th>top-{k} images</th></tr></thead><tbody>",
    ]
    for q in _distinct_label_queries(labels, min(caption_queries, n), seed + 1):
        scores, top, own_rank = _ranked(image, text[q], q, k)
        cells = []
        for j in top:
            css, sign = mark(q, j)
            cells.append(
                f'<img class="thumb {css}" alt="{sign} test image {j}" title="{sign} cosine '
                f'{float(scores[j]):.3f}" src="{thumb(j)}">'
            )
        tail = "" if own_rank <= k else f'<p class="legend">own image at rank {own_rank} of {n}</p>'
        parts.append(
            f"<tr><td>{html.escape(captions[q])}</td><td class=\"num\">{int(labels[q])}</td>"
            f"<td>{''.join(cells)}{tail}</td></tr>"
        )
    parts += [
        "</tbody></table>",
        '<p class="legend">Image borders: green ✓ the caption\'s own image (or one with the identical '
        "caption), blue ≈ same digit, grey ✗ another digit (hover for the cosine).</p>",
    ]
    return "\n".join(parts)


_CAPTION_COLUMNS = (
    ("digit_accuracy", "digit-word accuracy"),
    ("attribute_accuracy", "attribute accuracy"),
    ("attribute_precision", "attribute precision"),
    ("bleu4", "BLEU-4"),
)


def captioning_section(run_dir: str | os.PathLike[str]) -> str | None:
    """HTML for ``RUN/captions/metrics.json`` and ``samples.json`` (``alignkit caption --fit``): the
    method × search score table and a few test captions per method; ``None`` when absent or unreadable."""
    base = Path(run_dir) / "captions"
    try:
        metrics = json.loads((base / "metrics.json").read_text(encoding="utf-8"))
        methods = metrics["methods"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    weights = run_weights_digest(run_dir)
    recorded = metrics.get("checkpoint_digest") if isinstance(metrics, Mapping) else None
    if weights is not None and recorded != weights[1]:
        why = "records no source weights" if not recorded else f"comes from weights {str(recorded)[:12]}…"
        return (
            f'<p class="note">Not shown: {html.escape(str(base / "metrics.json"))} {html.escape(why)}, '
            f"not this run's {html.escape(weights[1][:12])}… (the run was retrained since). Rerun "
            f"<code>alignkit caption {html.escape(str(run_dir))} --fit</code>.</p>"
        )
    rows = []
    for method, searches in methods.items():
        for search, scores in searches.items():
            rows.append([method, search, *(scores.get(key) for key, _ in _CAPTION_COLUMNS)])
    parts = [
        f"<p>Decoders trained on the training split, scored on {metrics.get('n_images', '?')} test "
        "images: does the caption name the right digit (word or numeral) and the right attribute words "
        "(accuracy: over all captions; precision: over those mentioning the attribute), and corpus "
        "BLEU-4 against every caption template of the image.</p>",
        _table(["method", "search", *(label for _, label in _CAPTION_COLUMNS)], rows),
    ]
    try:
        samples = json.loads((base / "samples.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        samples = {}
    if isinstance(samples, Mapping) and samples:
        sample_rows = []
        for method, items in samples.items():
            for item in list(items)[:4] if isinstance(items, list) else []:
                if isinstance(item, Mapping):
                    sample_rows.append(
                        [method, item.get("index"), item.get("caption"), item.get("reference")]
                    )
        parts += [
            "<h3>Sample test captions</h3>",
            _table(["method", "image", "caption", "reference"], sample_rows),
        ]
    return "\n".join(parts)


def _config_text(value: Any) -> str:
    """A config value as YAML would write it (``0.003``, ``true``, ``null`` → ``—``)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _config_value(config: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(config, Mapping) or key not in config:
            return None
        config = config[key]
    return config


def run_weights_digest(run_dir: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(manifest, sha256)`` of the weights a run's derived artefacts come from: ``checkpoints/
    best.json`` (else ``last.json``) and its model digest
    (:func:`alignkit.train.checkpoint.checkpoint_digest`); ``None`` when the run has no readable one."""
    from alignkit.train.checkpoint import checkpoint_digest

    for name in ("best.json", "last.json"):
        manifest = Path(run_dir) / "checkpoints" / name
        if manifest.is_file():
            try:
                return f"checkpoints/{name}", checkpoint_digest(manifest)
            except ValueError:
                return None
    return None


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    samples: int = 40,
    dpi: int = 110,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``run_dir/report.html``: config, metrics, plots and the comparison table in one page.

    The page is self-contained: inline CSS, the PNGs of :func:`write_plots` embedded as
    ``data:image/png;base64,…`` URIs, no script and no external link. ``config.yaml`` is optional
    (a note says when it is missing), as are the plot inputs (``metrics.jsonl``,
    ``embeddings_test.safetensors``); ``compare.json`` is looked up by :func:`find_comparison`.

    Args:
        run_dir: a run directory of the contract (``runs/<name>/``).
        samples: items in the similarity-matrix plot.
        dpi: resolution of the plots.
        out: where to write the page (an ``.html`` path; default ``run_dir/report.html``). Its
            links to the seed pages and the comparison are made relative to its own folder.

    Returns:
        The path of the page (written atomically).

    Raises:
        ValueError: ``run_dir`` is not a directory or has no ``metrics.json``, or ``out`` is not an
            ``.html`` path in an existing folder (the message names it).
    """
    from alignkit.io import load_yaml_bounded

    run = _run_dir(run_dir)
    page = run / "report.html" if out is None else Path(out)
    if page.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report output {str(page)!r} must end in .html")
    if not page.parent.is_dir():
        raise ValueError(f"report output {str(page)!r}: folder {str(page.parent)!r} does not exist")
    page_dir = page.parent
    metrics = _read_metrics_json(run)
    notes: list[str] = []
    config_path = run / "config.yaml"
    config: Any = None
    if config_path.is_file():
        try:
            config = load_yaml_bounded(config_path)
        except ValueError as err:
            notes.append(f"config.yaml could not be parsed: {err}")
    else:
        notes.append("config.yaml is missing")
    plots = write_plots(run, samples=samples, dpi=dpi)
    if "loss_curves" not in plots:
        notes.append("no loss curves: metrics.jsonl is missing or empty")
    if "similarity" not in plots:
        notes.append(f"no embedding plots: {EMBEDDINGS_FILE} is missing")

    recipe = metrics.get("recipe") or (config.get("recipe") if isinstance(config, Mapping) else None)
    title = f"alignkit run · {run.name}" + (f" · {recipe}" if recipe else "")
    tensors = load_run_embeddings(run) if (run / EMBEDDINGS_FILE).is_file() else None
    seed_runs = [run / f"seed-{s}" for s in metrics.get("seeds", [])] if metrics.get("n_seeds") else []
    if tensors is None and seed_runs and (seed_runs[0] / EMBEDDINGS_FILE).is_file():
        tensors = load_run_embeddings(seed_runs[0])  # the first seed's test split: its size, examples
    weights = run_weights_digest(run)
    n_test = None if tensors is None else int(tensors["image"].shape[0])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">run directory <code>{html.escape(str(run))}</code>'
        + (
            f" · weights <code>{html.escape(weights[0])}</code> sha256 <code>{weights[1][:16]}…</code>"
            if weights
            else ""
        )
        + "</p>",
        "<h2>Test-split metrics</h2>",
        metrics_table_html(metrics, n_test),
        *(
            [
                '<p class="legend">Each seed\'s own report: '
                + ", ".join(
                    f'<a href="{html.escape(_relative(r / "report.html", page_dir))}">'
                    f"{html.escape(r.name)}</a>"
                    for r in seed_runs
                )
                + ". The interval is Student-t over the seeds (the data split stays fixed).</p>"
            ]
            if seed_runs
            else []
        ),
        '<p class="legend">Chance: a random ranking / classifier on the same test split (zero-shot '
        "1/10, R@K = K/N, median rank (N+1)/2, mAP H<sub>N</sub>/N, mutual 10-NN 10/(N−1)); CKA, "
        "alignment and uniformity have no closed-form chance level.</p>",
    ]
    if tensors is not None:
        data_seed = _config_value(config, "data", "seed")
        if data_seed is None:
            notes.append("no retrieval examples: config.yaml does not give data.seed")
        else:
            try:
                examples = retrieval_examples_html(tensors, int(data_seed))
            except (ValueError, KeyError, TypeError) as err:
                notes.append(f"no retrieval examples: {err}")
            else:
                parts += ["<h2>Retrieval examples</h2>", examples]
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, path in plots.items():
            caption = PLOT_FILES[name][1]
            parts.append(
                f'<figure><img alt="{html.escape(name)}" src="{_data_uri(path)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    comparison = find_comparison(run)
    if comparison is not None:
        try:
            table = json.loads(comparison.read_text(encoding="utf-8"))
            section = comparison_table_html(
                table,
                current=str(recipe) if recipe else run.name,
                page_dir=page_dir,
                compare_dir=comparison.parent,
            )
            parts += ["<h2>All recipes compared</h2>", section]
        except (json.JSONDecodeError, ValueError, KeyError, AttributeError) as err:
            notes.append(f"{comparison} could not be read: {err}")
    captioning = captioning_section(run)
    if captioning is not None:
        parts += ["<h2>Captioning from the joint space</h2>", captioning]
    from alignkit.report.generation import generation_section

    generation = generation_section(run)
    if generation is not None:
        parts += ["<h2>Generated digits</h2>", generation]
    parts.append("<h2>Configuration</h2>")
    if config is not None:
        from alignkit.recipes.config import INPUT_KEYS

        rows = [(k, _config_text(v)) for k, v in _flatten(config) if not (k in INPUT_KEYS and v is None)]
        parts.append(_table(["key", "value"], rows))
    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f'<li class="note">{html.escape(n)}</li>' for n in notes]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return write_text_atomic(page, "\n".join(parts))


def _relative(target: Path, start: Path) -> str:
    """``target`` as a link from a page in ``start`` (POSIX separators)."""
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()
