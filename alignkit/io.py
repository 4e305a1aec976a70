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

Hostile files are checked before they are trusted: sizes declared in ``.npy`` / ``.npz`` /
safetensors / parquet headers are compared with the file's size and with :func:`memory_budget`
(``$ALIGNKIT_MAX_BYTES``, default half the RAM) *before* anything is allocated; ``.pt`` files holding
meta, nested, quantized or invalid sparse tensors are refused; symlink loops are named. The module also
holds the project's other guards: :func:`load_safetensors` (checked header), :func:`load_yaml_bounded`
(no anchors / aliases, bounded depth and size), :func:`directory_lock` (one writer per run directory),
:func:`same_file` / :func:`check_not_input` (outputs never overwrite inputs, links included) and the
SHA-256 helpers (:func:`sha256_file`, :func:`sha256_tensors`, :func:`sha256_json`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "LOADABLE_EXTENSIONS",
    "LOCK_NAME",
    "MAX_BYTES_ENV",
    "SAVABLE_EXTENSIONS",
    "atomic_write",
    "check_budget",
    "check_input_file",
    "check_not_input",
    "directory_lock",
    "json_safe",
    "load_embeddings",
    "load_safetensors",
    "load_yaml_bounded",
    "memory_budget",
    "read_npy",
    "same_file",
    "save_embeddings",
    "sha256_file",
    "sha256_json",
    "sha256_tensors",
]


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
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and err.filename is None:  # e.g. ENOSPC from write(): name the file
            code = err.errno
            if code is None and _disk_full(directory):  # numpy's tofile reports a short write without errno
                code = errno.ENOSPC
            reason = os.strerror(code) if code is not None else (err.strerror or str(err))
            raise OSError(code, reason, str(file)) from err
        raise


