"""Users' data for the recipes: two paired feature files, or a table of (text | image path) pairs.

    from alignkit.data.sources import load_source
    src = load_source({"source": "embeddings", "a": "img.npy", "b": "txt.npy", "groups": "ids.npy"})
    src = load_source({"source": "pairs", "table": "captions.csv", "column_a": "image",
                       "column_b": "caption", "image_size": 64})
    rows = src.splits["train"][:256]
    xa, xb = src.a[rows], src.b[rows]          # float32 (B, d) features / (B, C, H, W) images

Every source gives a :class:`PairedSource`: row i of ``a`` pairs with row i of ``b``. A side is

* ``"features"`` — a (N, d) float32 tensor, or a :class:`FeatureRows` over a memory-mapped ``.npy``
  file (indexing it with rows reads just those rows);
* ``"image"`` — an :class:`ImageRows` (decoded once with Pillow, stored as uint8, indexing returns
  float32 in [0, 1] of shape (B, C, H, W));
* ``"text"`` — a list of N strings (the text tower embeds them).

``x[rows]`` with an int64 tensor of row indices works on every non-text side, as on a tensor.

Configuration keys (under ``data.`` in a recipe config; defaults in :data:`SOURCE_DEFAULTS`, one-line
descriptions in :data:`SOURCE_KEYS`) — see :func:`load_source`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import mmap
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from alignkit.data.splits import factorize, group_split, read_split_file, splits_from_labels
from alignkit.io import _LOADERS, LOADABLE_EXTENSIONS, check_budget, load_embeddings

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCE_DEFAULTS",
    "SOURCE_KEYS",
    "TABLE_EXTENSIONS",
    "FeatureRows",
    "ImageRows",
    "PairedSource",
    "as_tensor",
    "load_embeddings_source",
    "load_pairs_source",
    "load_source",
    "read_image",
    "read_table",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")
_KINDS = ("text", "image")
_EXTRA_KINDS = ("text", "image", "label", "number")
_PAGE = mmap.PAGESIZE

#: ``data.<key>`` → its default when the key is absent.
SOURCE_DEFAULTS: dict[str, Any] = {
    "source": "digits",
    "a": None,
    "b": None,
    "key_a": None,
    "key_b": None,
    "labels": None,
    "labels_key": None,
    "groups": None,
    "groups_key": None,
    "extras": {},
    "table": None,
    "column_a": None,
    "column_b": None,
    "type_a": "auto",
    "type_b": "auto",
    "label_column": None,
    "group_column": None,
    "extra_columns": [],
    "extra_types": {},
    "image_root": None,
    "image_size": 64,
    "image_mode": "RGB",
    "image_fit": "crop",
    "class_names": None,
    "prompts": None,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "split_file": None,
    "split_column": None,
    "seed": 0,
}

#: ``data.<key>`` → what it means (for the config schema and ``alignkit config`` help).
SOURCE_KEYS: dict[str, str] = {
    "source": "where the pairs come from: digits | embeddings | pairs",
    "a": (
        "embeddings: path of side A's (N, d) features (.npy memory-mapped, .npz, .pt, .safetensors, .parquet)"
    ),
    "b": "embeddings: path of side B's (N, d) features, row i paired with row i of A",
    "key_a": "embeddings: which array/tensor/column of a multi-array file A",
    "key_b": "embeddings: which array/tensor/column of a multi-array file B",
    "labels": "embeddings: optional path of (N,) class labels (ints or strings)",
    "labels_key": "embeddings: which array/column of the labels file",
    "groups": "embeddings: optional path of (N,) group ids; rows sharing one are all correct matches",
    "groups_key": "embeddings: which array/column of the groups file",
    "extras": (
        "embeddings: name → path (or {path, key}) of further (N, d) feature files, e.g. a third modality"
    ),
    "table": "pairs: path of a .csv / .tsv / .jsonl / .parquet table, one pair per row",
    "column_a": "pairs: column of side A (text, or image paths relative to the table's folder)",
    "column_b": "pairs: column of side B",
    "type_a": "pairs: auto | text | image (auto: image when every value ends in an image extension)",
    "type_b": "pairs: auto | text | image",
    "label_column": "pairs: optional column of class labels (ints or strings)",
    "group_column": "pairs: optional column of group ids (e.g. the image file for 5 captions each)",
    "extra_columns": "pairs: further columns to load (a third modality, factor columns)",
    "extra_types": "pairs: column → text | image | label | number (default: detected)",
    "image_root": "pairs: folder image paths are relative to and must stay inside (default: the table's)",
    "image_size": "pairs: images are resized to this: an int (square) or [height, width]",
    "image_mode": "pairs: RGB (3 channels) or L (grayscale, 1 channel)",
    "image_fit": "pairs: crop (scale the short side, centre-crop) or stretch (resize, ignore aspect)",
    "class_names": "optional class names (a list, or a .txt path with one per line); label i is name i",
    "prompts": "optional zero-shot prompt templates with {} for the class name (a string or a list)",
    "val_fraction": "fraction of rows for validation, in [0, 1); groups are never split",
    "test_fraction": "fraction of rows for the test split, in [0, 1); groups are never split",
    "split_file": "explicit splits: .json {train, val, test: [rows]}, .txt one name per row, or a table",
    "split_column": "pairs: column holding train / val / test per row (instead of fractions)",
    "seed": "seed of the random split",
}


# --------------------------------------------------------------------------------------------------
# Row containers


class FeatureRows(Dataset):
    """An (N, d) ``.npy`` feature file left on disk, read a batch of rows at a time.

    ``rows[i]`` is a (d,) float32 tensor; ``rows[index]`` with an int64 tensor / array / list of row
    indices, or a slice, is (B, d) float32 (a copy: the file is never written). Storage may be
    float16 / float32 / float64 or integers; only the rows asked for are read and widened.

    The header is read with ``np.load(mmap_mode="r")`` (shape, dtype, offset, no data). Rows are then
    read in one of two ways:

    * ``mode="pread"`` (default) — positional reads (``os.preadv``) of just those rows into the batch
      (runs of consecutive rows in one call). Resident memory is the batch, whatever N is; the file's
      pages sit in the kernel's page cache, which is not this process's memory.
    * ``mode="mmap"`` — fancy indexing of a read-only memory map. Every page the mapping touches counts
      towards the process's RSS; the kernel maps whole page-cache folios around each touched row
      (fault-around, up to MiBs), so a few random batches can make most of the file resident. After
      about ``release_bytes`` of reads the mapping drops its pages (``madvise(MADV_DONTNEED)``);
      ``release_bytes=None`` keeps them. Fortran-order files always use this mode.

    Args:
        path: a ``.npy`` file holding a 2-D numeric array, N ≥ 1, d ≥ 1.
        check_finite: scan the file once in 64 MiB chunks and refuse NaN / Inf (O(N·d) time).
        mode: ``"pread"`` | ``"mmap"``.
        release_bytes: see ``mode="mmap"``; default 256 MiB.

    Picklable (re-opens the file), so it works with ``DataLoader(num_workers > 0)``.
    Cost per batch of B rows: O(B·d) time and memory (plus one system call per run of rows).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        check_finite: bool = True,
        mode: str = "pread",
        release_bytes: int | None = 256 << 20,
    ) -> None:
        if mode not in ("pread", "mmap"):
            raise ValueError(f"mode must be 'pread' or 'mmap', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.release_bytes = release_bytes
        self._open()
        if check_finite:
            self._check_finite()

    def _open(self) -> None:
        file = self.path
        if file.suffix.lower() != ".npy":
            raise ValueError(f"{file}: FeatureRows reads .npy files; use alignkit.io.load_embeddings")
        if not file.is_file():
            raise ValueError(f"{file}: no such file")
        try:
            header = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            text = " ".join(str(err).split())
            if "object" in text.lower() or "pickle" in text.lower():
                raise ValueError(f"{file}: holds Python objects, which alignkit never loads") from None
            raise ValueError(f"{file}: not a readable .npy array ({text})") from None
        shape, dtype, offset = tuple(header.shape), header.dtype, int(header.offset)
        fortran = bool(header.flags.f_contiguous and not header.flags.c_contiguous)
        del header
        if dtype.kind not in "biuf":
            raise ValueError(f"{file}: array has dtype {dtype}; expected numbers")
        if len(shape) != 2:
            raise ValueError(f"{file}: array has shape {shape}, expected 2-D (N, d) rows of features")
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"{file}: array has shape {shape}; expected at least one row and one column")
        self._shape, self._dtype, self._offset = shape, dtype, offset
        self._row_bytes = int(shape[1]) * dtype.itemsize
        self._touched = 0
        self._mmap: mmap.mmap | None = None
        self._fd: int | None = None
        self._mapped = self.mode == "mmap" or fortran or not hasattr(os, "pread")
        if self._mapped:
            with open(file, "rb") as handle:
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._array = np.ndarray(
                shape, dtype, buffer=self._mmap, offset=offset, order="F" if fortran else "C"
            )
        else:
            self._fd = os.open(file, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "mode": self.mode, "release_bytes": self.release_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.mode = state["mode"]
        self.release_bytes = state["release_bytes"]
        self._open()

    def _check_finite(self) -> None:
        if self._dtype.kind != "f":
            return
        chunk = max(1, (64 << 20) // self._row_bytes)
        for start in range(0, len(self), chunk):
            block = self._read(slice(start, min(start + chunk, len(self))))
            ok = np.isfinite(block)
            if not ok.all():
                row = start + int(np.flatnonzero(~ok.all(1))[0])
                raise ValueError(f"{self.path}: row {row} has NaN or Inf; embeddings must be finite")

    def _account(self, nbytes: int) -> None:
        self._touched += nbytes
        if self.release_bytes is not None and self._touched >= self.release_bytes:
            self.release()

    def release(self) -> None:
        """``mode="mmap"``: drop the mapped pages from this process's resident memory (no-op for pread)."""
        self._touched = 0
        if self._mmap is not None and hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED)

    def _read(self, index: slice | np.ndarray) -> np.ndarray:
        """Rows ``index`` (a slice with step 1, or int64 positions in [0, N)) in the stored dtype."""
        if self._mapped:
            out = np.array(self._array[index])  # a copy
            rows = out.shape[0]
            self._account(
                rows * (self._row_bytes if isinstance(index, slice) else max(self._row_bytes, _PAGE))
            )
            return out
        if isinstance(index, slice):
            start, stop = index.start, index.stop
            out = np.empty((stop - start, self._shape[1]), dtype=self._dtype)
            self._pread(out, start, stop - start, 0)
            return out
        out = np.empty((index.size, self._shape[1]), dtype=self._dtype)
        if index.size == 0:
            return out
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1  # runs of consecutive rows: one read each
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [ordered.size])).tolist()
        first_rows = ordered[starts].tolist()
        gathered = out if bool((order == np.arange(order.size)).all()) else np.empty_like(out)
        for s, e, row in zip(starts, ends, first_rows, strict=True):
            self._pread(gathered, row, e - s, s)
        if gathered is not out:
            out[order] = gathered
        return out

    def _pread(self, out: np.ndarray, row: int, count: int, at: int) -> None:
        """Read ``count`` rows from file row ``row`` into ``out[at : at + count]``."""
        view = memoryview(out.reshape(-1).view(np.uint8))[
            at * self._row_bytes : (at + count) * self._row_bytes
        ]
        offset = self._offset + row * self._row_bytes
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise ValueError(f"{self.path}: file ends before row {row + count} that its header promises")
            done += got

    def __len__(self) -> int:
        return int(self._shape[0])

    @property
    def shape(self) -> torch.Size:
        """(N, d)."""
        return torch.Size(self._shape)

    @property
    def ndim(self) -> int:
        """2, as for the (N, d) tensor this stands for."""
        return 2

    def dim(self) -> int:
        """2 (tensor-like)."""
        return 2

    @property
    def dtype(self) -> torch.dtype:
        """torch.float32: the dtype rows come back as (see :attr:`storage_dtype` for the file's)."""
        return torch.float32

    @property
    def storage_dtype(self) -> np.dtype:
        """The dtype in the file (rows come back as float32)."""
        return self._dtype

    def __getitem__(self, index: Any) -> Tensor:
        n = len(self)
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -n <= int(index) < n:
                raise IndexError(f"row {int(index)} out of range for {n} rows")
            row = int(index) % n
            return torch.from_numpy(self._read(slice(row, row + 1))[0].astype(np.float32))
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            block = self._read(slice(start, max(start, stop)))
            return torch.from_numpy(block.astype(np.float32, copy=False))
        if isinstance(index, Tensor):
            index = index.detach().cpu().numpy()
        rows = np.asarray(index)
        if rows.dtype == bool:
            raise ValueError("FeatureRows takes integer row indices, not a boolean mask")
        if rows.dtype.kind not in "iu" and rows.size:
            raise ValueError(f"FeatureRows takes integer row indices, got dtype {rows.dtype}")
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        if rows.size and (int(rows.min()) < -n or int(rows.max()) >= n):
            raise IndexError(f"row index out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        return torch.from_numpy(self._read(rows).astype(np.float32, copy=False))

    def to_tensor(self) -> Tensor:
        """All N rows as one (N, d) float32 tensor in memory (O(N·d·4) bytes; refused above
        :func:`alignkit.io.memory_budget`)."""
        check_budget(len(self) * self._shape[1] * 4, self.path, f"all {len(self)} rows as float32")
        return self[slice(None)]

    def __repr__(self) -> str:
        where = f"{str(self.path)!r}, shape={tuple(self.shape)}"
        return f"FeatureRows({where}, storage={self._dtype}, mode={self.mode!r})"


class ImageRows(Dataset):
    """N images decoded once and kept as uint8 (N, C, H, W); ``rows[index]`` is float32 in [0, 1].

    Memory N·C·H·W bytes (a quarter of float32). ``paths`` lists the source files.
    """

    def __init__(self, pixels: Tensor, paths: Sequence[str] = ()) -> None:
        if not isinstance(pixels, Tensor) or pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError("ImageRows needs a uint8 tensor of shape (N, C, H, W)")
        self.pixels = pixels
        self.paths = list(paths)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def shape(self) -> torch.Size:
        """(N, C, H, W)."""
        return self.pixels.shape

    @property
    def ndim(self) -> int:
        """4."""
        return 4

    def dim(self) -> int:
        """4 (tensor-like)."""
        return 4

    @property
    def dtype(self) -> torch.dtype:
        """torch.float32: the dtype rows come back as (stored as uint8)."""
        return torch.float32

    def __getitem__(self, index: Any) -> Tensor:
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return self.pixels[index].to(torch.float32).div_(255.0)

    def to_tensor(self) -> Tensor:
        """All images as one (N, C, H, W) float32 tensor in [0, 1]."""
        return self[slice(None)]

    def __repr__(self) -> str:
        return f"ImageRows(shape={tuple(self.shape)})"


def as_tensor(side: Any, rows: Tensor | None = None) -> Any:
    """A side's rows as a tensor (features / images) or list (text); ``rows=None``: all rows."""
    if isinstance(side, list):
        return list(side) if rows is None else [side[int(i)] for i in rows]
    if rows is None:
        return side.to_tensor() if isinstance(side, (FeatureRows, ImageRows)) else side
    return side[rows]


# --------------------------------------------------------------------------------------------------
# The result


@dataclass
class PairedSource:
    """N aligned pairs from any source, with optional labels, groups and extra columns.

    Attributes:
        a, b: the two sides: (N, d) float32 tensor or :class:`FeatureRows` (``kind="features"``),
            :class:`ImageRows` (``"image"``), or a list of N strings (``"text"``).
        kind_a, kind_b: ``"features"`` | ``"image"`` | ``"text"``.
        labels: (N,) int64 class labels or None.
        groups: (N,) int64 group codes 0..G-1 or None; rows sharing a code match each other.
        splits: ``"train"`` / ``"val"`` / ``"test"`` → sorted int64 row indices; no group straddles.
        extras: name → a further side (as ``a``) or an (N,) int64 / (N,) or (N, d) float32 tensor.
        extra_kinds: name → ``"features"`` | ``"image"`` | ``"text"`` | ``"label"`` | ``"number"``.
        class_names: names of labels 0..K-1 (given, or the sorted distinct string labels) or None.
        prompts: per class, its zero-shot prompts (templates filled with the class name) or None.
        names: what the two sides are called (file stems or column names), for reports.
        source: ``"embeddings"`` | ``"pairs"``.
    """

    a: Any
    b: Any
    kind_a: str
    kind_b: str
    labels: Tensor | None = None
    groups: Tensor | None = None
    splits: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    extra_kinds: dict[str, str] = field(default_factory=dict)
    class_names: list[str] | None = None
    prompts: list[list[str]] | None = None
    names: tuple[str, str] = ("a", "b")
    source: str = "embeddings"

    def __len__(self) -> int:
        return len(self.a)

    @property
    def n(self) -> int:
        """Number of pairs N."""
        return len(self.a)

    def dim(self, side: str) -> int | None:
        """Feature width of side ``"a"`` / ``"b"`` (None for text and images)."""
        value, kind = (self.a, self.kind_a) if side == "a" else (self.b, self.kind_b)
        return int(value.shape[1]) if kind == "features" else None


# --------------------------------------------------------------------------------------------------
# Tables


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def read_table(path: str | os.PathLike[str]) -> dict[str, list[Any]]:
    """A ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` table as column name → list of N values.

    CSV / TSV values are strings (UTF-8, a BOM is ignored, the first line is the header); JSONL is one
    JSON object per line (a key missing from a row reads as None); parquet values are Python scalars.

    Raises:
        ValueError: one line naming the file: missing, unknown extension, unreadable, no header,
            duplicate column names, a CSV row with more or fewer cells than the header, a JSONL line
            that is not an object, or no rows.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise ValueError(
            f"{file}: unknown table extension {suffix or '(none)'!r}; use {', '.join(TABLE_EXTENSIONS)}"
        )
    if not file.is_file():
        raise ValueError(f"{file}: no such table file")
    try:
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(
                    f"{file}: reading .parquet needs pyarrow (pip install 'alignkit[parquet]')"
                ) from None
            columns = pq.read_table(file).to_pydict()
        elif suffix == ".jsonl":
            columns = _read_jsonl(file)
        else:
            columns = _read_csv(file, "\t" if suffix == ".tsv" else ",")
    except ValueError as err:
        if str(err).startswith(str(file)):
            raise
        raise ValueError(f"{file}: not a readable {suffix[1:]} table ({_one_line(err)})") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{file}: not a readable {suffix[1:]} table ({_one_line(err)})") from None
    except Exception as err:  # pyarrow's ArrowInvalid and friends
        raise ValueError(f"{file}: not a readable {suffix[1:]} table ({_one_line(err)})") from None
    if not columns:
        raise ValueError(f"{file}: table has no columns")
    if not any(len(v) for v in columns.values()):
        raise ValueError(f"{file}: table has no rows")
    return columns


def _read_csv(file: Path, delimiter: str) -> dict[str, list[Any]]:
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{file}: table has no header line")
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise ValueError(f"{file}: duplicate column name(s) {dupes}")
        columns: dict[str, list[Any]] = {h: [] for h in header}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{file}: line {line} has {len(row)} cells but the header has {len(header)} columns"
                )
            for name, cell in zip(header, row, strict=True):
                columns[name].append(cell)
    return columns


def _read_jsonl(file: Path) -> dict[str, list[Any]]:
    records = []
    with open(file, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}: line {line_no} is not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{file}: line {line_no} is a {type(obj).__name__}, expected a JSON object")
            records.append(obj)
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    return {name: [record.get(name) for record in records] for name in names}


def _column(table: Mapping[str, list[Any]], name: Any, file: Path, key: str) -> list[Any]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"data.{key} must name a column of {file}; columns: {', '.join(table)}")
    if name not in table:
        raise ValueError(f"{file}: no column {name!r} (data.{key}); columns: {', '.join(table)}")
    return table[name]


def _is_image_path(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().endswith(IMAGE_EXTENSIONS)


def _detect(values: Sequence[Any], file: Path, column: str, option: str) -> str:
    flags = [_is_image_path(v) for v in values]
    if all(flags):
        return "image"
    if any(flags):
        first = flags.index(False)
        raise ValueError(
            f"{file}: column {column!r} mixes image paths and other values (row {first}: {values[first]!r}); "
            f"set data.{option} to text or image"
        )
    return "text"


def _texts(values: Sequence[Any], file: Path, column: str) -> list[str]:
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{file}: row {i} of column {column!r} is {value!r}, expected non-empty text")
        out.append(value)
    return out


# --------------------------------------------------------------------------------------------------
# Images


def _image_size(value: Any) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size = (int(value), int(value))
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        size = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"data.image_size must be an int or [height, width], got {value!r}")
    if min(size) < 1 or max(size) > 4096:
        raise ValueError(f"data.image_size must be between 1 and 4096 pixels, got {value!r}")
    return size


def read_image(
    path: str | os.PathLike[str], size: int | Sequence[int] = 64, mode: str = "RGB", fit: str = "crop"
) -> np.ndarray:
    """One image file as a uint8 (C, H, W) array, read with Pillow.

    EXIF orientation is applied; the image is converted to ``mode`` (``"RGB"``: C = 3, ``"L"``:
    grayscale, C = 1; transparency is dropped) and brought to ``size`` (H, W): ``fit="crop"`` scales
    the shorter side to fit and crops the centre (as CLIP's preprocessing), ``"stretch"`` resizes to
    (H, W) ignoring the aspect ratio. Bicubic resampling.

    Raises:
        ValueError: naming the file when it is missing or Pillow cannot decode it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    height, width = _image_size(size)
    if mode not in ("RGB", "L"):
        raise ValueError(f"data.image_mode must be 'RGB' or 'L', got {mode!r}")
    if fit not in ("crop", "stretch"):
        raise ValueError(f"data.image_fit must be 'crop' or 'stretch', got {fit!r}")
    file = Path(path)
    try:
        with Image.open(file) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            image = image.convert(mode)
    except FileNotFoundError:
        raise ValueError(f"{file}: image file does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{file}: unreadable image ({_one_line(err)})") from None
    resample = Image.Resampling.BICUBIC
    if fit == "stretch" or image.size == (width, height):
        image = image.resize((width, height), resample) if image.size != (width, height) else image
    else:
        w, h = image.size
        scale = max(width / w, height / h)
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
        image = image.resize((new_w, new_h), resample)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.array(array.transpose(2, 0, 1), order="C")  # a writable copy


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _load_images(
    values: Sequence[Any], root: Path, file: Path, column: str, size: tuple[int, int], mode: str, fit: str
) -> ImageRows:
    root_real = os.path.realpath(root)
    channels = 3 if mode == "RGB" else 1
    check_budget(
        len(values) * channels * size[0] * size[1], file, f"{len(values)} images of column {column!r}"
    )
    pixels = torch.empty((len(values), channels, *size), dtype=torch.uint8)
    paths = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{file}: row {i} of column {column!r} is {value!r}, expected an image path")
        candidate = Path(value.strip())
        candidate = candidate if candidate.is_absolute() else root / candidate
        real = os.path.realpath(candidate)
        if not _inside(real, root_real):
            raise ValueError(
                f"{file}: row {i} of column {column!r}: image path {value!r} leads to {real}, outside "
                f"the image folder {root_real}"
            )
        if not os.path.isfile(real):
            raise ValueError(f"{candidate}: image file does not exist (row {i}, column {column!r} of {file})")
        pixels[i] = torch.from_numpy(read_image(real, size, mode, fit))
        paths.append(str(candidate))
    return ImageRows(pixels, paths)


# --------------------------------------------------------------------------------------------------
# Labels, groups, class names


def _read_ids(path: Any, key: Any, what: str, base: Path | None) -> list[Any] | np.ndarray:
    """A 1-D column of ids / labels from a file (any embedding format, a table column, or .txt lines)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"data.{what} must be a file path, got {type(path).__name__}")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"data.{what}_key must be a string, got {key!r}")
    file = _resolve(path, base)
    suffix = file.suffix.lower()
    if not file.is_file():
        raise ValueError(f"{file}: no such file (data.{what})")
    if suffix == ".txt":
        return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix in TABLE_EXTENSIONS:
        table = read_table(file)
        if key is None:
            if len(table) != 1:
                raise ValueError(
                    f"{file}: has {len(table)} columns ({', '.join(table)}); choose one with data.{what}_key"
                )
            key = next(iter(table))
        return _column(table, key, file, f"{what}_key")
    if suffix in _LOADERS:
        raw = _LOADERS[suffix](file, key)
        array = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else np.asarray(raw)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"{file}: data.{what} must be 1-D (one value per row), got shape {array.shape}")
        return array
    raise ValueError(
        f"{file}: unknown extension {suffix or '(none)'!r} for data.{what}; "
        f"use {', '.join((*LOADABLE_EXTENSIONS, *TABLE_EXTENSIONS, '.txt'))}"
    )


def _labels(
    values: Any, n: int, where: str, class_names: list[str] | None
) -> tuple[Tensor, list[str] | None]:
    """Labels as (N,) int64 and the class names: integer labels as they are, string labels by name."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
        codes = values.astype(np.int64)
        names = class_names
    elif isinstance(values, np.ndarray) and values.dtype.kind == "f":
        if not np.isfinite(values).all() or not (values == np.round(values)).all():
            raise ValueError(f"{where}: labels must be integers or strings, got fractional or NaN values")
        codes = values.astype(np.int64)
        names = class_names
    else:
        items = list(values)
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in items):
            first = next(
                i for i, v in enumerate(items) if v is None or (isinstance(v, str) and not v.strip())
            )
            raise ValueError(f"{where}: row {first} has no label")
        as_int = _maybe_ints(items)
        if as_int is not None:
            codes, names = as_int, class_names
        elif class_names is not None:
            lookup = {name: i for i, name in enumerate(class_names)}
            unknown = sorted({str(v) for v in items if str(v) not in lookup})
            if unknown:
                raise ValueError(f"{where}: label(s) {unknown[:5]} are not in data.class_names")
            codes, names = np.asarray([lookup[str(v)] for v in items], dtype=np.int64), class_names
        else:
            tensor, uniques = factorize([str(v) for v in items], "labels")
            codes, names = tensor.numpy(), [str(u) for u in uniques]
    if codes.shape != (n,):
        raise ValueError(f"{where}: has {codes.shape[0]} labels for {n} rows; need one label per row")
    if codes.size and int(codes.min()) < 0:
        raise ValueError(f"{where}: labels must be ≥ 0, got {int(codes.min())}")
    if names is not None and codes.size and int(codes.max()) >= len(names):
        raise ValueError(
            f"{where}: label {int(codes.max())} has no class name (data.class_names lists {len(names)})"
        )
    return torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)), names


