"""Reading and writing embedding files: N×d arrays, one row per sample.

    from alignkit.io import load_embeddings, save_embeddings
    x = load_embeddings("images.npy")                        # (N, d) torch.Tensor
    y = load_embeddings("captions.safetensors", key="text")  # one tensor of several
    save_embeddings("out.safetensors", x)                    # atomic write

Supported formats (by extension):

* ``.npy`` — one array, read with ``allow_pickle=False``: object arrays are refused, never unpickled.
* ``.npz`` — one array, or the one named ``key`` (the error lists the keys when it is ambiguous).
* ``.pt`` / ``.pth`` — a tensor (or numpy array), or a dict of them with ``key``; read with
  ``torch.load(weights_only=True)``, so arbitrary pickled objects are refused.
* ``.safetensors`` — a dict of tensors; ``key`` as for ``.npz``.
* ``.parquet`` (needs pyarrow) — either one list / fixed-size-list column holding the vectors, or all
  numeric columns as the features (non-numeric columns such as string ids are then ignored);
  ``key`` names the column to use.

What comes back is a CPU ``torch.Tensor`` of shape (N, d) with N ≥ 1 and d ≥ 1 and only finite
values: float32 and float64 are kept, float16 / bfloat16 are widened to float32, integer and bool
arrays are converted to float32. Every problem — missing file, unknown extension, a file that does
not hold an array, object / string / complex dtype, a 1-D or 3-D array, no rows, NaN or Inf — raises
``ValueError`` with one line that names the file and says what to do.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["LOADABLE_EXTENSIONS", "SAVABLE_EXTENSIONS", "atomic_write", "load_embeddings", "save_embeddings"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success flush, fsync and ``os.replace``
    it over ``path`` (a reader sees the old file or the new one, never half of one); on any error
    remove it and leave ``path`` untouched.

    ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text). The directory must exist (``ValueError`` otherwise).
    """
    file = Path(path)
    directory = file.parent if str(file.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"{file}: directory {directory} does not exist")
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    handle, tmp_name = tempfile.mkstemp(prefix=f".{file.name}.", suffix=f".tmp{file.suffix}", dir=directory)
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_name, file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


LOADABLE_EXTENSIONS = (".npy", ".npz", ".pt", ".pth", ".safetensors", ".parquet")
SAVABLE_EXTENSIONS = (".npy", ".pt", ".pth", ".safetensors")
_SAFETENSORS_KEY = "embeddings"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _pick(entries: Mapping[str, Any], key: str | None, path: Path, what: str) -> Any:
    """The entry named ``key``, or the only entry; a clear error listing the names otherwise."""
    names = sorted(entries)
    if key is not None:
        if key not in entries:
            raise ValueError(f"{path}: no {what} named {key!r}; it has {_names(names)}")
        return entries[key]
    if not names:
        raise ValueError(f"{path}: holds no {what}s")
    if len(names) > 1:
        raise ValueError(f"{path}: holds {len(names)} {what}s ({_names(names)}); choose one with key=")
    return entries[names[0]]


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f", … ({len(names)} in all)" if len(names) > 20 else "")


def _load_npy(path: Path, key: str | None) -> Any:
    if key is not None:
        raise ValueError(f"{path}: a .npy file holds one array; key={key!r} applies to .npz/.pt/.safetensors")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):  # object array or pickled file: refused, never unpickled
            raise ValueError(
                f"{path}: holds a pickled object (e.g. a numpy object array), which alignkit never loads; "
                "save a numeric array instead"
            ) from None
        raise ValueError(f"{path}: not a readable .npy array ({_one_line(err)})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({_one_line(err)})") from None


def _load_npz(path: Path, key: str | None) -> Any:
    try:
        with np.load(path, allow_pickle=False) as archive:
            name = _pick({name: name for name in archive.files}, key, path, "array")
            return archive[name]
    except ValueError as err:
        if str(err).startswith(f"{path}:"):  # our own message from _pick
            raise
        if "pickle" in str(err):
            raise ValueError(
                f"{path}: holds a pickled object (e.g. a numpy object array), which alignkit never loads; "
                "save a numeric array instead"
            ) from None
        raise ValueError(f"{path}: not a readable .npz archive ({_one_line(err)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable .npz archive ({_one_line(err)})") from None


def _load_pt(path: Path, key: str | None) -> Any:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, … for bad files
        raise ValueError(
            f"{path}: not a readable tensor file for torch.load(weights_only=True) ({_one_line(err)})"
        ) from None
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError(f"{path}: holds a dict whose keys are not all strings; save a tensor instead")
        return _pick(obj, key, path, "entry")
    if key is not None:
        raise ValueError(f"{path}: holds a single {type(obj).__name__}, not a dict; drop key={key!r}")
    return obj


