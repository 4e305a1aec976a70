"""Train / val / test splits of N rows that never cut a group, and explicit split files.

    from alignkit.data.splits import group_split, read_split_file
    splits = group_split(1000, groups=image_ids, val_fraction=0.1, test_fraction=0.2, seed=0)
    splits["test"]                     # (n_test,) int64 row indices, sorted
    splits = read_split_file("split.csv", n=1000, groups=image_ids)

Rows that share a group id (e.g. the five captions of one image) must land in the same split, or
retrieval on the test split would be scored on images the model saw in training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SPLIT_NAMES",
    "factorize",
    "group_positives",
    "group_split",
    "holdout",
    "read_split_file",
    "splits_from_labels",
    "stratified_holdout",
]

SPLIT_NAMES = ("train", "val", "test")
_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def factorize(values: Any, name: str = "values") -> tuple[Tensor, list[Any]]:
    """Integer codes 0..G-1 for any 1-D sequence of hashable ids (ints, strings), and the G distinct ids.

    Codes follow the sorted order of the distinct ids (``np.unique``). Floats that are whole numbers are
    read as integers; NaN, None, other floats and nested values raise ``ValueError`` naming ``name``.

    Returns:
        (codes (N,) int64 tensor, uniques list of length G).

    Cost: O(N log N).
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        array = values
    else:
        items = list(values)
        if any(v is None for v in items):
            first = next(i for i, v in enumerate(items) if v is None)
            raise ValueError(f"{name} has an empty value at row {first}; every row needs an id")
        kinds = {type(v) for v in items}
        if kinds and all(issubclass(k, str) for k in kinds):
            array = np.asarray(items, dtype=object).astype(str)
        else:
            try:
                array = np.asarray(items)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name} must be a 1-D sequence of ids ({err})") from None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one id per row), got shape {tuple(array.shape)}")
    kind = array.dtype.kind
    if kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds NaN or Inf; every row needs an integer or string id")
        if not (array == np.round(array)).all():
            raise ValueError(f"{name} holds fractional numbers; ids must be integers or strings")
        array = array.astype(np.int64)
    elif kind == "b":
        array = array.astype(np.int64)
    elif kind == "O":
        if not all(isinstance(v, (str, int, np.integer)) for v in array):
            raise ValueError(f"{name} must hold integers or strings, got a mix of other types")
        array = array.astype(str)
    elif kind not in "iuUS":
        raise ValueError(f"{name} must hold integers or strings, got dtype {array.dtype}")
    uniques, codes = np.unique(array, return_inverse=True)
    return torch.from_numpy(codes.reshape(-1).astype(np.int64)), uniques.tolist()


def _check_n(n: Any) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer ≥ 1 (the number of rows), got {n!r}")
    return int(n)


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _targets(n: int, fractions: Sequence[float]) -> list[int]:
    """Rows per split summing to n, by largest remainder (ties to the earlier split)."""
    exact = [f * n for f in fractions]
    sizes = [int(np.floor(e + 1e-9)) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def stratified_holdout(
    index: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, held_out)``: ``sklearn.model_selection.train_test_split(index, test_size=test_fraction,
    stratify=labels, random_state=seed)`` computed here, to the same rows in the same order, without
    importing scikit-learn (1-2 s on two CPU cores, more than the rest of a short run's start-up).

    The algorithm is scikit-learn's ``StratifiedShuffleSplit`` (unchanged from 1.3 to 1.9; the test
    compares the two): ``n_test = ceil(test_fraction · N)``; each class's share of the train and
    then the test rows is the floor of its proportional share, the rows left over going to the classes
    with the largest remainders (ties broken at random); each class's rows are permuted and cut;
    both parts are permuted — all draws from ``numpy.random.RandomState(seed)`` in that order.

    Args:
        index: (N,) the row ids to split (returned in place of positions).
        labels: (N,) the class of each row; every class needs two or more rows.
        test_fraction: in (0, 1).
        seed: integer ≥ 0.

    Cost: O(N log N).
    """
    index, labels = np.asarray(index), np.asarray(labels)
    n = index.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) like index, got {labels.shape}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    return _stratified(index, labels, int(np.ceil(test_fraction * n)), seed, f"test_fraction {test_fraction}")


def holdout(
    index: np.ndarray, n_test: int, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, held_out)`` with ``n_test`` held-out rows: ``sklearn.model_selection.train_test_split(index,
    test_size=n_test, stratify=labels, random_state=seed)`` (an integer size) computed here, to the same
    rows in the same order, without importing scikit-learn.

    Without labels, scikit-learn's ``ShuffleSplit``: one ``numpy.random.RandomState(seed).permutation(N)``,
    its first ``n_test`` positions held out and the rest kept, both in permutation order. With labels,
    the stratified split of :func:`stratified_holdout` with ``n_test`` given instead of a fraction.

    Args:
        index: (N,) the row ids to split.
        n_test: held-out rows, 1 ≤ n_test ≤ N − 1.
        seed: integer ≥ 0.
        labels: (N,) the class of each row (every class needs two or more rows), or None.

    Cost: O(N log N).
    """
    index = np.asarray(index)
    n = index.shape[0]
    if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or not 1 <= n_test <= n - 1:
        raise ValueError(f"n_test must be an integer in [1, {n - 1}] (N={n} rows), got {n_test!r}")
    if labels is None:
        order = np.random.RandomState(seed).permutation(n)
        return index[order[n_test:]], index[order[:n_test]]
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) like index, got {labels.shape}")
    return _stratified(index, labels, int(n_test), seed, f"n_test={n_test}")