def _maybe_ints(items: Sequence[Any]) -> np.ndarray | None:
    out = []
    for v in items:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, np.integer)):
            out.append(int(v))
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            out.append(int(v.strip()))
        elif isinstance(v, float) and np.isfinite(v) and v == int(v):
            out.append(int(v))
        else:
            return None
    return np.asarray(out, dtype=np.int64)


def _groups(values: Any, n: int, where: str) -> Tensor:
    codes, _ = factorize(values, f"{where} groups")
    if codes.shape[0] != n:
        raise ValueError(f"{where}: has {codes.shape[0]} group ids for {n} rows; need one per row")
    return codes


def _class_names(value: Any, base: Path | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        file = _resolve(value, base)
        if not file.is_file():
            raise ValueError(f"{file}: no such file (data.class_names)")
        names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        names = [str(v) for v in value]
    else:
        raise ValueError(f"data.class_names must be a list of strings or a .txt path, got {value!r}")
    if not names:
        raise ValueError("data.class_names is empty")
    if len(set(names)) != len(names):
        raise ValueError("data.class_names has duplicate names")
    return names


def _prompts(value: Any, class_names: list[str] | None) -> list[list[str]] | None:
    if value is None:
        return None
    templates = [value] if isinstance(value, str) else value
    if (
        not isinstance(templates, Sequence)
        or not templates
        or not all(isinstance(t, str) and "{}" in t for t in templates)
    ):
        raise ValueError(f"data.prompts must be a template or a list of templates with '{{}}', got {value!r}")
    if class_names is None:
        raise ValueError("data.prompts needs class names: set data.class_names or use string labels")
    return [[t.replace("{}", name) for t in templates] for name in class_names]


def _resolve(path: Any, base: Path | None) -> Path:
    file = Path(os.path.expanduser(os.fspath(path)))
    return file if file.is_absolute() or base is None else base / file


def _splits(
    cfg: Mapping[str, Any], n: int, groups: Tensor | None, base: Path | None, table: Any = None
) -> dict[str, Tensor]:
    split_file, split_column = cfg.get("split_file"), cfg.get("split_column")
    if split_file is not None and split_column is not None:
        raise ValueError("set data.split_file or data.split_column, not both")
    if split_file is not None:
        return read_split_file(_resolve(split_file, base), n, groups)
    if split_column is not None:
        if table is None:
            raise ValueError("data.split_column applies to the pairs source; use data.split_file")
        values, file = table
        return splits_from_labels(_column(values, split_column, file, "split_column"), n, f"{file}", groups)
    return group_split(
        n,
        groups,
        cfg.get("val_fraction", SOURCE_DEFAULTS["val_fraction"]),
        cfg.get("test_fraction", SOURCE_DEFAULTS["test_fraction"]),
        cfg.get("seed", SOURCE_DEFAULTS["seed"]),
    )


# --------------------------------------------------------------------------------------------------
# Sources


def _features(path: Any, key: Any, option: str, base: Path | None) -> Tensor | FeatureRows:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"data.{option} must be the path of a feature file, got {path!r}")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"data.key_{option} must be a string, got {key!r}")
    file = _resolve(path, base)
    if file.suffix.lower() == ".npy":
        if key is not None:
            raise ValueError(f"{file}: a .npy file holds one array; drop data.key_{option}={key!r}")
        return FeatureRows(file)
    return load_embeddings(file, key=key).to(torch.float32)


