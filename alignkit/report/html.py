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
from alignkit.recipes.evaluate import METRIC_KEYS
from alignkit.report.plots import cka_heatmap, embedding_projection, image_text_similarity, loss_curves

__all__ = [
    "EMBEDDINGS_FILE",
    "METRICS_FILE",
    "PLOT_FILES",
    "comparison_table_html",
    "find_comparison",
    "format_number",
    "load_run_embeddings",
    "write_plots",
    "write_report",
    "write_text_atomic",
]

METRICS_FILE = "metrics.json"
EMBEDDINGS_FILE = "embeddings_test.safetensors"
#: plot name → (file under ``plots/``, caption)
PLOT_FILES: dict[str, tuple[str, str]] = {
    "loss_curves": ("loss_curves.png", "Training loss per step and evaluation metrics per epoch"),
    "similarity": ("similarity.png", "Image–text cosine similarity on a digit-sorted test sample"),
    "projection": ("projection.png", "2-D PCA of both modalities (images ○, captions ×), coloured by digit"),
    "cka": ("cka.png", "Linear CKA between the raw tower outputs and the joint embeddings"),
}
_TOWER_KEYS = ("image_tower", "text_tower", "image", "text")
_METRIC_ORDER = ("recipe", *METRIC_KEYS, "epochs", "seconds")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1100px;
color:#1d1d1f;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}th{background:#f4f4f6}tr.current td{background:#fff7d6}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;
font-size:.9rem}.note{color:#8a5a00}code{background:#f4f4f6;padding:0 .2rem}
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
    from safetensors.torch import load_file

    run = _run_dir(run_dir)
    path = run / EMBEDDINGS_FILE
    if not path.is_file():
        raise ValueError(f"run_dir {str(run)!r} has no {EMBEDDINGS_FILE}")
    tensors = load_file(str(path))
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
            loss_curves(records, path=target, title=run.name, dpi=dpi)
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


def comparison_table_html(table: Mapping[str, Any], current: str | None = None) -> str:
    """An HTML ``<table>`` of a ``compare.json`` object (``{"columns": [{"key", "title"}…], "rows": […]}``):
    one row per recipe, one column per metric; the row whose recipe is ``current`` is highlighted."""
    columns = table.get("columns")
    rows = table.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise ValueError("table must be a compare.json object with 'columns' and 'rows' lists")
    keys = [c["key"] if isinstance(c, Mapping) else str(c) for c in columns]
    titles = [c.get("title", c["key"]) if isinstance(c, Mapping) else str(c) for c in columns]
    highlight = next((i for i, r in enumerate(rows) if r.get("recipe") == current), None)
    return _table(
        ["objective", *titles], [[r.get("recipe"), *(r.get(k) for k in keys)] for r in rows], highlight
    )


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


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_report(run_dir: str | os.PathLike[str], *, samples: int = 40, dpi: int = 110) -> Path:
    """Write ``run_dir/report.html``: config, metrics, plots and the comparison table in one page.

    The page is self-contained: inline CSS, the PNGs of :func:`write_plots` embedded as
    ``data:image/png;base64,…`` URIs, no script and no external link. ``config.yaml`` is optional
    (a note says when it is missing), as are the plot inputs (``metrics.jsonl``,
    ``embeddings_test.safetensors``); ``compare.json`` is looked up by :func:`find_comparison`.

    Args:
        run_dir: a run directory of the contract (``runs/<name>/``).
        samples: items in the similarity-matrix plot.
        dpi: resolution of the plots.

    Returns:
        The path of ``report.html`` (written atomically).

    Raises:
        ValueError: ``run_dir`` is not a directory or has no ``metrics.json`` (the message names it).
    """
    import yaml

    run = _run_dir(run_dir)
    metrics = _read_metrics_json(run)
    notes: list[str] = []
    config_path = run / "config.yaml"
    config: Any = None
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
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
    ordered = [k for k in _METRIC_ORDER if k in metrics] + sorted(
        k for k in metrics if k not in _METRIC_ORDER
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">run directory <code>{html.escape(str(run))}</code></p>',
        "<h2>Test-split metrics</h2>",
        _table(["metric", "value"], [[k, metrics[k]] for k in ordered]),
    ]
    comparison = find_comparison(run)
    if comparison is not None:
        try:
            table = json.loads(comparison.read_text(encoding="utf-8"))
            section = comparison_table_html(table, current=str(recipe) if recipe else run.name)
            parts += ["<h2>All recipes compared</h2>", section]
        except (json.JSONDecodeError, ValueError, KeyError, AttributeError) as err:
            notes.append(f"{comparison} could not be read: {err}")
    captioning = captioning_section(run)
    if captioning is not None:
        parts += ["<h2>Captioning from the joint space</h2>", captioning]
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, path in plots.items():
            caption = PLOT_FILES[name][1]
            parts.append(
                f'<figure><img alt="{html.escape(name)}" src="{_data_uri(path)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("<h2>Configuration</h2>")
    if config is not None:
        parts.append(_table(["key", "value"], _flatten(config)))
    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f'<li class="note">{html.escape(n)}</li>' for n in notes]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return write_text_atomic(run / "report.html", "\n".join(parts))