def _load_safetensors(path: Path, key: str | None) -> Any:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError for a truncated or foreign file
        raise ValueError(f"{path}: not a readable .safetensors file ({_one_line(err)})") from None
    return _pick(tensors, key, path, "tensor")


def _load_parquet(path: Path, key: str | None) -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"{path}: reading .parquet needs pyarrow (pip install 'alignkit[parquet]')"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # ArrowInvalid and friends for a truncated or foreign file
        raise ValueError(f"{path}: not a readable .parquet file ({_one_line(err)})") from None

    def is_list(t: Any) -> bool:
        return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))

    def is_number(t: Any) -> bool:
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))

    columns = {name: table.column(name) for name in table.column_names}
    if key is not None:
        chosen = _pick(columns, key, path, "column")
        if is_list(chosen.type):
            return _vectors(chosen, key, path, pa)
        if is_number(chosen.type):
            return _numeric(chosen).reshape(-1, 1)
        raise ValueError(f"{path}: column {key!r} has type {chosen.type}, not numbers or vectors of numbers")
    lists = [name for name, col in columns.items() if is_list(col.type)]
    if len(lists) > 1:
        raise ValueError(f"{path}: has {len(lists)} vector columns ({_names(lists)}); choose one with key=")
    if lists:
        return _vectors(columns[lists[0]], lists[0], path, pa)
    numeric = [name for name, col in columns.items() if is_number(col.type)]
    if not numeric:
        raise ValueError(
            f"{path}: has no vector column and no numeric column (columns: {_names(list(columns))})"
        )
    return np.stack([_numeric(columns[name]) for name in numeric], axis=1)


def _numeric(column: Any) -> np.ndarray:
    """A numeric column as a 1-D numpy array; nulls become NaN (and are then reported)."""
    if column.null_count:
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _vectors(column: Any, name: str, path: Path, pa: Any) -> np.ndarray:
    """A list / fixed-size-list column of equal-length numeric vectors as an (N, d) array."""
    array = column.combine_chunks()
    if array.null_count:
        raise ValueError(
            f"{path}: column {name!r} has {array.null_count} null row(s); every row needs a vector"
        )
    value_type = array.type.value_type
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise ValueError(f"{path}: column {name!r} holds {value_type} values, not numbers")
    n = len(array)
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
    else:
        lengths = np.asarray(array.value_lengths().to_numpy(zero_copy_only=False))
        if n and lengths.min() != lengths.max():
            raise ValueError(
                f"{path}: column {name!r} has vectors of lengths {lengths.min()} to {lengths.max()}; "
                "all rows need the same length"
            )
        width = int(lengths[0]) if n else 0
    values = (
        array.flatten()
    )  # respects slicing offsets; for fixed-size lists, the list_size values of each row
    flat = np.asarray(values.to_numpy(zero_copy_only=False))
    if values.null_count:
        flat = flat.astype(np.float64)  # nulls inside vectors become NaN and are reported
    return flat.reshape(n, width)


_LOADERS = {
    ".npy": _load_npy,
    ".npz": _load_npz,
    ".pt": _load_pt,
    ".pth": _load_pt,
    ".safetensors": _load_safetensors,
    ".parquet": _load_parquet,
}


