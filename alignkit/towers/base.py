"""The contract every tower (encoder on one side of an alignment) follows, and frozen embedding.

A tower is an ``nn.Module`` with

* ``out_dim: int`` — the width of its output features;
* ``frozen: bool`` — ``True`` when its output does not depend on any trainable parameter, so each
  row can be embedded once (:func:`embed_frozen`) and the features cached on disk;
* ``prepare(items) -> inputs`` — raw items (``list[str]`` for text; a float tensor (N, C, H, W) or
  (N, H, W) for images; an (N, d) tensor of precomputed features) turned into what ``forward``
  takes: a tensor or a dict of row-aligned tensors;
* ``select(inputs, rows) -> inputs`` — the rows ``rows`` (a slice, an index tensor or list) of
  prepared inputs, for mini-batches;
* ``forward(inputs) -> Tensor`` — (N, out_dim) float features.

:class:`Tower` gives the defaults (``prepare``: items as a float tensor; ``select``: row slicing of
a tensor or of every tensor in a dict; ``cache_identity``: a digest of the class and its state), so
a subclass only writes ``forward``. A plain ``nn.Module`` with an ``out_dim`` attribute (the mlp and
cnn image towers) works with the module-level helpers :func:`prepare_inputs`, :func:`select_rows`
and :func:`is_frozen`, which fall back to the same defaults.

    tower = build_tower("sentence-transformers")          # frozen MiniLM, out_dim 384
    features = embed_frozen(tower, texts, batch_size=256)  # (N, 384), cached on disk

Cache: ``<cache>/towers/<slug>-<sha256>.safetensors`` where ``<cache>`` is ``cache_dir``, else
``$ALIGNKIT_CACHE``, else ``~/.cache/alignkit`` (:func:`alignkit.data.text.default_cache_dir`). The
sha256 covers the tower's identity (:meth:`Tower.cache_identity`, or ``cache_key``) and the digest
of the items (the JSON list of texts, or a tensor's dtype, shape and bytes). Files are written
atomically; a failed write (full disk, read-only directory) warns once per process and the
embeddings are returned all the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from alignkit.data.text import default_cache_dir
from alignkit.io import load_embeddings, save_embeddings
from alignkit.progress import track

__all__ = [
    "Inputs",
    "Tower",
    "directory_stamp",
    "embed_frozen",
    "embedding_cache_path",
    "hf_cache_dir",
    "hf_cache_snapshot",
    "is_frozen",
    "items_digest",
    "move_inputs",
    "num_rows",
    "prepare_inputs",
    "select_rows",
    "state_digest",
    "tower_out_dim",
]

Inputs = Tensor | dict[str, Tensor]
"""What a tower's ``forward`` takes: a tensor, or a dict of tensors sharing their first dimension."""

_WARNED_CACHE_WRITE = False


