"""Paired features for users' own data: row i of ``source`` goes with row i of ``target``.

    from alignkit.data.paired import PairedEmbeddings
    from torch.utils.data import DataLoader
    pairs = PairedEmbeddings("old_model.npy", "new_model.safetensors", labels="labels.npy")
    train, test = pairs.split((0.8, 0.2), seed=0)
    for x, y, label in DataLoader(train, batch_size=256, shuffle=True):  # default collate stacks rows
        ...

Files are read with :func:`alignkit.io.load_embeddings` (``.npy``, ``.npz``, ``.pt``/``.pth``,
``.safetensors``, ``.parquet``), so they are (N, d) float32/float64, finite, and never unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from alignkit.functional._checks import check_features, shape_str
from alignkit.io import _LOADERS, LOADABLE_EXTENSIONS, load_embeddings

__all__ = ["PairedEmbeddings"]

_PathLike = str | os.PathLike


def _features(value: Any, name: str, key: str | None) -> Tensor:
    """A path (read with load_embeddings) or an in-memory array as a validated (N, d) float tensor."""
    if isinstance(value, (str, os.PathLike)):
        return load_embeddings(value, key=key)
    if key is not None:
        raise ValueError(f"{name}_key applies to a file path, but {name} is a {type(value).__name__}")
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a numeric array, got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise ValueError(
            f"{name} must be a file path, numpy array or torch.Tensor of shape (N, d), "
            f"got {type(value).__name__}"
        )
    tensor = value.detach().cpu()
    if tensor.dtype not in (torch.float32, torch.float64) and not tensor.is_complex():
        tensor = tensor.to(torch.float32)  # integers, bool, half precision: as load_embeddings does
    return check_features(tensor, name, ndim=2)


def _labels(value: Any, n: int, key: str | None) -> Tensor:
    """Labels as an (N,) int64 tensor from a path, array, tensor or sequence of ints."""
    if isinstance(value, (str, os.PathLike)):
        file = Path(value)
        suffix = file.suffix.lower()
        if suffix not in _LOADERS:
            raise ValueError(
                f"{file}: unknown extension {suffix or '(none)'!r}; "
                f"supported: {', '.join(LOADABLE_EXTENSIONS)}"
            )
        if not file.is_file():
            raise ValueError(f"{file}: no such file")
        value = _LOADERS[suffix](file, key)  # the raw array: labels may be 1-D, unlike embeddings
    elif key is not None:
        raise ValueError(f"labels_key applies to a file path, but labels is a {type(value).__name__}")
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        what = type(value).__name__
        raise ValueError(f"labels must be a sequence of integers, got {what} ({err})") from None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        array = array.astype(np.int64)  # e.g. a parquet column read as float, or labels saved as floats
    if array.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    if array.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match source and target, got {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def _check_fractions(fractions: Any) -> tuple[float, ...]:
    ok = isinstance(fractions, Sequence) and not isinstance(fractions, str) and len(fractions) >= 2
    try:
        values = tuple(float(f) for f in fractions) if ok else ()
    except (TypeError, ValueError):
        ok = False
        values = ()
    if not ok or any(not np.isfinite(v) or v <= 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be two or more numbers > 0 summing to 1, got {fractions!r}")
    return values


def _sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Part sizes summing to n, by largest remainder (ties to the earlier part)."""
    exact = [f * n for f in fractions]
    sizes = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


