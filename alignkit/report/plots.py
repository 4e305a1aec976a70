"""Figures with matplotlib's Agg canvas (no pyplot, no global backend switch, no display needed).

* :func:`similarity_heatmap` — any (R, C) matrix as an annotated heatmap (layer×layer CKA, …).
* :func:`loss_curves` — train loss per step and evaluation metrics per epoch from ``metrics.jsonl``.
* :func:`image_text_similarity` — cosine similarities of a digit-sorted, class-stratified sample.
* :func:`embedding_projection` — both modalities in one 2-D PCA plane (:func:`pca_project`).
* :func:`cka_heatmap` — linear CKA between named representations (:func:`cka_matrix`).
* :func:`comparison_bars` — the metrics of ``compare.json`` side by side, best bars highlighted.
* :func:`image_png` — one small grey-scale image (a digit) as PNG bytes for the page.

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
    "best_index",
    "cka_heatmap",
    "cka_matrix",
    "comparison_bars",
    "embedding_projection",
    "image_png",
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


def _epoch_series(epochs: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], list[Any]]:
    points = [(r["epoch"], r[key]) for r in epochs if _is_number(r.get(key))]
    return [e for e, _ in points], [v for _, v in points]


def loss_curves(
    records: Sequence[Mapping[str, Any]] | str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
    dpi: int = 150,
) -> Figure:
    """Training curves from the :class:`alignkit.train.Trainer` log, one panel per kind of number.

    * **training loss** (always): the ``"loss"`` of every step record (``{"type": "step", "step",
      "loss", …}``, the mean over the logging window) against the optimiser step, and each epoch's
      ``train_loss`` as a marker at the epoch's last step;
    * **validation loss** (when logged): every epoch-record entry whose name contains ``loss`` (and
      does not start with ``train_``), e.g. ``val_loss``, against the epoch;
    * **validation scores** (when logged): every other numeric epoch entry (``val_recall@1``,
      ``val_zero_shot_accuracy`` …) against the epoch, on an axis scaled to them.

    Losses and scores never share an axis (a loss of 2–4.5 would flatten a recall of 0–0.3). The
    epochs the Trainer marked ``best`` for its ``monitor`` are starred on the monitored curve, and
    the star is in that panel's legend. ``None`` values (non-finite numbers in the log) are left out.

    Args:
        records: the parsed records (:func:`alignkit.train.read_metrics`) or the path of a
            ``metrics.jsonl`` file.
        path: where to save the figure (atomic), or ``None``.
        title: a title over the panels.
        dpi: resolution of the saved image.

    Returns:
        The Figure (one to three axes, training loss first). Cost: O(#records).

    Raises:
        ValueError: no step record with a loss and no epoch record.
    """
    from matplotlib.ticker import MaxNLocator

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
    keys = sorted(
        {
            k
            for r in epochs
            for k, v in r.items()
            if k not in _EPOCH_META and not k.startswith("train_") and _is_number(v)
        }
    )
    loss_keys = [k for k in keys if "loss" in k]
    score_keys = [k for k in keys if "loss" not in k]
    panels = 1 + bool(loss_keys) + bool(score_keys)
    fig, axes = _new_figure((4.6 * panels, 4.0), ncols=panels)
    left = axes[0]
    if steps:
        left.plot(
            [r["step"] for r in steps], [r["loss"] for r in steps], lw=1.2, label="loss (mean per log step)"
        )
    ends = [r for r in epochs if _is_number(r.get("train_loss")) and _is_number(r.get("step"))]
    if ends:
        left.plot(
            [r["step"] for r in ends],
            [r["train_loss"] for r in ends],
            "o",
            ms=4,
            label="train_loss (epoch mean, at its last step)",
        )
    left.set_title("training loss", fontsize=10)
    left.set_xlabel("optimiser step")
    left.set_ylabel("loss")
    left.grid(alpha=0.3)
    if steps or ends:
        left.legend(fontsize=7)
    else:
        left.text(0.5, 0.5, "no step losses", ha="center", va="center", transform=left.transAxes)
    rest = iter(axes[1:])
    for group, panel_title, ylabel in (
        (loss_keys, "validation loss", "loss"),
        (score_keys, "validation scores", "score"),
    ):
        if not group:
            continue
        ax = next(rest)
        for key in group:
            xs, ys = _epoch_series(epochs, key)
            ax.plot(xs, ys, "o-", ms=3, lw=1.2, label=key)
            best = [(r["epoch"], r[key]) for r in epochs if r.get("best") and r.get("monitor") == key]
            if best:
                ax.plot(
                    [e for e, _ in best],
                    [v for _, v in best],
                    "*",
                    ms=11,
                    color="gold",
                    mec="black",
                    label=f"new best {key} (best.json saved)",
                    zorder=5,
                )
        ax.legend(fontsize=7, loc="best")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
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
    inside bright diagonal blocks (class level). The axes carry one tick per digit block, at its
    centre, and thin lines between blocks, so the labels stay legible at any sample size::

        S_ij = ⟨a_i, b_j⟩ / (‖a_i‖·‖b_j‖),   i, j ∈ sample

    Args:
        image, text: (N, E) joint-space embeddings; row i of each is the same item.
        labels: (N,) integer class of each row (the block ticks).
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
    shown = labels[index].tolist()
    names = [str(v) for v in shown]
    side = min(9.0, max(4.5, 0.12 * len(names) + 3.0))
    fig = similarity_heatmap(
        a @ b.T,
        names,
        names,
        path=None,
        title=title,
        row_axis="image (digit block)",
        col_axis="caption (digit block)",
        colorbar_label="cosine similarity",
        annotate=False,
        vmin=None,
        vmax=None,
        cmap="viridis",
        dpi=dpi,
        figsize=(side + 1.2, side),
    )
    # one tick per digit block (at its centre) and a thin line between blocks: legible at any size
    ax = fig.axes[0]
    starts = [i for i in range(len(shown)) if i == 0 or shown[i] != shown[i - 1]]
    ends = [*starts[1:], len(shown)]
    centres = [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)]
    block_names = [names[s] for s in starts]
    ax.set_xticks(centres, block_names, rotation=0, ha="center")
    ax.set_yticks(centres, block_names)
    for boundary in starts[1:]:
        ax.axhline(boundary - 0.5, color="white", lw=0.6)
        ax.axvline(boundary - 0.5, color="white", lw=0.6)
    if path is not None:
        _save_atomic(fig, Path(path), _check_dpi(dpi))
    return fig


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
    max_points: int = 200,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    title: str | None = "joint space, 2-D PCA of both modalities",
    dpi: int = 150,
) -> Figure:
    """Both modalities in one 2-D PCA plane, coloured by class: images as filled dots ``●``,
    captions as crosses ``×``.

    The PCA (:func:`pca_project`) is fitted on all 2N rows ``[image; text]`` together, so distances
    between the modalities are meaningful (a modality gap shows as two separated clouds); the axis
    labels give each component's share of the variance. At most ``max_points`` items are drawn
    (class-stratified, seeded; the same items for both modalities) so the cloud stays readable.
    Grey segments join ``pairs`` drawn images to their own captions. The legend names every mark:
    the digit colours, the two modality markers and the pair segment.

    Args:
        image, text: (N, E) joint-space embeddings, row i of each the same item.
        labels: (N,) integer class of each row (colour; tab10 palette, cycled beyond 10).
        pairs: how many pairs to join (0 ≤ pairs; at most the drawn items).
        max_points: at most this many items drawn per modality (≥ 1; all N when N is smaller, in
            row order).
        seed: seed of the subsample.
        path, title, dpi: as :func:`similarity_heatmap`.

    Returns:
        The Figure. Cost: O(N·E²) time (PCA), O(N·E) memory.
    """
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    image, text, labels = _check_pair(image, text, labels)
    check_int(pairs, "pairs", 0)
    check_int(max_points, "max_points", 1)
    check_int(seed, "seed", 0)
    dpi = _check_dpi(dpi)
    n = image.shape[0]
    both = torch.cat([image, text])
    if image.shape[1] >= 2:
        z = pca_project(both, 2).numpy()
        total = float(((both - both.mean(0)) ** 2).sum(1).mean())
        shares = [float((z[:, k] ** 2).mean()) / total if total > 0 else 0.0 for k in range(2)]
    else:  # a 1-D joint space: plot the value against 0
        z = np.stack([both[:, 0].numpy(), np.zeros(2 * n)], axis=1)
        shares = [1.0, 0.0]
    keep = np.arange(n) if n <= max_points else np.sort(_stratified_sample(labels, max_points, seed).numpy())
    zi, zt, kept = z[:n][keep], z[n:][keep], labels[keep]
    fig, (ax,) = _new_figure((7.2, 5.5))
    palette = colormaps["tab10"]
    colours = [palette(int(c) % 10) for c in kept.tolist()]
    m = len(keep)
    for i in np.linspace(0, m - 1, num=min(pairs, m), dtype=int) if pairs else []:
        ax.plot([zi[i, 0], zt[i, 0]], [zi[i, 1], zt[i, 1]], color="0.35", lw=0.8, alpha=0.8, zorder=1)
    ax.scatter(zi[:, 0], zi[:, 1], c=colours, marker="o", s=16, alpha=0.75, linewidths=0, zorder=2)
    ax.scatter(zt[:, 0], zt[:, 1], c=colours, marker="x", s=20, alpha=0.85, linewidths=1.0, zorder=3)
    classes = sorted(set(kept.tolist()))
    handles = [
        Line2D([], [], ls="", marker="s", color=palette(int(c) % 10), label=f"digit {c}")
        for c in classes[:20]
    ]
    handles += [
        Line2D([], [], ls="", marker="o", color="0.3", mec="none", label="image (●)"),
        Line2D([], [], ls="", marker="x", color="0.3", label="caption (×)"),
    ]
    if pairs and m:
        handles.append(Line2D([], [], color="0.35", lw=0.8, label="image — its caption"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xlabel(f"PC 1 ({100 * shares[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * shares[1]:.0f}% of variance)")
    ax.grid(alpha=0.3)
    if title:
        suffix = f" — {m} of {n} items" if m < n else ""
        ax.set_title(title + suffix, fontsize=10)
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


def best_index(values: Sequence[float | None], better: str) -> set[int]:
    """Indices of the best finite value(s) of ``values`` (ties all count) when ``better`` is
    ``"higher"`` or ``"lower"``; the empty set for ``""`` or when no value is finite."""
    finite = [(i, float(v)) for i, v in enumerate(values) if _is_number(v) and np.isfinite(float(v))]
    if better not in ("higher", "lower") or not finite:
        return set()
    pick = max if better == "higher" else min
    target = pick(v for _, v in finite)
    return {i for i, v in finite if v == target}


def comparison_bars(
    table: Mapping[str, Any],
    *,
    chance: Mapping[str, float] | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = "recipes compared on the test split",
    dpi: int = 150,
) -> Figure:
    """The metrics of a comparison (a ``compare.json`` object) side by side: one small panel per
    metric column, one horizontal bar per recipe, the best bar(s) of each panel highlighted, the
    chance level dashed where one is given; the panel titles carry ↑ / ↓ (higher / lower is better)
    from :mod:`alignkit.report.labels`, and one legend names every mark.

    Args:
        table: ``{"columns": [{"key", "title"}…], "rows": [{"recipe", <key>: float | None …}…]}``.
        chance: metric key → chance level (e.g. from :func:`alignkit.report.labels.chance_level`).
        path, title, dpi: as :func:`similarity_heatmap`.

    Returns:
        The Figure. Cost: O(#recipes · #metrics).

    Raises:
        ValueError: ``table`` has no ``rows`` / ``columns`` lists or no numeric column.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from alignkit.report.labels import METRIC_INFO

    dpi = _check_dpi(dpi)
    rows, columns = table.get("rows"), table.get("columns")
    if not isinstance(rows, list) or not isinstance(columns, list) or not rows:
        raise ValueError("table must be a compare.json object with non-empty 'columns' and 'rows' lists")
    keys = [c["key"] if isinstance(c, Mapping) else str(c) for c in columns]
    keys = [k for k in keys if any(_is_number(r.get(k)) for r in rows)]
    if not keys:
        raise ValueError("table has no numeric metric column to plot")
    names = [str(r.get("recipe")) for r in rows]
    ncols = min(5, len(keys))
    nrows = -(-len(keys) // ncols)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = 0.25 * len(names) + 1.2
    fig = Figure(figsize=(2.6 * ncols, height * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    chance = dict(chance or {})
    drew_chance = False
    for n, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, n + 1)
        info = METRIC_INFO.get(key)
        values = [r.get(key) if _is_number(r.get(key)) else None for r in rows]
        best = best_index(values, info.better if info else "")
        sds = [r.get(f"{key}_sd") for r in rows]
        spans = [(r.get(f"{key}_low"), r.get(f"{key}_high")) for r in rows]
        if any(_is_number(lo) for lo, _ in spans):  # several seeds: a winner only outside the noise
            best = {
                i
                for i in best
                if _is_number(spans[i][0])
                and all(
                    spans[i][0] > hi or spans[i][1] < lo
                    for j, (lo, hi) in enumerate(spans)
                    if j != i and _is_number(lo)
                )
            }
        colours = ["#e6a700" if i in best else "#5b7fbf" for i in range(len(rows))]
        ys = np.arange(len(rows))
        errors = [float(sd) if _is_number(sd) else 0.0 for sd in sds] if any(map(_is_number, sds)) else None
        ax.barh(ys, [0.0 if v is None else float(v) for v in values], color=colours, xerr=errors)
        ax.set_yticks(ys, names if n % ncols == 0 else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        for y, v in zip(ys, values, strict=True):
            if v is None:
                ax.text(0, y, " n/a", va="center", fontsize=7, color="0.4")
        if key in chance and chance[key] is not None:
            ax.axvline(float(chance[key]), color="0.2", ls="--", lw=1.0)
            drew_chance = True
        label = info.short if info else key
        arrow = f" {info.arrow}" if info and info.arrow else ""
        ax.set_title(label + arrow, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    handles = [
        Patch(color="#e6a700", label="best of the panel"),
        Patch(color="#5b7fbf", label="other recipes"),
    ]
    if drew_chance:
        handles.append(Line2D([], [], color="0.2", ls="--", lw=1.0, label="chance level"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(f"{title}  (↑ higher is better, ↓ lower is better)", fontsize=10)
    if path is not None:
        _save_atomic(fig, Path(path), dpi)
    return fig


def image_png(pixels: np.ndarray | Tensor, *, vmax: float = 1.0) -> bytes:
    """A grey-scale (H, W) image (0 = white paper, ``vmax`` = black ink) as PNG bytes, one pixel per
    value (scale it up in the page with ``image-rendering: pixelated``). Cost O(H·W)."""
    import io

    from matplotlib.image import imsave

    array = pixels.detach().cpu().numpy() if isinstance(pixels, Tensor) else np.asarray(pixels)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"pixels must be a non-empty (H, W) array, got shape {tuple(array.shape)}")
    buffer = io.BytesIO()
    imsave(buffer, array.astype(np.float64), cmap="gray_r", vmin=0.0, vmax=vmax, format="png")
    return buffer.getvalue()


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