def _stratified(
    index: np.ndarray, labels: np.ndarray, n_test: int, seed: int, asked: str
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``StratifiedShuffleSplit`` of ``index`` with ``n_test`` held-out rows (see
    :func:`stratified_holdout`); ``asked`` names the requested size in errors."""
    n = index.shape[0]
    n_train = n - n_test
    classes, y, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        few = classes[counts < 2].tolist()
        raise ValueError(f"labels: every class needs at least 2 rows to stratify; classes {few} have 1")
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"{asked} of N={n} leaves {n_train} / {n_test} rows for "
            f"{len(classes)} classes; each part needs one row per class"
        )
    by_class = np.split(np.argsort(y, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        rows = by_class[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i] : n_i[i] + t_i[i]])
    return index[rng.permutation(train)], index[rng.permutation(test)]


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's ``_approximate_mode``: per-class draws summing to ``draws``, proportional to
    ``counts``, floored; the rows left over go to the largest remainders, ties broken by ``rng``."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (where,) = np.where(remainder == value)
            now = min(len(where), need)
            floored[rng.choice(where, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def group_split(
    n: int,
    groups: Any = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Random train / val / test row indices in which rows sharing a group id stay together.

    Targets: ``round(test_fraction·n)`` test rows, ``round(val_fraction·n)`` val rows (largest-remainder
    rounding), the rest train. Without groups the rows are permuted (``numpy.random.default_rng(seed)``)
    and cut at the targets, so the sizes are exact. With groups, the groups are visited largest first
    (ties in a random order fixed by ``seed``) and each goes to the split with the largest remaining
    deficit ``target − rows so far``; each split then ends within one group's size of its target. A split
    asked for (fraction > 0) that ends empty takes the smallest group of the split with most groups.

    Args:
        n: number of rows N ≥ 1.
        groups: optional (N,) ids (ints or strings; a tensor, array or list); ``None``: every row alone.
        val_fraction, test_fraction: in [0, 1), summing to < 1.
        seed: integer ≥ 0; the same inputs and seed give the same split.

    Returns:
        ``{"train", "val", "test"}`` → sorted int64 row-index tensors, disjoint, covering 0..N-1. A split
        of fraction 0 is empty.

    Raises:
        ValueError: bad n / fractions / seed, groups of the wrong length, or too few rows or groups to
            give every requested split at least one row (the message gives the counts).

    Cost: O(N log N) plus a Python loop over the G groups.
    """
    n = _check_n(n)
    val = _check_fraction(val_fraction, "val_fraction")
    test = _check_fraction(test_fraction, "test_fraction")
    if val + test >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training rows, got {val} + {test}"
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    codes = None
    if groups is not None:
        codes, _ = factorize(groups, "groups")
        if codes.shape[0] != n:
            raise ValueError(f"groups must have one id per row, i.e. length {n}, got {codes.shape[0]}")
    fractions = (1.0 - val - test, val, test)
    targets = _targets(n, fractions)
    for name, fraction, target in zip(SPLIT_NAMES, fractions, targets, strict=True):
        if fraction > 0 and target == 0:
            raise ValueError(
                f"{name} fraction {fraction:g} of n={n} rows rounds to 0 rows; use a larger fraction or 0"
            )
    rng = np.random.default_rng(int(seed))
    if codes is None:
        parts = np.split(rng.permutation(n), np.cumsum(targets)[:-1])
    else:
        parts = _assign_groups(codes.numpy(), targets, fractions, rng)
    return {
        name: torch.from_numpy(np.sort(part).astype(np.int64))
        for name, part in zip(SPLIT_NAMES, parts, strict=True)
    }


def _assign_groups(
    codes: np.ndarray, targets: list[int], fractions: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
    g = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=g)
    shuffled = rng.permutation(g)
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]  # largest first, ties random
    deficit = list(targets)
    where = np.empty(g, dtype=np.int64)
    members: list[list[int]] = [[], [], []]
    for group in order.tolist():
        best = max(range(3), key=lambda s: (deficit[s], -s))  # ties → train, then val, then test
        where[group] = best
        deficit[best] -= int(sizes[group])
        members[best].append(group)
    for split in range(3):
        if fractions[split] > 0 and not members[split]:
            donor = max(range(3), key=lambda s: (len(members[s]), -s))
            if len(members[donor]) < 2:
                raise ValueError(
                    f"cannot give every split a group: {g} group(s) of rows for "
                    f"{sum(f > 0 for f in fractions)} requested splits"
                )
            smallest = min(members[donor], key=lambda grp: (int(sizes[grp]), grp))
            members[donor].remove(smallest)
            members[split].append(smallest)
            where[smallest] = split
    row_split = where[codes]
    return [np.flatnonzero(row_split == s) for s in range(3)]