def load_embeddings_source(cfg: Mapping[str, Any], base: Path | None = None) -> PairedSource:
    """The ``embeddings`` source: data.a / data.b feature files (+ labels, groups, extras). See
    :func:`load_source`."""
    for option in ("a", "b"):
        if cfg.get(option) is None:
            raise ValueError(f"data.source 'embeddings' needs data.{option}, the path of a feature file")
    a = _features(cfg["a"], cfg.get("key_a"), "a", base)
    b = _features(cfg["b"], cfg.get("key_b"), "b", base)
    path_a, path_b = _resolve(cfg["a"], base), _resolve(cfg["b"], base)
    if len(a) != len(b):
        raise ValueError(
            f"data.a {path_a} has {len(a)} rows but data.b {path_b} has {len(b)}; "
            "row i of one must pair with row i of the other"
        )
    n = len(a)
    class_names = _class_names(cfg.get("class_names"), base)
    labels = None
    if cfg.get("labels") is not None:
        where = str(_resolve(cfg["labels"], base))
        labels, class_names = _labels(
            _read_ids(cfg["labels"], cfg.get("labels_key"), "labels", base), n, where, class_names
        )
    groups = None
    if cfg.get("groups") is not None:
        where = str(_resolve(cfg["groups"], base))
        groups = _groups(_read_ids(cfg["groups"], cfg.get("groups_key"), "groups", base), n, where)
    extras: dict[str, Any] = {}
    extra_cfg = cfg.get("extras") or {}
    if not isinstance(extra_cfg, Mapping):
        raise ValueError(f"data.extras must map names to feature files, got {extra_cfg!r}")
    for name, spec in extra_cfg.items():
        path, key = (spec.get("path"), spec.get("key")) if isinstance(spec, Mapping) else (spec, None)
        value = _features(path, key, f"extras.{name}", base)
        if len(value) != n:
            raise ValueError(
                f"data.extras.{name} {_resolve(path, base)} has {len(value)} rows but data.a {path_a} has {n}"
            )
        extras[str(name)] = value
    return PairedSource(
        a=a,
        b=b,
        kind_a="features",
        kind_b="features",
        labels=labels,
        groups=groups,
        splits=_splits(cfg, n, groups, base),
        extras=extras,
        extra_kinds=dict.fromkeys(extras, "features"),
        class_names=class_names,
        prompts=_prompts(cfg.get("prompts"), class_names),
        names=(path_a.stem, path_b.stem),
        source="embeddings",
    )