def _disk_full(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < (1 << 20)


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


# ------------------------------------------------------------------------------------ hostile-file guards

MAX_BYTES_ENV = "ALIGNKIT_MAX_BYTES"
_MAX_NPY_HEADER = 10_000  # numpy's own default limit for a header it parses with literal_eval
_MAX_SAFETENSORS_HEADER = 100_000_000  # the limit the safetensors library itself enforces


def memory_budget() -> int:
    """The most bytes one file may ask alignkit to allocate: ``$ALIGNKIT_MAX_BYTES`` if set, else half
    of the machine's physical memory (at least 1 GiB). Sizes declared in file headers are checked
    against it *before* anything is allocated."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if raw:
        try:
            value = int(float(raw))
        except (ValueError, OverflowError):
            raise ValueError(f"{MAX_BYTES_ENV} must be a number of bytes, got {raw!r}") from None
        if value < 1:
            raise ValueError(f"{MAX_BYTES_ENV} must be a positive number of bytes, got {raw!r}")
        return value
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 16 << 30
    return max(physical // 2, 1 << 30)


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} bytes"  # pragma: no cover


def check_budget(nbytes: int, path: str | os.PathLike[str], what: str) -> None:
    """Refuse (``ValueError`` naming ``path``) to allocate ``nbytes`` above :func:`memory_budget`."""
    budget = memory_budget()
    if nbytes > budget:
        raise ValueError(
            f"{path}: {what} needs {_human(nbytes)}, more than the memory budget of {_human(budget)} "
            f"(set {MAX_BYTES_ENV} to raise it)"
        )


def check_input_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a :class:`Path` after checking it names a readable regular file.

    Raises ``ValueError`` with one line naming the path for a missing file, a symlink loop, a
    directory or device, or a path the OS refuses to stat (permission, a file used as a folder).
    """
    file = Path(path)
    try:
        info = file.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{file}: symlink loop (too many levels of symbolic links)") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ValueError(f"{file}: no such {what}") from None
        raise ValueError(f"{file}: cannot read this {what} ({err.strerror or _one_line(err)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{file}: not a regular file")
    return file


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path (``..``, symlinks), or — when both
    exist — the same inode (a hard link counts too)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return False


def check_not_input(
    out: str | os.PathLike[str], *inputs: str | os.PathLike[str], flag: str = "output"
) -> None:
    """Refuse an output path that is one of ``inputs`` — also through symlinks, hard links or ``..``.

    Raises ``ValueError`` naming both paths.
    """
    for source in inputs:
        if same_file(out, source):
            raise ValueError(f"{flag} {out} is the input file {source}; write to another path")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(payload: Any) -> str:
    """SHA-256 of ``payload``'s canonical JSON (sorted keys, no spaces): the digest of a JSON file's
    content that survives re-indentation (used by captioning's ``tokenizer.json`` / ``settings.json``)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_tensors(tensors: Mapping[str, Tensor], header: bytes = b"") -> str:
    """SHA-256 over ``header`` then, by sorted name, each tensor's name, dtype, shape and raw bytes.

    The digest that adapters carry in their metadata (a file cannot hold its own file digest):
    a flipped byte in any weight, a renamed or reshaped tensor, or a changed ``header`` (the
    adapter's configuration) changes it. Cost: one read of every tensor (CPU).
    """
    digest = hashlib.sha256()
    digest.update(len(header).to_bytes(8, "little") + header)
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        meta = json.dumps([name, str(t.dtype), list(t.shape)]).encode()
        digest.update(len(meta).to_bytes(8, "little") + meta)
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_npy(fp: IO[bytes], path: str | os.PathLike[str], available: int) -> np.ndarray:
    """Read one ``.npy`` array from the binary stream ``fp`` holding ``available`` bytes in all.

    The header is parsed with numpy's own reader (``numpy.lib.format``, size-limited, no pickle);
    then the declared shape × itemsize is checked against the bytes left after the header and against
    :func:`memory_budget` *before* the one buffer of exactly that size is allocated. Anything wrong —
    a bad magic string, a header that does not parse (numpy raises ``ValueError``, ``OverflowError``,
    ``IndexError``, ``TypeError``, ``SyntaxError``, ``tokenize.TokenError`` …), an object dtype, a
    truncated body — is one ``ValueError`` naming ``path``.
    """
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(fp, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npf.read_array_header_2_0(fp, max_header_size=_MAX_NPY_HEADER)
        else:
            shape, fortran, dtype = npf._read_array_header(fp, version, max_header_size=_MAX_NPY_HEADER)
        offset = fp.tell()
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npy array (bad header: {_one_line(err)})") from None
    if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple):
        raise ValueError(f"{path}: not a readable .npy array (bad header)")
    if dtype.hasobject:
        raise ValueError(
            f"{path}: holds a pickled object (e.g. a numpy object array), which alignkit never loads; "
            "save a numeric array instead"
        )
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"{path}: not a readable .npy array (bad shape {shape!r:.80} in its header)")
    nbytes = math.prod(shape) * dtype.itemsize
    left = available - offset
    if nbytes > left:
        raise ValueError(
            f"{path}: .npy header declares shape {shape!r:.80} of {dtype} ({_human(nbytes)}) but the file "
            f"holds {_human(max(left, 0))} after its header (truncated or corrupt)"
        )
    check_budget(nbytes, path, f".npy array of shape {shape!r:.80} and dtype {dtype}")
    try:
        buffer = bytearray(nbytes)
        got = fp.readinto(buffer) if nbytes else 0  # type: ignore[attr-defined]
        if got != nbytes:
            raise EOFError(f"read {got} of {nbytes} bytes")
        flat = np.frombuffer(buffer, dtype=dtype) if nbytes else np.empty(0, dtype=dtype)
        return flat.reshape(shape, order="F" if fortran else "C")
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npy array ({_one_line(err)})") from None


def load_safetensors(
    path: str | os.PathLike[str], what: str = ".safetensors file"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (on CPU) and the string metadata of a ``.safetensors`` file, checked first.

    The 8-byte header length and the JSON header are read and checked — header within the file, every
    tensor's byte range inside the data section, total size within :func:`memory_budget` — before the
    safetensors library reads the data. Any problem (missing file, symlink loop, garbage, truncation)
    is a ``ValueError`` whose one line names the file.
    """
    file = check_input_file(path, what)
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{file}: not a readable {what} (only {len(head)} bytes)")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                raise ValueError(
                    f"{file}: not a readable {what} "
                    f"(its header claims {_human(length)}, the file has {_human(size)})"
                )
            header = json.loads(f.read(length))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if str(err).startswith(f"{file}:"):
            raise
        raise ValueError(f"{file}: not a readable {what} (header: {_one_line(err)})") from None
    except (OSError, RecursionError) as err:
        raise ValueError(f"{file}: not a readable {what} ({_one_line(err)})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: not a readable {what} (header is not a JSON object)")
    data = size - 8 - length
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data
        ):
            raise ValueError(
                f"{file}: not a readable {what} (tensor {name!r:.60} lies outside the file's data)"
            )
        total += offsets[1] - offsets[0]
    check_budget(total, file, what)
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as err:
        raise ValueError(f"{file}: not a readable {what} ({_one_line(err)})") from None
    return tensors, metadata