def _check_groups_whole(splits: Mapping[str, Tensor], groups: Any, n: int, source: str) -> None:
    codes, uniques = factorize(groups, "groups")
    if codes.shape[0] != n:
        raise ValueError(f"groups must have one id per row, i.e. length {n}, got {codes.shape[0]}")
    seen = np.full(len(uniques), -1, dtype=np.int64)
    for s, name in enumerate(SPLIT_NAMES):
        part = codes[splits[name]].numpy()
        clash = part[(seen[part] >= 0) & (seen[part] != s)]
        if clash.size:
            other = SPLIT_NAMES[int(seen[clash[0]])]
            raise ValueError(
                f"{source}: group {uniques[int(clash[0])]!r} has rows in both {other} and {name}; "
                "rows sharing a group must be in one split"
            )
        seen[part] = s


def splits_from_labels(
    values: Sequence[Any], n: int, source: str = "split column", groups: Any = None
) -> dict[str, Tensor]:
    """Splits from one split name per row (``train`` / ``val`` / ``test``; ``valid``, ``validation`` and
    ``dev`` mean val; case and surrounding spaces ignored).

    Raises ``ValueError`` naming ``source`` and the first bad row: a length other than ``n``, an unknown
    name, no train or no test row, or (with ``groups``) a group in two splits.
    """
    n = _check_n(n)
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{source}: has {len(values)} split names, expected one per row ({n})")
    out: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for i, value in enumerate(values):
        key = _ALIASES.get(str(value).strip().lower()) if value is not None else None
        if key is None:
            raise ValueError(f"{source}: row {i} has split {value!r}; expected train, val or test")
        out[key].append(i)
    return _finish({k: np.asarray(v, dtype=np.int64) for k, v in out.items()}, n, source, groups)


def _finish(parts: Mapping[str, np.ndarray], n: int, source: str, groups: Any) -> dict[str, Tensor]:
    for name in ("train", "test"):
        if parts[name].size == 0:
            raise ValueError(f"{source}: no {name} rows; a split needs at least one train and one test row")
    splits = {name: torch.from_numpy(np.sort(parts[name]).astype(np.int64)) for name in SPLIT_NAMES}
    if groups is not None:
        _check_groups_whole(splits, groups, n, source)
    return splits


def _index_list(value: Any, name: str, source: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{source}: {name!r} must be a list of integer row indices")
    return np.asarray(value, dtype=np.int64)


def read_split_file(path: str | os.PathLike[str], n: int, groups: Any = None) -> dict[str, Tensor]:
    """Explicit splits from a file, validated against N rows (and their groups).

    Formats, by extension:

    * ``.json`` — ``{"train": [row, …], "val": […], "test": […]}`` of 0-based row indices (``val``
      may be left out). Rows listed nowhere are unused.
    * ``.txt`` — one split name per line, one line per row (blank lines ignored; a first line
      ``split`` is a header).
    * ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` — a table with a column ``split`` (one split name
      per row), or with columns ``index`` and ``split`` (rows not listed are unused).

    Split names: ``train``, ``val`` (or ``valid``, ``validation``, ``dev``), ``test``.

    Returns:
        ``{"train", "val", "test"}`` → sorted int64 row indices.

    Raises:
        ValueError: one line naming the file: unreadable, unknown extension, an index outside
            [0, N), a row in two splits, a length other than N, an unknown split name, no train or
            no test rows, or a group in two splits.
    """
    n = _check_n(n)
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"split file must be a path, got {type(path).__name__}")
    file = Path(path)
    suffix = file.suffix.lower()
    if not file.is_file():
        raise ValueError(f"{file}: no such split file")
    if suffix == ".json":
        try:
            obj = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{file}: not a readable JSON file ({err})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{file}: expected an object {{'train': [rows], 'val': [...], 'test': [...]}}")
        unknown = sorted(set(obj) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"{file}: unknown split name(s) {unknown}; expected train, val, test")
        parts = {name: _index_list(obj.get(name, []), name, str(file)) for name in SPLIT_NAMES}
        return _from_indices(parts, n, str(file), groups)
    if suffix == ".txt":
        try:
            lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{file}: not a readable text file ({err})") from None
        lines = [line for line in lines if line]
        if lines and lines[0].lower() == "split":
            lines = lines[1:]
        return splits_from_labels(lines, n, str(file), groups)
    if suffix in (".csv", ".tsv", ".jsonl", ".parquet"):
        from alignkit.data.sources import read_table

        table = read_table(file)
        if "split" not in table:
            raise ValueError(f"{file}: has no column 'split' (columns: {', '.join(table)})")
        if "index" in table:
            index = np.asarray([_int_cell(v, file, "index", i) for i, v in enumerate(table["index"])])
            parts: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
            for i, (row, value) in enumerate(zip(index.tolist(), table["split"], strict=True)):
                key = _ALIASES.get(str(value).strip().lower()) if value is not None else None
                if key is None:
                    raise ValueError(f"{file}: row {i} has split {value!r}; expected train, val or test")
                parts[key].append(row)
            return _from_indices(
                {k: np.asarray(v, dtype=np.int64) for k, v in parts.items()}, n, str(file), groups
            )
        return splits_from_labels(table["split"], n, str(file), groups)
    raise ValueError(
        f"{file}: unknown split-file extension {suffix or '(none)'!r}; "
        "use .json, .txt, .csv, .tsv, .jsonl or .parquet"
    )