def _side(
    table: Mapping[str, list[Any]],
    column: str,
    kind: str,
    file: Path,
    option: str,
    root: Path,
    image: tuple[tuple[int, int], str, str],
) -> tuple[Any, str]:
    values = table[column]
    if kind == "auto":
        kind = _detect(values, file, column, option)
    if kind == "image":
        return _load_images(values, root, file, column, *image), "image"
    return _texts(values, file, column), "text"


def load_pairs_source(cfg: Mapping[str, Any], base: Path | None = None) -> PairedSource:
    """The ``pairs`` source: a table with columns data.column_a / data.column_b. See :func:`load_source`."""
    if cfg.get("table") is None:
        raise ValueError("data.source 'pairs' needs data.table, a .csv/.tsv/.jsonl/.parquet table")
    file = _resolve(cfg["table"], base)
    table = read_table(file)
    n = max(len(v) for v in table.values())
    root = _resolve(cfg["image_root"], base) if cfg.get("image_root") is not None else file.parent
    if cfg.get("image_root") is not None and not root.is_dir():
        raise ValueError(f"data.image_root {root} is not a folder")
    image = (
        _image_size(cfg.get("image_size", SOURCE_DEFAULTS["image_size"])),
        cfg.get("image_mode", SOURCE_DEFAULTS["image_mode"]),
        cfg.get("image_fit", SOURCE_DEFAULTS["image_fit"]),
    )
    if image[1] not in ("RGB", "L"):
        raise ValueError(f"data.image_mode must be 'RGB' or 'L', got {image[1]!r}")
    if image[2] not in ("crop", "stretch"):
        raise ValueError(f"data.image_fit must be 'crop' or 'stretch', got {image[2]!r}")
    sides = []
    for option in ("a", "b"):
        column = cfg.get(f"column_{option}")
        _column(table, column, file, f"column_{option}")
        kind = cfg.get(f"type_{option}", "auto")
        if kind not in ("auto", *_KINDS):
            raise ValueError(f"data.type_{option} must be auto, text or image, got {kind!r}")
        sides.append(_side(table, column, kind, file, f"type_{option}", root, image))
    class_names = _class_names(cfg.get("class_names"), base)
    labels = None
    if cfg.get("label_column") is not None:
        values = _column(table, cfg["label_column"], file, "label_column")
        labels, class_names = _labels(values, n, f"{file} column {cfg['label_column']!r}", class_names)
    groups = None
    if cfg.get("group_column") is not None:
        values = _column(table, cfg["group_column"], file, "group_column")
        groups = _groups(values, n, f"{file} column {cfg['group_column']!r}")
    extra_columns = cfg.get("extra_columns") or []
    extra_types = cfg.get("extra_types") or {}
    if isinstance(extra_columns, str) or not isinstance(extra_columns, Sequence):
        raise ValueError(f"data.extra_columns must be a list of column names, got {extra_columns!r}")
    if not isinstance(extra_types, Mapping):
        raise ValueError(f"data.extra_types must map column names to types, got {extra_types!r}")
    stray = sorted(set(extra_types) - set(extra_columns))
    if stray:
        raise ValueError(f"data.extra_types names {stray}, which are not in data.extra_columns")
    extras: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for column in extra_columns:
        values = _column(table, column, file, "extra_columns")
        kind = extra_types.get(column, "auto")
        if kind not in ("auto", *_EXTRA_KINDS):
            raise ValueError(f"data.extra_types[{column!r}] must be {' | '.join(_EXTRA_KINDS)}, got {kind!r}")
        extras[column], kinds[column] = _extra(values, kind, file, column, root, image)
    return PairedSource(
        a=sides[0][0],
        b=sides[1][0],
        kind_a=sides[0][1],
        kind_b=sides[1][1],
        labels=labels,
        groups=groups,
        splits=_splits(cfg, n, groups, base, (table, file)),
        extras=extras,
        extra_kinds=kinds,
        class_names=class_names,
        prompts=_prompts(cfg.get("prompts"), class_names),
        names=(str(cfg["column_a"]), str(cfg["column_b"])),
        source="pairs",
    )