# ---------------------------------------------------------------------------------- run-directory lock

LOCK_NAME = ".alignkit.lock"
_HELD_LOCKS: dict[str, list[int]] = {}  # resolved directory → [fd, depth]: re-entrant within a process


def _pid_in(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text.split()[0]) if text else None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Hold ``directory/.alignkit.lock`` while writing into ``directory`` (created if missing).

    An exclusive ``flock`` on the lock file, which holds the holder's pid. A second process is
    refused at once with a one-line ``ValueError`` naming the holder's pid; the kernel drops the
    lock when its holder dies (even by SIGKILL), so a stale lock file of a dead process is simply
    taken over (and said so on stderr). Re-entrant within one process. The lock file stays (empty)
    after release: unlinking it would let two processes lock two different files.

    Raises:
        ValueError: the directory is in use, or cannot be created / written (the message names it).
    """
    import fcntl
    import sys

    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} exists and is not a directory")
    try:
        key = str(path.resolve())
    except (OSError, RuntimeError):  # Python < 3.13 raises RuntimeError for a symlink loop
        raise ValueError(f"{flag} {path}: symlink loop (too many levels of symbolic links)") from None
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        try:
            yield path / LOCK_NAME
        finally:
            _HELD_LOCKS[key][1] -= 1
        return
    lock = path / LOCK_NAME
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        reason = err.strerror or _one_line(err)
        raise ValueError(f"{flag} {path}: cannot create the run-directory lock ({reason})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _pid_in(fd)
        os.close(fd)
        who = f"pid {holder}" if holder is not None else "another process"
        raise ValueError(
            f"{flag} {path} is in use by another alignkit process ({who}, lock {lock}); "
            "wait for it to finish or choose another directory"
        ) from None
    previous = _pid_in(fd)
    if previous is not None and previous != os.getpid() and not _alive(previous):
        print(
            f"alignkit: taking over the stale lock of pid {previous} (not running) in {path}", file=sys.stderr
        )
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    _HELD_LOCKS[key] = [fd, 1]
    try:
        yield lock
    finally:
        del _HELD_LOCKS[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


# ------------------------------------------------------------------------------------------ bounded YAML

_YAML_MAX_BYTES = 1 << 20
_YAML_MAX_DEPTH = 32
_YAML_MAX_NODES = 100_000


def load_yaml_bounded(
    source: str | os.PathLike[str],
    *,
    max_bytes: int = _YAML_MAX_BYTES,
    max_depth: int = _YAML_MAX_DEPTH,
    max_nodes: int = _YAML_MAX_NODES,
) -> Any:
    """Parse YAML safely and boundedly: a file (an ``os.PathLike`` such as ``Path``) or YAML text (a
    ``str``).

    Safe-loader types only (no Python objects); anchors and aliases (``&a`` / ``*a``, the means of
    "billion laughs" bombs and recursive documents) are refused; at most ``max_bytes`` of text
    (1 MiB), ``max_depth`` levels of nesting (32) and ``max_nodes`` values (100 000).

    Raises:
        ValueError: one line naming the file (or "YAML text") and the line of the problem.
    """
    import yaml

    if isinstance(source, os.PathLike):
        file = check_input_file(source, "YAML file")
        size = file.stat().st_size
        if size > max_bytes:
            raise ValueError(
                f"{file}: YAML file of {_human(size)} is larger than the {_human(max_bytes)} allowed"
            )
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{file}: cannot read YAML ({_one_line(err)})") from None
        where = str(file)
    elif isinstance(source, str):
        text, where = source, "YAML text"
        if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise ValueError(f"{where}: larger than the {_human(max_bytes)} allowed")
    else:
        raise ValueError(f"source must be a path or YAML text, got {type(source).__name__}")

    class RefusedError(Exception):
        pass

    class BoundedLoader(yaml.SafeLoader):
        depth = 0
        nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            line = event.start_mark.line + 1 if event.start_mark is not None else "?"
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise RefusedError(f"line {line}: YAML anchors and aliases (&name / *name) are not allowed")
            self.nodes += 1
            if self.nodes > max_nodes:
                raise RefusedError(f"more than {max_nodes} values")
            self.depth += 1
            try:
                if self.depth > max_depth:
                    raise RefusedError(f"line {line}: nested deeper than {max_depth} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = None
    try:
        loader = BoundedLoader(text)  # the reader already refuses control characters here
        return loader.get_single_data()
    except RefusedError as err:
        raise ValueError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or _one_line(err)
        raise ValueError(f"{where}: not valid YAML ({at}{_one_line(Exception(problem))})") from None
    except (RecursionError, MemoryError) as err:
        raise ValueError(f"{where}: YAML too complex ({type(err).__name__})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _load_npy(path: Path, key: str | None) -> Any:
    if key is not None:
        raise ValueError(f"{path}: a .npy file holds one array; key={key!r} applies to .npz/.pt/.safetensors")
    try:
        with open(path, "rb") as f:
            return read_npy(f, path, os.fstat(f.fileno()).st_size)
    except OSError as err:
        raise ValueError(f"{path}: not a readable .npy array ({_one_line(err)})") from None


def _load_npz(path: Path, key: str | None) -> Any:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {
                (name[:-4] if name.endswith(".npy") else name): name for name in archive.namelist()
            }
            name = _pick(members, key, path, "array")
            info = archive.getinfo(name)
            check_budget(info.file_size, path, f"array {name!r}")
            with archive.open(info) as member:
                return read_npy(member, path, info.file_size)
    except ValueError as err:
        if str(err).startswith(f"{path}"):  # our own message (from _pick, the budget or read_npy)
            raise
        raise ValueError(f"{path}: not a readable .npz archive ({_one_line(err)})") from None
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npz archive ({_one_line(err)})") from None


def _load_pt(path: Path, key: str | None) -> Any:
    try:
        if zipfile.is_zipfile(path):  # the usual format: storages are zip members; bound their total size
            with zipfile.ZipFile(path) as archive:
                total = sum(info.file_size for info in archive.infolist())
            check_budget(total, path, "tensor file")
        with torch.sparse.check_sparse_tensor_invariants():  # a sparse tensor's indices are checked on load
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ValueError as err:
        if str(err).startswith(f"{path}:"):
            raise
        raise ValueError(
            f"{path}: not a readable tensor file for torch.load(weights_only=True) ({_one_line(err)})"
        ) from None
    except Exception as err:
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
    tensors, _ = load_safetensors(path)
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
        parquet = pq.ParquetFile(path)
        meta = parquet.metadata
        declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        check_budget(max(declared, 0), path, "parquet table")
        table = parquet.read()
    except ValueError as err:
        if str(err).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: not a readable .parquet file ({_one_line(err)})") from None
    except Exception as err:
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


def _all_finite(tensor: Tensor, rows_per_chunk: int = 1 << 14) -> bool:
    """``torch.isfinite(tensor).all()`` over row chunks: ``isfinite`` makes an ``abs`` copy of its
    input, which for a whole (N, d) file would double the memory a load needs."""
    return all(
        bool(torch.isfinite(tensor[start : start + rows_per_chunk]).all())
        for start in range(0, tensor.shape[0], rows_per_chunk)
    )


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
        if tensor.is_meta or tensor.device.type != "cpu":
            raise ValueError(f"{path}: holds a tensor on the {tensor.device} device with no data to read")
        if tensor.is_quantized:
            raise ValueError(f"{path}: holds a quantized tensor ({tensor.dtype}); save tensor.dequantize()")
        if tensor.is_nested:
            raise ValueError(f"{path}: holds a nested tensor; save a (N, d) tensor instead")
        if tensor.layout != torch.strided:
            dense = tensor.numel() * tensor.element_size()
            check_budget(dense, path, f"the dense form of shape {tuple(tensor.shape)}")
            try:
                tensor = tensor.to_dense()
            except Exception as err:
                raise ValueError(
                    f"{path}: holds a {tensor.layout} tensor that cannot be read ({_one_line(err)})"
                ) from None
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
    if not _all_finite(tensor):
        finite = torch.isfinite(tensor)
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
    check_input_file(file)
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


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, through nested mappings, lists and
    tuples (JSON has no NaN): what every ``metrics.json`` writer passes to ``json.dumps``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