def _int_cell(value: Any, file: Path, column: str, row: int) -> int:
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float, np.integer, np.floating)):
            raise TypeError
        if number != int(number):
            raise TypeError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{file}: row {row} of column {column!r} is {value!r}, not a row index") from None


def _from_indices(parts: Mapping[str, np.ndarray], n: int, source: str, groups: Any) -> dict[str, Tensor]:
    owner = np.full(n, -1, dtype=np.int64)
    for s, name in enumerate(SPLIT_NAMES):
        rows = parts[name]
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= n):
            bad = int(rows.min()) if int(rows.min()) < 0 else int(rows.max())
            raise ValueError(f"{source}: {name} lists row {bad}, outside [0, {n}) for {n} rows")
        unique, counts = np.unique(rows, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{source}: {name} lists row {int(unique[counts > 1][0])} more than once")
        taken = owner[rows] >= 0
        if taken.any():
            row = int(rows[taken][0])
            raise ValueError(f"{source}: row {row} is in both {SPLIT_NAMES[int(owner[row])]} and {name}")
        owner[rows] = s
    return _finish(parts, n, source, groups)


def _ids(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy().reshape(-1)
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    return array.reshape(-1)


def group_positives(query_groups: Any, gallery_groups: Any = None) -> Tensor | list[Tensor]:
    """The ``positives`` argument of :func:`alignkit.functional.recall_at_k` when rows share groups.

    Gallery item j is a correct match for query i when ``gallery_groups[j] == query_groups[i]`` (e.g.
    every caption of the image a caption describes, every image of a caption's group). Without
    ``gallery_groups`` the gallery is the query rows' partners: row i of both sides has group
    ``query_groups[i]`` (the usual paired test split).

    Args:
        query_groups: (N,) ids of the queries (ints or strings; tensor, array or list).
        gallery_groups: (M,) ids of the gallery items, or None (= ``query_groups``).

    Returns:
        An (N,) int64 tensor of gallery indices when every query has exactly one positive (the fast
        path of ``recall_at_k``), else a list of N int64 tensors, each query's positives in order.

    Raises:
        ValueError: a query whose group has no gallery item (naming the first such row).

    Cost: O((N + M) log(N + M)) time, O(N + M + Σ positives) memory; never an N × M mask.
    """
    q = _ids(query_groups)
    g = q if gallery_groups is None else _ids(gallery_groups)
    if q.size == 0 or g.size == 0:
        raise ValueError(f"query_groups and gallery_groups must be non-empty, got {q.size} and {g.size}")
    codes, _ = factorize(np.concatenate([q, g]), "groups")
    qc, gc = codes[: q.size].numpy(), codes[q.size :].numpy()
    order = np.argsort(gc, kind="stable")
    ordered = gc[order]
    lo = np.searchsorted(ordered, qc, side="left")
    hi = np.searchsorted(ordered, qc, side="right")
    counts = hi - lo
    if (counts == 0).any():
        row = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"query row {row} has group {q[row].item()!r}, which no gallery row has")
    if (counts == 1).all():
        return torch.from_numpy(order[lo].astype(np.int64))
    index = torch.from_numpy(order.astype(np.int64))
    return [index[int(a) : int(b)] for a, b in zip(lo, hi, strict=True)]
