"""Plots and the report section of a generative run (the ``repa`` recipe): digit grids per class and
the FD curve.

* :func:`digit_grid` — an (R·C) grid of 8×8 images, one row per class, drawn to a PNG;
* :func:`fd_curve` — FD against epoch (and step) from ``metrics.jsonl``'s epoch records;
* :func:`generation_section` — the HTML of ``RUN/generation/`` (final grid, grids across epochs, FD
  curve, the test-split generation numbers), or ``None`` when the run has none.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["GENERATION_DIR", "digit_grid", "fd_curve", "generation_section"]

GENERATION_DIR = "generation"


def _save(fig: object, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return path


def digit_grid(
    images: Tensor, path: str | os.PathLike[str], title: str = "", row_names: Sequence[str] | None = None,
    dpi: int = 100,
) -> Path:  # fmt: skip
    """Draw (R, C, H, W) images in [0, 1] as an R×C grid (row r = class r) to ``path`` (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be an (R, C, H, W) tensor, got {getattr(images, 'shape', images)}")
    r, c, h, w = images.shape
    canvas = torch.ones(r * (h + 1) - 1, c * (w + 1) - 1)
    for i in range(r):
        for j in range(c):
            canvas[i * (h + 1) : i * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = images[i, j].clamp(0, 1)
    fig, ax = plt.subplots(figsize=(0.35 * c + 0.6, 0.35 * r + 0.4))
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    names = row_names if row_names is not None else [str(i) for i in range(r)]
    ax.set_yticks([i * (h + 1) + h / 2 for i in range(r)], labels=list(names)[:r], fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path), dpi)


def fd_curve(
    records: Sequence[dict], path: str | os.PathLike[str], key: str = "val_fd", dpi: int = 100
) -> Path | None:
    """FD (``key`` of the epoch records) against the training step, log scale; None without such records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (r["step"], r[key])
        for r in records
        if r.get("type") == "epoch" and isinstance(r.get(key), (int, float))
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3)
    ax.set_xlabel("training step")
    ax.set_ylabel("FD to the val digits")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path), dpi)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def generation_section(run_dir: str | os.PathLike[str]) -> str | None:
    """HTML for ``RUN/generation/``: the final per-class grid beside the FD curve, the test numbers,
    and the grids across epochs; ``None`` when the directory is absent."""
    base = Path(run_dir) / GENERATION_DIR
    if not base.is_dir():
        return None
    parts = []
    try:
        summary = json.loads((base / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        summary = None
    if isinstance(summary, dict) and summary.get("text"):
        parts.append(f"<p>{html.escape(str(summary['text']))}</p>")
    figures = []
    for name, caption in (("samples.png", "samples at the end of training, one row per class"),
                          ("fd_curve.png", "FD to the validation digits after each epoch")):  # fmt: skip
        if (base / name).is_file():
            figures.append(
                f"<figure>{_img(base / name, name)}<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts += figures
    epochs = sorted(base.glob("epoch_*.png"))
    if len(epochs) > 6:  # at most six, evenly spaced, the last included
        epochs = [epochs[round(i * (len(epochs) - 1) / 5)] for i in range(6)]
    if epochs:
        parts.append("<p>Samples across epochs (same noise, one row per class):</p>")
        for p in epochs:
            parts.append(f"<figure>{_img(p, p.stem)}<figcaption>{html.escape(p.stem)}</figcaption></figure>")
    return "\n".join(parts) if parts else None