def _extra(
    values: list[Any], kind: str, file: Path, column: str, root: Path, image: tuple[tuple[int, int], str, str]
) -> tuple[Any, str]:
    if kind == "auto":
        if all(_is_image_path(v) for v in values):
            kind = "image"
        elif _maybe_ints(values) is not None:
            kind = "label"
        elif _floats(values) is not None:
            kind = "number"
        else:
            kind = "text"
    if kind == "image":
        return _load_images(values, root, file, column, *image), "image"
    if kind == "text":
        return _texts(values, file, column), "text"
    if kind == "label":
        ints = _maybe_ints(values)
        if ints is None:
            codes, _ = factorize([str(v) for v in values], f"{file} column {column!r}")
            return codes, "label"
        return torch.from_numpy(ints), "label"
    numbers = _floats(values)
    if numbers is None:
        raise ValueError(f"{file}: column {column!r} is declared number but holds non-numeric values")
    return torch.from_numpy(numbers), "number"


def _floats(values: Sequence[Any]) -> np.ndarray | None:
    try:
        array = np.asarray(
            [float(v) if not isinstance(v, (list, tuple)) else [float(x) for x in v] for v in values],
            dtype=np.float32,
        )
    except (TypeError, ValueError):
        return None
    if array.ndim not in (1, 2) or not np.isfinite(array).all():
        return None
    return array