class PairedEmbeddings(Dataset):
    """Two aligned (N, d_s) and (N, d_t) feature matrices, with optional (N,) integer labels.

    ``dataset[i]`` is ``(source[i], target[i])`` or ``(source[i], target[i], labels[i])``; the
    default ``DataLoader`` collate stacks them into (B, d_s), (B, d_t), (B,), so no custom collate
    is needed.

    Args:
        source: a file path (any format of :func:`alignkit.io.load_embeddings`), numpy array or tensor.
        target: likewise; must have the same number of rows N.
        labels: optional class labels: a path (1-D or (N, 1) array; ``.npy``, ``.npz``, ``.pt``,
            ``.safetensors``, or a ``.parquet`` column named by ``labels_key``), array, tensor or list.
        source_key, target_key, labels_key: which array of a multi-array file.

    Attributes:
        source, target: CPU float32/float64 tensors (half precision and integers become float32).
        labels: (N,) int64 tensor or None.
        indices: (N,) int64 rows of the original data (``arange(N)``, or the rows a split kept).

    Raises:
        ValueError: unreadable file, bad shape, non-finite value, or a row-count mismatch (naming both
            shapes).

    Cost: the files are read once and held in memory, O(N·(d_s + d_t)).
    """

    def __init__(
        self,
        source: _PathLike | np.ndarray | Tensor,
        target: _PathLike | np.ndarray | Tensor,
        labels: _PathLike | np.ndarray | Tensor | Sequence[int] | None = None,
        *,
        source_key: str | None = None,
        target_key: str | None = None,
        labels_key: str | None = None,
    ) -> None:
        self.source = _features(source, "source", source_key)
        self.target = _features(target, "target", target_key)
        if self.source.shape[0] != self.target.shape[0]:
            raise ValueError(
                f"source and target must have the same number of rows (one pair per row), got "
                f"{shape_str(self.source)} and {shape_str(self.target)}"
            )
        n = self.source.shape[0]
        self.labels = None if labels is None else _labels(labels, n, labels_key)
        self.indices = torch.arange(n, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        if self.labels is None:
            return self.source[index], self.target[index]
        return self.source[index], self.target[index], self.labels[index]

    @property
    def dims(self) -> tuple[int, int]:
        """(d_s, d_t), the widths of source and target."""
        return int(self.source.shape[1]), int(self.target.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> PairedEmbeddings:
        """The pairs at ``indices`` (positions in this dataset) as a new dataset; ``indices`` is tracked.

        Cost: copies the selected rows, O(len(indices)·(d_s + d_t)).
        """
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        n = len(self)
        if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= n:
            got = "none" if index.numel() == 0 else f"range [{int(index.min())}, {int(index.max())}]"
            raise ValueError(f"indices must be a non-empty list of row positions in [0, {n}), got {got}")
        out = PairedEmbeddings.__new__(PairedEmbeddings)
        out.source = self.source[index]
        out.target = self.target[index]
        out.labels = None if self.labels is None else self.labels[index]
        out.indices = self.indices[index]
        return out

    def split(
        self, fractions: Sequence[float] = (0.8, 0.2), seed: int = 0, stratify: bool = True
    ) -> tuple[PairedEmbeddings, ...]:
        """Random disjoint parts of sizes ``fractions·N`` (largest-remainder rounding), fixed by ``seed``.

        The parts are peeled off in order as ``sklearn.model_selection.train_test_split`` would (integer
        sizes, ``random_state=seed``; computed by :func:`alignkit.data.splits.holdout` without
        importing scikit-learn), stratified by label when there are labels and ``stratify`` is true;
        each part keeps its rows in their original order.

        Args:
            fractions: two or more numbers > 0 summing to 1.
            seed: integer ≥ 0.
            stratify: keep class proportions in every part (needs labels; every part must be able to
                hold every class with two or more members, else a ValueError says so).

        Returns:
            One :class:`PairedEmbeddings` per fraction.

        Cost: O(N) indices plus copying the rows.
        """
        from alignkit.data.splits import holdout  # train_test_split's rows, without scikit-learn

        parts = _check_fractions(fractions)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
        if not isinstance(stratify, bool):
            raise ValueError(f"stratify must be a bool, got {stratify!r}")
        n = len(self)
        sizes = _sizes(n, parts)
        if min(sizes) < 1:
            raise ValueError(
                f"fractions {parts} of N={n} rows leave an empty part (sizes {sizes}); use fewer parts"
            )
        labels = None if self.labels is None or not stratify else self.labels.numpy()
        remaining = np.arange(n)
        out: list[np.ndarray] = []
        for size in sizes[:-1]:
            try:
                remaining, part = holdout(
                    remaining, size, int(seed), None if labels is None else labels[remaining]
                )
            except ValueError as err:
                raise ValueError(
                    f"cannot split N={n} rows into sizes {sizes} stratified by labels ({err}); "
                    "pass stratify=False"
                ) from None
            out.append(part)
        out.append(remaining)
        return tuple(self.subset(np.sort(part)) for part in out)

    def __repr__(self) -> str:
        labels = "" if self.labels is None else f", labels={int(self.labels.unique().numel())} classes"
        return (
            f"PairedEmbeddings(N={len(self)}, source={shape_str(self.source)} {self.source.dtype}, "
            f"target={shape_str(self.target)} {self.target.dtype}{labels})"
        )
