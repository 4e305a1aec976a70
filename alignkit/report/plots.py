"""Figures with matplotlib's Agg canvas (no pyplot, no global backend switch, no display needed)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["similarity_heatmap"]


def similarity_heatmap(
    matrix: Tensor | np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    row_axis: str = "layer",
    col_axis: str | None = None,
    colorbar_label: str = "similarity",
    annotate: bool = True,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "magma",
    dpi: int = 150,
) -> Figure:
    """Draw an (R, C) similarity matrix as a heatmap with annotated cells, a colour bar and axis labels.

    Row i is drawn top to bottom, column j left to right; ``row_labels`` / ``col_labels`` name them
    (``col_labels`` defaults to ``row_labels`` for a square layer×layer matrix). With ``path`` the
    figure is written there (format from the extension, e.g. ``.png``) atomically: to a temporary
    file in the same directory, then ``os.replace``.

    Args:
        matrix: (R, C) values; NaN cells are left blank.
        row_labels: R names. col_labels: C names (default: the row labels).
        path: where to save, or ``None`` to only return the figure.
        title, row_axis, col_axis, colorbar_label: texts (``col_axis`` defaults to ``row_axis``).
        annotate: write each value in its cell (two decimals).
        vmin, vmax: colour range (``None``: the data's range).
        cmap: a matplotlib colour map name.
        dpi: resolution of the saved image.

    Returns:
        The ``matplotlib.figure.Figure`` (attached to an Agg canvas).

    Cost: O(R·C) drawing; cells are annotated only up to 40×40 (unreadable beyond).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = matrix.detach().double().cpu().numpy() if isinstance(matrix, Tensor) else np.asarray(matrix)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"matrix must be a non-empty 2-D (R, C) array, got shape {tuple(values.shape)}")
    if values.dtype.kind not in "biuf":
        raise ValueError(f"matrix must be numeric, got dtype {values.dtype}")
    rows, cols = values.shape
    col_labels = row_labels if col_labels is None else col_labels
    for name, labels, want in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if isinstance(labels, str) or len(labels) != want:
            raise ValueError(f"{name} must hold {want} names for a matrix of shape ({rows}, {cols})")
    if not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi must be an integer ≥ 10, got {dpi!r}")

    values = values.astype(np.float64)
    size = (max(4.0, 1.0 + 0.75 * cols), max(3.5, 0.6 + 0.6 * rows))
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(cols), [str(label) for label in col_labels], rotation=45, ha="right")
    ax.set_yticks(range(rows), [str(label) for label in row_labels])
    ax.set_xlabel(col_axis if col_axis is not None else row_axis)
    ax.set_ylabel(row_axis)
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    if annotate and rows <= 40 and cols <= 40:
        for i in range(rows):
            for j in range(cols):
                if not np.isfinite(values[i, j]):
                    continue
                red, green, blue, _ = image.cmap(image.norm(values[i, j]))
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if light else "white",
                )
    if path is not None:
        _save_atomic(fig, Path(path), dpi)
    return fig


def _save_atomic(fig: Figure, path: Path, dpi: int) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"{path}: directory {directory} does not exist")
    suffix = path.suffix.lower() or ".png"
    fmt = suffix.lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"{path}: cannot save a figure as {suffix!r}; supported: {', '.join(sorted(supported))}"
        )
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            fig.savefig(out, format=fmt, dpi=dpi)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