def load_source(cfg_data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> PairedSource:
    """Load the pairs a recipe's ``data:`` section names, with their splits.

    ``data.source`` picks the reader (keys absent from ``cfg_data`` take :data:`SOURCE_DEFAULTS`;
    keys of other sources are ignored):

    * ``embeddings`` — ``a``, ``b`` (feature files; ``.npy`` is memory-mapped as :class:`FeatureRows`,
      the others are read with :func:`alignkit.io.load_embeddings`), ``key_a``, ``key_b``; optional
      ``labels`` / ``labels_key``, ``groups`` / ``groups_key`` (any feature format, a table column, or a
      ``.txt`` with one value per line), ``extras`` (name → path or ``{path, key}``).
    * ``pairs`` — ``table`` (.csv / .tsv / .jsonl / .parquet), ``column_a``, ``column_b``, ``type_a``,
      ``type_b`` (auto | text | image), ``image_root``, ``image_size``, ``image_mode`` (RGB | L),
      ``image_fit`` (crop | stretch); optional ``label_column``, ``group_column``, ``extra_columns``,
      ``extra_types``.
    * both — ``class_names``, ``prompts``; the split: ``split_file``, or (pairs) ``split_column``, else
      ``val_fraction`` / ``test_fraction`` / ``seed`` with :func:`alignkit.data.splits.group_split`.

    Args:
        cfg_data: the ``data`` mapping of a config.
        base_dir: folder relative paths are resolved against (e.g. the config file's); default: the
            working directory.

    Raises:
        ValueError: one line naming the key or file and the problem (missing column with the ones
            available, unreadable image, image path outside the image folder, row-count mismatch, …).
    """
    if not isinstance(cfg_data, Mapping):
        raise ValueError(f"the data section must be a mapping, got {type(cfg_data).__name__}")
    base = None if base_dir is None else Path(base_dir)
    source = cfg_data.get("source", SOURCE_DEFAULTS["source"])
    if source == "embeddings":
        return load_embeddings_source(cfg_data, base)
    if source == "pairs":
        return load_pairs_source(cfg_data, base)
    if source == "digits":
        raise ValueError("data.source 'digits' is read by alignkit.recipes.load_data, not load_source")
    raise ValueError(f"data.source must be digits, embeddings or pairs, got {source!r}")