def _to_tensor(obj: Any, path: Path) -> Tensor:
    """An array-like read from ``path`` as a validated (N, d) float tensor."""
    if isinstance(obj, np.ndarray):
        kind = obj.dtype.kind
        if kind not in "biuf":
            what = {"O": "object", "U": "string", "S": "bytes", "V": "structured", "c": "complex"}
            raise ValueError(
                f"{path}: array has {what.get(kind, 'non-numeric')} dtype {obj.dtype}; "
                "expected a numeric (float or integer) array"
            )
        if kind != "f" or obj.dtype == np.float16:
            obj = obj.astype(np.float32)
        elif obj.dtype not in (np.float32, np.float64):  # e.g. longdouble
            obj = obj.astype(np.float64)
        tensor = torch.from_numpy(np.array(obj, copy=True) if not obj.flags.writeable else obj)
    elif isinstance(obj, Tensor):
        if obj.is_complex():
            raise ValueError(f"{path}: tensor has complex dtype {obj.dtype}; expected a real-valued tensor")
        tensor = obj.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        if tensor.dtype not in (torch.float32, torch.float64):  # integer, bool, half, bfloat16, float8
            tensor = tensor.to(torch.float32)
    else:
        raise ValueError(
            f"{path}: holds a {type(obj).__name__}, not an array or tensor; expected an (N, d) array"
        )
    shape = str(tuple(tensor.shape))
    if tensor.dim() == 1:
        raise ValueError(
            f"{path}: array is 1-D with shape {shape}, expected (N, d) rows of features; "
            "reshape it, e.g. a.reshape(-1, 1) for one feature per sample or a.reshape(1, -1) for one sample"
        )
    if tensor.dim() != 2:
        raise ValueError(
            f"{path}: array has shape {shape}, expected 2-D (N, d) rows of features; "
            "reshape it, e.g. a.reshape(len(a), -1), or pool the extra axes"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{path}: array has no rows (shape {shape}); expected at least one sample")
    if tensor.shape[1] == 0:
        raise ValueError(f"{path}: array has no feature columns (shape {shape})")
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        nan = int(torch.isnan(tensor).sum())
        inf = int((~finite).sum()) - nan
        rows = int((~finite).any(1).sum())
        raise ValueError(
            f"{path}: array of shape {shape} has {nan} NaN and {inf} Inf value(s) in {rows} row(s); "
            "embeddings must be finite"
        )
    return tensor


def load_embeddings(path: str | os.PathLike[str], key: str | None = None) -> Tensor:
    """Read an (N, d) embedding matrix from a ``.npy``, ``.npz``, ``.pt``/``.pth``, ``.safetensors`` or
    ``.parquet`` file.

    Args:
        path: the file; its extension picks the format.
        key: which array of a multi-array file (``.npz`` name, ``.pt`` dict key, ``.safetensors``
            tensor name, ``.parquet`` column); not needed when the file holds exactly one.

    Returns:
        A CPU tensor (N, d), N ≥ 1, d ≥ 1, all finite; float32 or float64 as stored, float32 for
        half-precision, integer or bool data.

    Raises:
        ValueError: one line naming the file and the problem (see the module docstring); pickled
            content is refused, never executed.

    Cost: reads the file once; O(N·d) memory (one more copy when a dtype conversion is needed).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"key must be a str or None, got {type(key).__name__}")
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in _LOADERS:
        raise ValueError(
            f"{file}: unknown extension {suffix or '(none)'!r}; supported: {', '.join(LOADABLE_EXTENSIONS)}"
        )
    if not file.exists():
        raise ValueError(f"{file}: no such file")
    if not file.is_file():
        raise ValueError(f"{file}: not a regular file")
    return _to_tensor(_LOADERS[suffix](file, key), file)


def save_embeddings(
    path: str | os.PathLike[str], tensor: Tensor | np.ndarray, key: str = _SAFETENSORS_KEY
) -> None:
    """Write ``tensor`` to ``path`` atomically (``.npy``, ``.pt``/``.pth`` or ``.safetensors``).

    The data go to a temporary file in the destination's directory, which is flushed, synced and
    then renamed over ``path`` with ``os.replace``: a reader sees either the old file or the complete
    new one, never a partial write. The tensor is stored detached, on the CPU, contiguous;
    ``.safetensors`` stores it under ``key`` (default ``"embeddings"``), which
    :func:`load_embeddings` finds without a key since it is the only tensor.

    Args:
        path: destination; its extension picks the format.
        tensor: a torch.Tensor or numpy array (any shape; :func:`load_embeddings` expects (N, d)).
        key: tensor name inside a ``.safetensors`` file.

    Cost: O(size) time, one serialised copy in memory for ``.pt``/``.safetensors``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in SAVABLE_EXTENSIONS:
        raise ValueError(
            f"{file}: cannot save with extension {suffix or '(none)'!r}; "
            f"supported: {', '.join(SAVABLE_EXTENSIONS)}"
        )
    if isinstance(tensor, np.ndarray):
        if tensor.dtype.kind not in "biuf":
            raise ValueError(f"tensor must be numeric, got numpy dtype {tensor.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    if not isinstance(tensor, Tensor):
        raise ValueError(f"tensor must be a torch.Tensor or numpy array, got {type(tensor).__name__}")
    data = tensor.detach().cpu().contiguous()
    if suffix == ".npy" and data.dtype == torch.bfloat16:
        raise ValueError(
            f"{file}: numpy has no bfloat16; convert with tensor.float() or save as .pt/.safetensors"
        )
    with atomic_write(file) as out:
        if suffix == ".npy":
            np.save(out, data.numpy(), allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.torch import save

            out.write(save({key: data}))
        else:
            torch.save(data, out)
