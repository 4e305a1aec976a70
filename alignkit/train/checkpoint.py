"""Atomic checkpoints: safetensors weights, a safetensors file of state tensors, and a JSON manifest.

A checkpoint named ``last`` in ``run/checkpoints/`` is three files::

    last.json                              manifest: optimiser / scheduler / trainer state as JSON,
                                           names, sizes and SHA-256 of the two files below
    last.<token>.model.safetensors         the model's state_dict (safetensors.torch.save_file)
    last.<token>.state.safetensors         every tensor of the state: optimiser moments, RNG states, …

Writing is crash-safe: each file is written to a temporary name in the same directory, flushed to disk and
moved into place with ``os.replace``; the tensor files get fresh names (``<token>``) and the JSON that
references them is replaced LAST, so at every instant ``last.json`` names two complete files that belong
to it. Files of the previous version are deleted only after the new JSON is in place. A process killed
with SIGKILL at any point leaves either the old or the new checkpoint, never a mixture; stale temporary
files are removed by the next save.

:func:`load_checkpoint` checks the manifest, the files' sizes and SHA-256 digests, and raises a
``ValueError`` that names the file for anything missing or corrupt.

Non-tensor state goes through a small JSON encoder: tuples, dicts with non-string keys (the optimiser's
``{0: …}``), numpy arrays (numpy's RNG state) and non-finite floats round-trip exactly; tensors anywhere
inside the state are stored in the ``state`` safetensors file and referenced by name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from alignkit.io import sha256_file as _sha256

__all__ = ["Checkpoint", "checkpoint_digest", "load_checkpoint", "remove_checkpoint", "save_checkpoint"]

FORMAT = "alignkit-checkpoint"
VERSION = 1
_FILE_RE = r"\.[0-9a-f]{12}\.(model|state)\.safetensors"


@dataclass
class Checkpoint:
    """A loaded checkpoint (all tensors on CPU).

    Attributes:
        path: the JSON manifest.
        model: the model's state_dict (tied / shared parameters restored under every name).
        optimizer: the optimiser's state_dict, or ``None`` if none was saved.
        scheduler: the LR scheduler's state_dict, or ``None``.
        state: any other state saved with it (the Trainer's step, epoch, RNG states, best metric, …).
    """

    path: Path
    model: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def load_into(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        strict: bool = True,
    ) -> None:
        """Copy the weights into ``model`` (and the states into ``optimizer`` / ``scheduler`` if given).

        Raises:
            ValueError: the checkpoint was written by a different model or optimiser (missing,
                unexpected or differently shaped parameters); one line naming the first differences.
        """
        try:
            model.load_state_dict(self.model, strict=strict)
        except RuntimeError as err:
            reason = _state_dict_error(err)
            raise ValueError(f"checkpoint {self.path} does not fit this model: {reason}") from None
        if optimizer is not None:
            if self.optimizer is None:
                raise ValueError(f"checkpoint {self.path} holds no optimizer state")
            try:
                optimizer.load_state_dict(self.optimizer)
            except (ValueError, RuntimeError, KeyError) as err:
                raise ValueError(
                    f"checkpoint {self.path} does not fit this optimizer: {_state_dict_error(err)}"
                ) from None
        if scheduler is not None:
            if self.scheduler is None:
                raise ValueError(f"checkpoint {self.path} holds no scheduler state")
            try:
                scheduler.load_state_dict(self.scheduler)
            except (ValueError, RuntimeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"checkpoint {self.path} does not fit this scheduler: {_state_dict_error(err)}"
                ) from None


def _state_dict_error(err: BaseException, limit: int = 3) -> str:
    """``load_state_dict``'s multi-line message as one line: its first ``limit`` findings, then a count."""
    lines = [ln.strip().rstrip(".") for ln in str(err).splitlines()[1:] if ln.strip()]
    if not lines:
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    more = f"; and {len(lines) - limit} more" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


# ----------------------------------------------------------------------------------------- JSON encoding


class _Encoder:
    """Turns nested Python / numpy / torch state into JSON-able data; tensors are collected by name."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._storages: set[int] = set()

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, Tensor):
            name = f"t{len(self.tensors)}"
            t = obj.detach()
            if t.device.type == "cpu" and t.layout == torch.strided and t.numel():
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self._storages:  # safetensors refuses two entries on one storage
                    self._storages.add(ptr)
                    self.tensors[name] = t.contiguous()
                    return {"__tensor__": name}
            self.tensors[name] = t.to("cpu", copy=True).contiguous()
            return {"__tensor__": name}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, np.integer)):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            value = float(obj)
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(obj, np.ndarray):
            return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
        if isinstance(obj, tuple):
            return {"__tuple__": [self(v) for v in obj]}
        if isinstance(obj, list):
            return [self(v) for v in obj]
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
                return {k: self(v) for k, v in obj.items()}
            return {"__dict__": [[self(k), self(v)] for k, v in obj.items()]}
        if isinstance(obj, torch.dtype):
            return {"__dtype__": str(obj).removeprefix("torch.")}
        raise ValueError(f"cannot store a value of type {type(obj).__name__} in a checkpoint: {obj!r:.80}")


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        name = obj["__tensor__"]
        if name not in tensors:
            raise ValueError(f"tensor {name!r} referenced by the manifest is missing from the state file")
        return tensors[name]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------ file helpers


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem allows fsync on a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")


def _write_safetensors(tensors: dict[str, Tensor], final: Path) -> dict[str, Any]:
    """Write ``tensors`` to ``final`` atomically; return its manifest entry (name, size, sha256)."""
    tmp = _temp_path(final)
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        entry = {"path": final.name, "bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return entry


def _write_text(text: str, final: Path) -> None:
    tmp = _temp_path(final)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _model_tensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Any]]:
    """CPU contiguous tensors without shared storage (safetensors refuses it), aliases of tied entries,
    and the non-tensor entries (``_extra_state``)."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    extra: dict[str, Any] = {}
    seen_view: dict[tuple[Any, ...], str] = {}
    seen_storage: set[tuple[str, int]] = set()
    for name, value in state_dict.items():
        if not isinstance(value, Tensor):
            extra[name] = value
            continue
        t = value.detach()
        if t.numel() == 0 or t.layout != torch.strided:
            tensors[name] = t.to("cpu", copy=True).contiguous()
            continue
        storage = (str(t.device), t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in seen_view:  # the same tensor under two names (tied weights): store it once
            aliases[name] = seen_view[view]
            continue
        seen_view[view] = name
        if storage in seen_storage:  # another view of an already stored storage: a private copy
            tensors[name] = t.to("cpu", copy=True).contiguous()
            continue
        seen_storage.add(storage)
        tensors[name] = t.to("cpu").contiguous()
    return tensors, aliases, extra


# ---------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | Mapping[str, Any],
    *,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
    scheduler: Any | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: ``path`` is the JSON manifest (e.g. ``run/checkpoints/last.json``).

    Weights: ``safetensors.torch.save_file`` of ``model.state_dict()`` (CPU, contiguous; entries that are
    the same tensor — tied weights — are stored once and recorded as aliases). Optimiser and scheduler
    ``state_dict``\\ s and ``state`` (any nesting of dict / list / tuple / numbers / str / numpy arrays /
    tensors) go to the manifest, with every tensor moved into a second safetensors file. Write order: weights,
    state tensors, then the JSON (temporary file + ``os.replace`` each); superseded files of the same
    checkpoint are deleted afterwards.

    Args:
        path: the manifest's path; its directory is created if needed. The name's stem (``last``) names
            the tensor files.
        model: an ``nn.Module`` or a state_dict.
        optimizer: an optimiser or its state_dict (``None``: not saved).
        scheduler: an LR scheduler or its state_dict (``None``: not saved).
        state: extra state.

    Returns:
        The manifest's path. Cost: O(P + S) time and disk for P model and S state numbers (one extra read
        of each file for its SHA-256); a CPU copy of tensors that live on an accelerator.
    """
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"path must name the checkpoint's .json manifest, got {str(path)!r}")
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    model_sd = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(model_sd, Mapping):
        raise ValueError(f"model must be an nn.Module or a state_dict, got {type(model).__name__}")
    opt_sd = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    sched_sd = (
        scheduler.state_dict() if scheduler is not None and hasattr(scheduler, "state_dict") else scheduler
    )

    weights, aliases, model_extra = _model_tensors(model_sd)
    encode = _Encoder()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "aliases": aliases,
        "model_extra": encode(model_extra),
        "optimizer": encode(opt_sd),
        "scheduler": encode(sched_sd),
        "state": encode(dict(state or {})),
    }
    token = uuid.uuid4().hex[:12]
    files = {
        "model": _write_safetensors(weights, directory / f"{stem}.{token}.model.safetensors"),
        "state": _write_safetensors(encode.tensors, directory / f"{stem}.{token}.state.safetensors"),
    }
    manifest["files"] = files
    _write_text(json.dumps(manifest, allow_nan=False, indent=1) + "\n", path)
    _fsync_dir(directory)
    _remove_unreferenced(directory, stem, {entry["path"] for entry in files.values()})
    return path


def _remove_unreferenced(directory: Path, stem: str, keep: set[str]) -> None:
    pattern = re.compile(re.escape(stem) + _FILE_RE + "$")
    temp = re.compile(r"\." + re.escape(stem) + r"(\.json|" + _FILE_RE + r")\.[0-9a-f]{8}\.tmp$")
    for entry in directory.iterdir():
        if (pattern.match(entry.name) and entry.name not in keep) or temp.match(entry.name):
            entry.unlink(missing_ok=True)


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint: its manifest first (so it is never half-present), then its tensor files."""
    path = Path(path)
    path.unlink(missing_ok=True)
    if path.parent.is_dir():
        _remove_unreferenced(path.parent, path.stem, set())


# --------------------------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike[str], verify: bool = True) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on CPU).

    Args:
        path: the JSON manifest.
        verify: check each tensor file's size and SHA-256 against the manifest (one extra read).

    Returns:
        A :class:`Checkpoint`.

    Raises:
        ValueError: the manifest is missing, is not valid JSON or not a checkpoint manifest, or a file it
            references is missing, has the wrong size or digest, or cannot be parsed; the message names
            the file. Cost: O(P + S) reads.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint manifest {str(path)!r} does not exist")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint manifest {str(path)!r} is corrupt (not valid JSON: {err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an alignkit checkpoint manifest (format != {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {manifest.get('version')!r}, this alignkit reads {VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {"model", "state"}:
        raise ValueError(
            f"checkpoint manifest {str(path)!r} is corrupt: 'files' must list 'model' and 'state'"
        )
    loaded: dict[str, dict[str, Tensor]] = {}
    for kind, entry in files.items():
        loaded[kind] = _read_tensor_file(path, kind, entry, verify)
    try:
        weights: dict[str, Any] = dict(loaded["model"])
        for alias, target in manifest["aliases"].items():
            weights[alias] = weights[target]
        weights.update(_decode(manifest["model_extra"], loaded["state"]))
        return Checkpoint(
            path=path,
            model=weights,
            optimizer=_decode(manifest["optimizer"], loaded["state"]),
            scheduler=_decode(manifest["scheduler"], loaded["state"]),
            state=_decode(manifest["state"], loaded["state"]),
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"checkpoint manifest {str(path)!r} is corrupt: {type(err).__name__}: {err}"
        ) from err


def _read_tensor_file(manifest: Path, kind: str, entry: Any, verify: bool) -> dict[str, Tensor]:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise ValueError(f"checkpoint manifest {str(manifest)!r} is corrupt: bad entry for the {kind} file")
    file = manifest.parent / entry["path"]
    if Path(entry["path"]).name != entry["path"]:
        raise ValueError(f"checkpoint manifest {str(manifest)!r} is corrupt: {kind} file {entry['path']!r}")
    if not file.is_file():
        raise ValueError(f"checkpoint {str(manifest)!r}: its {kind} file {str(file)!r} is missing")
    if verify:
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise ValueError(
                f"checkpoint {str(manifest)!r}: {kind} file {str(file)!r} is corrupt "
                f"({size} bytes, expected {entry.get('bytes')})"
            )
        if _sha256(file) != entry.get("sha256"):
            raise ValueError(
                f"checkpoint {str(manifest)!r}: {kind} file {str(file)!r} is corrupt (SHA-256 mismatch)"
            )
    try:
        return load_file(str(file), device="cpu")
    except Exception as err:
        raise ValueError(
            f"checkpoint {str(manifest)!r}: cannot read {kind} file {str(file)!r}: {err}"
        ) from err


def checkpoint_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a checkpoint's model weights, as its manifest records it (no file is re-hashed).

    What a derived artefact (a caption decoder, a report) records to say which weights it was derived
    from: retraining a run changes it unless the new weights are bit-identical.

    Raises:
        ValueError: the manifest is missing, unreadable or records no model digest.
    """
    manifest = Path(path)
    try:
        entry = json.loads(manifest.read_text(encoding="utf-8"))["files"]["model"]
        digest = entry["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{manifest}: no model digest in the checkpoint manifest ({err})") from None
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"{manifest}: the model digest {digest!r} is not a SHA-256 hex string")
    return digest
