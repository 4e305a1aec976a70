"""Figures with matplotlib's Agg canvas (no pyplot, no global backend switch, no display needed).

* :func:`similarity_heatmap` — any (R, C) matrix as an annotated heatmap (layer×layer CKA, …).
* :func:`loss_curves` — train loss per step and evaluation metrics per epoch from ``metrics.jsonl``.
* :func:`image_text_similarity` — cosine similarities of a digit-sorted, class-stratified sample.
* :func:`embedding_projection` — both modalities in one 2-D PCA plane (:func:`pca_project`).
* :func:`cka_heatmap` — linear CKA between named representations (:func:`cka_matrix`).

Every function takes ``path=`` to write the figure atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from alignkit.functional._checks import EPS, check_features, check_int, check_same_rows, compute_dtype
from alignkit.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "cka_heatmap",
    "cka_matrix",
    "embedding_projection",
    "image_text_similarity",
    "loss_curves",
    "pca_project",
    "similarity_heatmap",
]


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
    figsize: tuple[float, float] | None = None,
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
        figsize: (width, height) in inches (default: grows with the matrix, 0.75 in per column).

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
    size = (max(4.0, 1.0 + 0.75 * cols), max(3.5, 0.6 + 0.6 * rows)) if figsize is None else figsize
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


def _check_dpi(dpi: object) -> int:
    if not isinstance(dpi, int) or isinstance(dpi, bool) or dpi < 10:
        raise ValueError(f"dpi must be an integer ≥ 10, got {dpi!r}")
    return dpi


def _new_figure(size: tuple[float, float], ncols: int = 1) -> tuple[Figure, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


_EPOCH_META = ("type", "epoch", "step", "monitor", "best")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def loss_curves(
    records: Sequence[Mapping[str, Any]] | str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    dpi: int = 150,
) -> Figure:
    """Training curves from the :class:`alignkit.train.Trainer` log: loss per step, metrics per epoch.

    Left panel: the ``"loss"`` of every step record (``{"type": "step", "step", "loss", …}``, the mean
    over the logging window) against the optimiser step, and each epoch's ``train_loss`` as a marker
    at the epoch's last step. Right panel: every other numeric entry of the epoch records
    (``{"type": "epoch", "epoch", "step", "train_*", <evaluation metrics>, "monitor", "best"}``,
    e.g. ``val_loss``, ``val_zero_shot_accuracy``) against the epoch; the best epoch is starred.
    ``None`` values (non-finite numbers in the log) are left out.

    Args:
        records: the parsed records (:func:`alignkit.train.read_metrics`) or the path of a
            ``metrics.jsonl`` file.
        path: where to save the figure (atomic), or ``None``.
        title: a title over both panels.
        dpi: resolution of the saved image.

    Returns:
        The Figure (two axes). Cost: O(#records).

    Raises:
        ValueError: no step record with a loss and no epoch record.
    """
    dpi = _check_dpi(dpi)
    if isinstance(records, (str, os.PathLike)):
        from alignkit.train.trainer import read_metrics

        source = Path(records)
        if not source.is_file():
            raise ValueError(f"records: metrics log {source} does not exist")
        records = read_metrics(source)
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise ValueError(f"records must be a sequence of dicts or a path, got {type(records).__name__}")
    steps = [r for r in records if r.get("type", "step") == "step" and _is_number(r.get("loss"))]
    epochs = [r for r in records if r.get("type") == "epoch" and _is_number(r.get("epoch"))]
    if not steps and not epochs:
        raise ValueError(
            f"records hold no step record with a 'loss' and no epoch record ({len(records)} record(s))"
        )
    fig, (left, right) = _new_figure((10.0, 4.0), ncols=2)
    if steps:
        left.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1.2, label="loss (per step)")
    ends = [r for r in epochs if _is_number(r.get("train_loss")) and _is_number(r.get("step"))]
    if ends:
        left.plot(
            [r["step"] for r in ends], [r["train_loss"] for r in ends], "o", ms=4, label="train_loss (epoch)"
        )
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.grid(alpha=0.3)
    if steps or ends:
        left.legend(fontsize=8)
    keys = sorted(
        {
            k
            for r in epochs
            for k, v in r.items()
            if k not in _EPOCH_META and not k.startswith("train_") and _is_number(v)
        }
    )
    for key in keys:
        points = [(r["epoch"], r[key]) for r in epochs if _is_number(r.get(key))]
        right.plot([e for e, _ in points], [v for _, v in points], "o-", ms=3, lw=1.2, label=key)
        best = [(r["epoch"], r[key]) for r in epochs if r.get("best") and r.get("monitor") == key]
        if best:
            right.plot([e for e, _ in best], [v for _, v in best], "*", ms=11, color="gold", mec="black")
    if keys:
        right.legend(fontsize=7, loc="best")
    else:
        right.text(0.5, 0.5, "no evaluation metrics", ha="center", va="center", transform=right.transAxes)
    from matplotlib.ticker import MaxNLocator

    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("epoch")
    right.set_ylabel("evaluation metric")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    if path is not None:
        _save_atomic(fig, Path(path), dpi)
    return fig


def _check_labels(labels: object, rows: int) -> Tensor:
    if (
        not isinstance(labels, Tensor)
        or labels.dim() != 1
        or labels.is_floating_point()
        or labels.is_complex()
    ):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape (N,), got {shape}")
    if labels.shape[0] != rows:
        raise ValueError(f"labels must have N={rows} entries (one per row), got shape {tuple(labels.shape)}")
    return labels.long().cpu()


def _check_pair(image: object, text: object, labels: object) -> tuple[Tensor, Tensor, Tensor]:
    image = check_features(image, "image")
    text = check_features(text, "text")
    check_same_rows(image, text, "image", "text")
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"image and text must share the joint dimension E, got shapes {tuple(image.shape)} "
            f"and {tuple(text.shape)}"
        )
    labels = _check_labels(labels, image.shape[0])
    return image.detach().cpu().double(), text.detach().cpu().double(), labels


def _stratified_sample(labels: Tensor, samples: int, seed: int) -> Tensor:
    """Up to ``samples`` row indices, as balanced over the classes as possible, sorted by (label, row)."""
    generator = torch.Generator().manual_seed(seed)
    pools = [
        (labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=generator)]
        for c in labels.unique().tolist()
    ]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(samples, labels.numel()):
        for pool in pools:
            if depth < pool.numel() and len(chosen) < samples:
                chosen.append(int(pool[depth]))
        depth += 1
    index = torch.tensor(sorted(chosen), dtype=torch.long)
    return index[torch.argsort(labels[index], stable=True)]


def image_text_similarity(
    image: Tensor,
    text: Tensor,
    labels: Tensor,
    *,
    samples: int = 40,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    title: str | None = "image–text cosine similarity (test split)",
    dpi: int = 150,
) -> Figure:
    """Heatmap of the cosine similarities between images (rows) and captions (columns) of a sample.

    ``samples`` rows are drawn class-stratified (round-robin over the digits, a seeded permutation
    inside each) and sorted by digit, so a good alignment shows a bright diagonal (instance level)
    inside bright diagonal blocks (class level)::

        S_ij = ⟨a_i, b_j⟩ / (‖a_i‖·‖b_j‖),   i, j ∈ sample

    Args:
        image, text: (N, E) joint-space embeddings; row i of each is the same item.
        labels: (N,) integer class of each row (the tick labels).
        samples: how many items to show (≥ 2; all N when N is smaller).
        seed: seed of the sampling.
        path, title, dpi: as :func:`similarity_heatmap`.

    Returns:
        The Figure. Cost: O(s²·E) time, O(s²) memory for s = min(samples, N); the N×N matrix is
        never formed.
    """
    image, text, labels = _check_pair(image, text, labels)
    check_int(samples, "samples", 2)
    check_int(seed, "seed", 0)
    index = _stratified_sample(labels, samples, seed)
    a = torch.nn.functional.normalize(image[index], dim=-1, eps=EPS)
    b = torch.nn.functional.normalize(text[index], dim=-1, eps=EPS)
    names = [str(v) for v in labels[index].tolist()]
    side = min(12.0, max(4.5, 0.2 * len(names) + 2.0))
    return similarity_heatmap(
        a @ b.T,
        names,
        names,
        path=path,
        title=title,
        row_axis="image (digit)",
        col_axis="caption (digit)",
        colorbar_label="cosine similarity",
        annotate=False,
        vmin=None,
        vmax=None,
        cmap="viridis",
        dpi=dpi,
        figsize=(side + 1.2, side),
    )


def pca_project(x: Tensor, dim: int = 2) -> Tensor:
    """Project the rows of ``x`` on its ``dim`` leading principal components (exact PCA by SVD).

    Pearson 1901 / Hotelling 1933 (principal component analysis)::

        X_c = X − mean_rows(X) = U Σ Vᵀ,   Z = X_c V[:, :dim] = U[:, :dim] Σ[:dim]

    Each component's sign is fixed so that its largest-magnitude loading is positive (scikit-learn's
    ``svd_flip`` rule), so the result is deterministic.

    Args:
        x: (N, d) rows; fp16/bf16 are computed in float32 and returned in their dtype.
        dim: number of components, 1 ≤ dim ≤ d.

    Returns:
        (N, dim) coordinates, column k with variance σ_k²/N (σ_k the k-th singular value).
        Cost: O(N·d·min(N, d)) time, O(N·d) memory.
    """
    x = check_features(x, "x")
    check_int(dim, "dim", 1, x.shape[1], what=f" (x has d={x.shape[1]} columns)")
    xc = x.to(compute_dtype(x))
    xc = xc - xc.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    components = vh[:dim]
    if components.shape[0] < dim:  # N < dim: the remaining directions carry no variance
        pad = components.new_zeros(dim - components.shape[0], x.shape[1])
        components = torch.cat([components, pad])
    biggest = components.abs().argmax(dim=1)
    signs = torch.sign(components.gather(1, biggest[:, None]))
    components = components * torch.where(signs == 0, 1.0, signs).to(components.dtype)
    return (xc @ components.T).to(x.dtype)


def embedding_projection(
    image: Tensor,
    text: Tensor,
    labels: Tensor,
    *,
    pairs: int = 8,
    path: str | os.PathLike[str] | None = None,
    title: str | None = "joint space, 2-D PCA of both modalities",
    dpi: int = 150,
) -> Figure:
    """Both modalities in one 2-D PCA plane, coloured by class: images ``o``, captions ``x``.

    The PCA (:func:`pca_project`) is fitted on the 2N rows ``[image; text]`` together, so distances
    between the modalities are meaningful (a modality gap shows as two separated clouds). Grey lines
    join ``pairs`` image–caption pairs, picked evenly over the rows.

    Args:
        image, text: (N, E) joint-space embeddings, row i of each the same item.
        labels: (N,) integer class of each row (colour; tab10 palette, cycled beyond 10).
        pairs: how many pairs to join (0 ≤ pairs; at most N are drawn).
        path, title, dpi: as :func:`similarity_heatmap`.

    Returns:
        The Figure. Cost: O(N·E²) time (PCA), O(N·E) memory.
    """
    from matplotlib.lines import Line2D

    image, text, labels = _check_pair(image, text, labels)
    check_int(pairs, "pairs", 0)
    dpi = _check_dpi(dpi)
    n = image.shape[0]
    z = pca_project(torch.cat([image, text]), 2).numpy() if image.shape[1] >= 2 else None
    if z is None:  # a 1-D joint space: plot the value against 0
        z = np.stack([torch.cat([image, text])[:, 0].numpy(), np.zeros(2 * n)], axis=1)
    zi, zt = z[:n], z[n:]
    fig, (ax,) = _new_figure((6.5, 5.5))
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    colours = [palette(int(c) % 10) for c in labels.tolist()]
    for i in np.linspace(0, n - 1, num=min(pairs, n), dtype=int) if pairs else []:
        ax.plot([zi[i, 0], zt[i, 0]], [zi[i, 1], zt[i, 1]], color="0.4", lw=0.8, alpha=0.8, zorder=1)
    ax.scatter(zi[:, 0], zi[:, 1], c=colours, marker="o", s=14, alpha=0.7, linewidths=0, zorder=2)
    ax.scatter(zt[:, 0], zt[:, 1], c=colours, marker="x", s=18, alpha=0.8, linewidths=1.0, zorder=3)
    classes = sorted(set(labels.tolist()))
    handles = [
        Line2D([], [], ls="", marker="s", color=palette(int(c) % 10), label=str(c)) for c in classes[:20]
    ]
    handles += [
        Line2D([], [], ls="", marker="o", color="0.3", label="image"),
        Line2D([], [], ls="", marker="x", color="0.3", label="text"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if path is not None:
        _save_atomic(fig, Path(path), dpi)
    return fig


def cka_matrix(representations: Mapping[str, Tensor]) -> Tensor:
    """Linear CKA between every pair of named representations of the same N inputs.

    Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations
    Revisited"; each entry is :func:`alignkit.functional.cka` (linear, biased HSIC)::

        M_ij = ‖Y_jᵀ X_i‖_F² / (‖X_iᵀ X_i‖_F · ‖Y_jᵀ Y_j‖_F)   (column-centred X_i, X_j)

    Args:
        representations: K ≥ 1 names → (N, d_k) tensors (d_k may differ, N must agree), e.g.
            ``{"image_tower": …, "text_tower": …, "image": …, "text": …}``.

    Returns:
        (K, K) float64 symmetric matrix with unit diagonal (0 for an all-constant representation),
        rows in the mapping's order. Cost: O(K²·N·d²) time, O(d²) memory per pair (no N×N matrix
        when N > d).
    """
    from alignkit.functional.similarity import cka

    if not isinstance(representations, Mapping) or not representations:
        raise ValueError("representations must be a non-empty mapping of names to (N, d) tensors")
    names = list(representations)
    tensors = []
    for name in names:
        t = check_features(representations[name], f"representations[{name!r}]", min_rows=2)
        if tensors:
            check_same_rows(tensors[0], t, f"representations[{names[0]!r}]", f"representations[{name!r}]")
        tensors.append(t.detach().cpu().double())
    k = len(names)
    out = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i, k):
            value = float(cka(tensors[i], tensors[j]))
            out[i, j] = out[j, i] = value
    return out


def cka_heatmap(
    representations: Mapping[str, Tensor],
    *,
    path: str | os.PathLike[str] | None = None,
    title: str | None = "linear CKA across towers",
    dpi: int = 150,
) -> Figure:
    """Heatmap of :func:`cka_matrix` (e.g. raw tower outputs vs joint embeddings), cells annotated.

    Args:
        representations: K names → (N, d_k) tensors of the same N inputs.
        path, title, dpi: as :func:`similarity_heatmap`.

    Returns:
        The Figure. Cost: that of :func:`cka_matrix`.
    """
    matrix = cka_matrix(representations)
    names = list(representations)
    side = max(3.5, 1.2 + 0.9 * len(names))
    return similarity_heatmap(
        matrix,
        names,
        path=path,
        title=title,
        row_axis="representation",
        colorbar_label="linear CKA",
        dpi=dpi,
        figsize=(side + 1.3, side),
    )


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
    with atomic_write(path) as out:
        fig.savefig(out, format=fmt, dpi=dpi)