def _as_float_tensor(items: object, name: str = "items") -> Tensor:
    """``items`` (tensor, numpy array or nested list of numbers) as a floating tensor, N ≥ 1 rows."""
    if isinstance(items, np.ndarray):
        if items.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric, got numpy dtype {items.dtype}")
        items = torch.from_numpy(np.ascontiguousarray(items))
    if not isinstance(items, Tensor):
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ValueError(f"{name} must be a tensor of numbers, got {type(items).__name__}")
        try:
            items = torch.as_tensor(items, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a tensor of numbers: {err}") from None
    if items.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {items.dtype}")
    if not items.is_floating_point():
        items = items.float()
    if items.dim() == 0 or items.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {tuple(items.shape)}")
    return items


class Tower(nn.Module):
    """Base class of the towers: defaults for ``prepare``, ``select`` and ``cache_identity``.

    Subclasses set ``out_dim`` (and ``frozen`` when their output is fixed) in ``__init__`` and
    implement ``forward(inputs) -> (N, out_dim)``.
    """

    out_dim: int
    frozen: bool = False
    cacheable: bool = True
    """``False`` for towers whose output is cheaper to recompute than to read (identity)."""

    def prepare(self, items: Any) -> Inputs:
        """Raw items → inputs of :meth:`forward`. Default: a floating tensor (numbers as float32)."""
        return _as_float_tensor(items)

    def select(self, inputs: Inputs, rows: slice | Tensor | Sequence[int]) -> Inputs:
        """Rows ``rows`` of prepared ``inputs`` (a tensor, or every tensor of a dict)."""
        return _select(inputs, rows)

    def cache_identity(self) -> str:
        """A string that changes whenever the tower's output for the same input could change.

        Default: class name, ``extra_repr`` and the digest of every parameter and buffer
        (:func:`state_digest`). Towers loaded from disk override it with path + file stamps.
        """
        return f"{type(self).__module__}.{type(self).__qualname__}({self.extra_repr()}):{state_digest(self)}"


def _select(inputs: Inputs, rows: slice | Tensor | Sequence[int], trim_padding: bool = False) -> Inputs:
    """Rows of a tensor or of every tensor of a dict. With ``trim_padding`` and an ``attention_mask``
    (B, T) in the dict, the columns after the last one any selected row uses are dropped from every
    (B, T) tensor (exact for a masked encoder: those columns are padding for every row)."""
    if not isinstance(rows, (slice, Tensor)):
        rows = torch.as_tensor(list(rows), dtype=torch.long)
    if isinstance(inputs, Tensor):
        return inputs[rows]
    if not isinstance(inputs, Mapping):
        raise ValueError(f"inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}")
    out = {
        k: (v[rows.to(v.device)] if isinstance(rows, Tensor) else v[rows]) if isinstance(v, Tensor) else v
        for k, v in inputs.items()
    }
    mask = out.get("attention_mask")
    if trim_padding and isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[0] > 0:
        used = mask.ne(0).any(dim=0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 1
        width = mask.shape[1]
        if keep < width:
            out = {
                k: v[:, :keep] if isinstance(v, Tensor) and v.dim() == 2 and v.shape[1] == width else v
                for k, v in out.items()
            }
    return out


def prepare_inputs(tower: nn.Module, items: Any) -> Inputs:
    """``tower.prepare(items)`` where the tower has it, else the default (a floating tensor)."""
    prepare = getattr(tower, "prepare", None)
    return prepare(items) if callable(prepare) else _as_float_tensor(items)


def select_rows(tower: nn.Module, inputs: Inputs, rows: slice | Tensor | Sequence[int]) -> Inputs:
    """``tower.select(inputs, rows)`` where the tower has it, else row slicing."""
    select = getattr(tower, "select", None)
    return select(inputs, rows) if callable(select) else _select(inputs, rows)


def is_frozen(tower: nn.Module) -> bool:
    """The tower's ``frozen`` attribute (``False`` when absent)."""
    return bool(getattr(tower, "frozen", False))


def tower_out_dim(tower: nn.Module) -> int:
    """The tower's ``out_dim``; ``ValueError`` when it has none."""
    dim = getattr(tower, "out_dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(
            f"tower {type(tower).__name__} must have an integer attribute out_dim ≥ 1, got {dim!r}"
        )
    return dim


def num_rows(inputs: Inputs) -> int:
    """The number of rows of prepared inputs (first dimension; the same for every tensor of a dict)."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 0
    if isinstance(inputs, Mapping):
        sizes = {int(v.shape[0]) for v in inputs.values() if isinstance(v, Tensor) and v.dim()}
        if len(sizes) != 1:
            raise ValueError(
                f"inputs must be a dict of tensors with the same number of rows, got {sorted(sizes)}"
            )
        return sizes.pop()
    raise ValueError(f"inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}")


def move_inputs(inputs: Inputs, device: torch.device | str) -> Inputs:
    """``inputs`` (a tensor or a dict of tensors) on ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}


def state_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``module`` (names, dtypes, shapes, bytes).

    Cost: O(number of parameters) — about 1 s per GB of weights.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, Tensor):
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def items_digest(items: Any) -> str:
    """sha256 of raw items: the JSON list of strings, or a tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()
    if isinstance(items, np.ndarray):
        items = items.tolist() if items.dtype.kind in "USO" else torch.from_numpy(np.ascontiguousarray(items))
    if isinstance(items, Tensor):
        data = items.detach().cpu().contiguous()
        digest.update(f"tensor:{data.dtype}:{tuple(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(items, Sequence) and not isinstance(items, (str, bytes)):
        try:
            text = json.dumps(list(items), ensure_ascii=False)
        except TypeError as err:
            raise ValueError(f"items must be strings, numbers or a tensor to be cached: {err}") from None
        digest.update(b"json\0" + text.encode("utf-8"))
    else:
        raise ValueError(f"items must be a sequence or a tensor, got {type(items).__name__}")
    return digest.hexdigest()


def embedding_cache_path(identity: str, items: Any, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`embed_frozen` caches the features of ``items`` under a tower ``identity``."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    digest = hashlib.sha256()
    digest.update(identity.encode("utf-8"))
    digest.update(b"\0")
    digest.update(items_digest(items).encode("ascii"))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", identity.split(":", 1)[0])[-40:] or "tower"
    return root / "towers" / f"{slug}-{digest.hexdigest()}.safetensors"


def _len_items(items: Any) -> int:
    if isinstance(items, (Tensor, np.ndarray)):
        return int(items.shape[0]) if items.ndim else 0
    if isinstance(items, Sequence) and not isinstance(items, (str, bytes)):
        return len(items)
    raise ValueError(f"items must be a list or a tensor with one row per item, got {type(items).__name__}")


def _warn_cache_write(path: Path, err: BaseException) -> None:
    global _WARNED_CACHE_WRITE
    if not _WARNED_CACHE_WRITE:
        _WARNED_CACHE_WRITE = True
        warnings.warn(
            f"could not write the embedding cache {path} ({type(err).__name__}: {err}); "
            "continuing without caching",
            stacklevel=3,
        )


def embed_frozen(
    tower: nn.Module,
    items: Any,
    batch_size: int = 256,
    cache_key: str | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> Tensor:
    """Features of every item, (N, out_dim) float32 on the CPU, computed once and cached on disk.

    Items are cut into batches of ``batch_size``; each batch is prepared (:func:`prepare_inputs`),
    moved to the tower's device and passed through the tower in eval mode under ``torch.no_grad``
    (the tower's train/eval mode is restored afterwards). With ``cache`` the result is stored under
    :func:`embedding_cache_path` (identity = ``cache_key`` if given, else the tower's
    ``cache_identity()``, else :func:`state_digest`) and a later call with the same tower and items
    reads the file instead of running the tower. A cache file that is unreadable or of the wrong
    shape is recomputed; a write that fails warns once and is skipped.

    Args:
        tower: a tower (any module with ``out_dim``); normally a frozen one.
        items: N ≥ 1 raw items (list of strings, or a tensor with one row per item).
        batch_size: items per forward pass, ≥ 1.
        cache_key: identity of the tower for the cache key (default: the tower's own).
        progress: show progress on stderr when there is more than one batch (:mod:`alignkit.progress`:
            a bar in a terminal, else about ten lines).
        cache_dir: cache root (default ``$ALIGNKIT_CACHE`` or ``~/.cache/alignkit``).
        cache: read and write the disk cache.

    Returns:
        (N, out_dim) float32 CPU tensor.

    Cost: one forward per batch; a cache hit is one hash of the items (O(size)) and one file read.
    """
    if not isinstance(tower, nn.Module):
        raise ValueError(f"tower must be an nn.Module, got {type(tower).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if cache_key is not None and (not isinstance(cache_key, str) or not cache_key):
        raise ValueError(f"cache_key must be a non-empty str or None, got {cache_key!r}")
    n = _len_items(items)
    if n < 1:
        raise ValueError("items must hold at least one item, got none")
    out_dim = tower_out_dim(tower)
    path = None
    if cache and getattr(tower, "cacheable", True):
        if cache_key is not None:
            identity = cache_key
        else:
            ident = getattr(tower, "cache_identity", None)
            identity = ident() if callable(ident) else f"{type(tower).__qualname__}:{state_digest(tower)}"
        path = embedding_cache_path(identity, items, cache_dir)
        if path.is_file():
            with contextlib.suppress(ValueError):
                cached = load_embeddings(path)
                if tuple(cached.shape) == (n, out_dim) and cached.dtype == torch.float32:
                    return cached
    first = next(iter(tower.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = tower.training
    batches = range(0, n, batch_size)
    shown = progress and len(batches) > 1
    starts = track(batches, len(batches), f"embedding {n} items", unit="batch", enabled=shown)
    chunks: list[Tensor] = []
    tower.eval()
    try:
        with torch.no_grad():
            for start in starts:
                inputs = move_inputs(prepare_inputs(tower, items[start : start + batch_size]), device)
                out = tower(inputs)
                if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != out_dim:
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    name = type(tower).__name__
                    raise ValueError(f"tower {name} must return (N, out_dim={out_dim}) features, got {shape}")
                chunks.append(out.detach().to(device="cpu", dtype=torch.float32))
    finally:
        tower.train(was_training)
    features = torch.cat(chunks).contiguous()
    if features.shape[0] != n:
        raise ValueError(f"tower {type(tower).__name__} returned {features.shape[0]} rows for {n} items")
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_embeddings(path, features)
        except (OSError, ValueError) as err:
            _warn_cache_write(path, err)
    return features


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")


def directory_stamp(directory: str | os.PathLike[str]) -> str:
    """sha256 over (relative name, size, mtime) of the model files under ``directory``.

    Used as the identity of a model loaded from disk: it changes when a weight, config or tokenizer
    file is replaced, without reading the weights. Cost: one ``stat`` per file.
    """
    root = Path(directory)
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*")):
        if file.name.startswith(".") or file.suffix not in _WEIGHT_SUFFIXES:
            continue
        with contextlib.suppress(OSError):
            info = file.stat()
            if file.is_file():
                digest.update(f"{file.relative_to(root)}:{info.st_size}:{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def hf_cache_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache snapshot of the repository ``name`` (``"org/model"``), if any.

    Never touches the network (``local_files_only=True``); ``None`` when it is not cached or
    ``huggingface_hub`` is not installed.
    """
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, HFValidationError, OSError: not cached
        return None


def hf_cache_dir() -> str:
    """The Hugging Face hub cache directory (for error messages)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except (ImportError, AttributeError):
        return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
