"""A Hugging Face ``transformers`` encoder (text or vision) from a local directory, frozen or fine-tuned.

    tower = HFTower("/models/bert-small", pooling="mean")                 # text, frozen
    tower = HFTower("/models/vit-tiny", pooling="cls", frozen=False)      # vision, fine-tuned
    tower(tower.prepare(["a caption", "another"])).shape                  # (2, hidden_size)

The directory is what ``save_pretrained`` writes: ``config.json`` and the weights
(``model.safetensors`` / ``pytorch_model.bin``, or a sharded index), plus the tokenizer files for a
text model. It is loaded with ``AutoModel.from_pretrained(path, local_files_only=True)``; no remote
code runs and nothing is downloaded. A name that is not a directory is also looked up in the local
Hugging Face cache (never on the network).

Text models (``modality="text"``): ``prepare(texts)`` runs the model's tokenizer (padding to the
longest text, truncating to ``max_length``) and returns ``input_ids``, ``attention_mask`` (and
``token_type_ids``). Vision models (``modality="image"``, detected by ``num_channels`` and
``image_size`` in the config): ``prepare(images)`` takes floats in [0, 1], shape (N, C, H, W) or
(N, H, W); repeats a single channel to the model's channel count, resizes (bilinear, antialiased)
to the config's ``image_size`` and normalises with ``image_mean`` / ``image_std`` from
``preprocessor_config.json`` (else the given values, else 0.5 / 0.5 as ViT's processor).

Pooling of the last hidden states h (N, T, d) with attention mask m (N, T):

* ``"cls"``: h[:, 0] (BERT's [CLS]; ViT's class token);
* ``"mean"``: Σ_t m_t·h_t / Σ_t m_t (Sentence-BERT's mean pooling, padding excluded);
* ``"attention"``: a learned query attending over the tokens (:class:`alignkit.nn.AttentionalPooler`);
  the pooler is always trainable, so such a tower is never ``frozen`` even with a locked backbone.

Cost: one forward of the backbone, O(N·(T²·d + T·d²)·layers); mean / cls pooling O(N·T·d).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.functional._checks import check_choice, check_int
from alignkit.nn.attention import AttentionalPooler
from alignkit.towers.base import (
    Inputs,
    Tower,
    _as_float_tensor,
    _select,
    directory_stamp,
    hf_cache_dir,
    hf_cache_snapshot,
)

__all__ = ["HF_POOLINGS", "HFTower", "masked_mean", "resolve_hf_model"]

HF_POOLINGS = ("cls", "mean", "attention")
_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over tokens where ``mask`` is non-zero: (N, T, d), (N, T) → (N, d); a row without any
    token gives zeros. ``mask=None``: the plain mean. Cost: O(N·T·d)."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def resolve_hf_model(path: str | os.PathLike[str]) -> Path:
    """The local directory of a saved ``transformers`` model; one-line ``ValueError`` otherwise."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a model directory, got {path!r}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        snapshot = hf_cache_snapshot(str(path))
        if snapshot is None:
            raise ValueError(
                f"Hugging Face model {str(path)!r} not found on disk: looked for a directory "
                f"{directory.resolve()} and in the Hugging Face cache {hf_cache_dir()}; nothing is downloaded"
            )
        directory = snapshot
    directory = directory.resolve()
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"Hugging Face model directory {directory} has no config.json (save it with save_pretrained)"
        )
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        raise ValueError(
            f"Hugging Face model directory {directory} holds no weights ({' / '.join(_WEIGHT_FILES[:2])}); "
            "save the model with save_pretrained"
        )
    return directory


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _floats(value: Any, n: int, name: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * n
    if (
        not isinstance(value, (list, tuple))
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{name} must be a number or a list of {n} numbers, got {value!r}")
    return tuple(float(v) for v in value)


class HFTower(Tower):
    """A ``transformers`` ``AutoModel`` from a local directory, pooled to (N, hidden_size) features.

    Args:
        path: the model directory (or a repository id already in the local Hugging Face cache).
        pooling: ``"cls"`` | ``"mean"`` | ``"attention"``; default ``"mean"`` for text, ``"cls"`` for
            images.
        frozen: lock the backbone (no gradients, always eval mode, forward under ``no_grad``);
            ``False``: fine-tune it.
        modality: ``"text"`` | ``"image"``; default from the config (vision configs have
            ``num_channels`` and ``image_size``).
        max_length: text truncation in tokens (default: the tokenizer's / config's maximum, ≤ 512).
        image_mean, image_std: normalisation when the directory has no ``preprocessor_config.json``.
        device: where the weights live.

    Attributes: ``out_dim`` (the config's ``hidden_size``), ``frozen`` (backbone locked and no
    trainable pooler), ``backbone_frozen``, ``modality``, ``pooling``, ``model`` (the AutoModel).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        pooling: str | None = None,
        frozen: bool = True,
        modality: str | None = None,
        max_length: int | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if not isinstance(frozen, bool):
            raise ValueError(f"frozen must be a bool, got {frozen!r}")
        if pooling is not None:
            check_choice(pooling, "pooling", HF_POOLINGS)
        if modality is not None:
            check_choice(modality, "modality", ("text", "image"))
        if max_length is not None:
            check_int(max_length, "max_length", 1)
        self.path = str(path)
        self.directory = resolve_hf_model(path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoConfig, AutoModel
        except ImportError as err:
            raise ValueError(
                f"the hf tower needs transformers (pip install 'alignkit[text]'): {err}"
            ) from None
        try:
            config = AutoConfig.from_pretrained(self.directory, local_files_only=True)
            model = AutoModel.from_pretrained(self.directory, local_files_only=True)
        except Exception as err:  # OSError / ValueError / KeyError for broken or unknown model folders
            raise ValueError(
                f"could not load the Hugging Face model in {self.directory}: {_one_line(err)}"
            ) from None
        try:
            self.model = model.to(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({err})"
            ) from None
        is_vision = hasattr(config, "num_channels") and hasattr(config, "image_size")
        self.modality = modality or ("image" if is_vision else "text")
        self.pooling = pooling or ("cls" if self.modality == "image" else "mean")
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(
                f"Hugging Face model in {self.directory} has no integer hidden_size in its config; "
                "use an encoder whose output is last_hidden_state (N, T, hidden_size)"
            )
        self.out_dim = hidden
        self.tokenizer: Any = None
        if self.modality == "text":
            self._init_text(config, max_length)
        else:
            self._init_image(config, image_mean, image_std)
        self.pool: AttentionalPooler | None = None
        if self.pooling == "attention":
            heads = getattr(config, "num_attention_heads", 1)
            heads = heads if isinstance(heads, int) and heads >= 1 and hidden % heads == 0 else 1
            self.pool = AttentionalPooler(hidden, 1, heads).to(device)
        self.backbone_frozen = frozen
        self.frozen = frozen and self.pool is None
        self.model.requires_grad_(not frozen)
        self.train(False)

    def _init_text(self, config: Any, max_length: int | None) -> None:
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
        except Exception as err:
            raise ValueError(
                f"Hugging Face model directory {self.directory} has no usable tokenizer "
                f"(save it with tokenizer.save_pretrained): {_one_line(err)}"
            ) from None
        limit = getattr(self.tokenizer, "model_max_length", None)
        positions = getattr(config, "max_position_embeddings", None)
        candidates = [v for v in (limit, positions, 512) if isinstance(v, int) and 0 < v < 10**6]
        self.max_length = max_length if max_length is not None else min(candidates)

    def _init_image(self, config: Any, mean: Any, std: Any) -> None:
        size = config.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        self.num_channels = int(config.num_channels)
        processor = self.directory / "preprocessor_config.json"
        if processor.is_file():
            try:
                settings = json.loads(processor.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ValueError(f"{processor}: not readable JSON ({_one_line(err)})") from None
            mean = settings.get("image_mean", mean) if settings.get("do_normalize", True) else 0.0
            std = settings.get("image_std", std) if settings.get("do_normalize", True) else 1.0
        mean = _floats(0.5 if mean is None else mean, self.num_channels, "image_mean")
        std = _floats(0.5 if std is None else std, self.num_channels, "image_std")
        if any(s <= 0 for s in std):
            raise ValueError(f"image_std must be > 0, got {std}")
        self.register_buffer("image_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> HFTower:
        super().train(mode)
        if self.backbone_frozen:
            self.model.eval()
        return self

    # ----------------------------------------------------------------------------------------------
    def prepare(self, items: Any) -> Inputs:
        if self.modality == "text":
            from alignkit.data.text import _check_texts

            texts = _check_texts(items)
            encoded = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            return {k: v for k, v in encoded.items() if k in _TEXT_KEYS and isinstance(v, Tensor)}
        x = _as_float_tensor(items, "images")
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, self.num_channels):
            raise ValueError(
                f"images must have shape (N, {self.num_channels}, H, W), (N, 1, H, W) or (N, H, W), "
                f"got {tuple(x.shape)}"
            )
        x = x.float()
        if x.shape[1] != self.num_channels:
            x = x.expand(-1, self.num_channels, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.image_mean.cpu()) / self.image_std.cpu()

    def select(self, inputs: Inputs, rows: Any) -> Inputs:
        return _select(inputs, rows, trim_padding=True)

    def _hidden(self, inputs: Inputs) -> tuple[Tensor, Tensor | None]:
        device = next(self.model.parameters()).device
        if self.modality == "text":
            if not isinstance(inputs, dict) or "input_ids" not in inputs:
                raise ValueError(
                    "inputs must be the dict from prepare(texts) with input_ids and attention_mask"
                )
            kwargs = {k: v.to(device) for k, v in inputs.items() if k in _TEXT_KEYS}
            mask = kwargs.get("attention_mask")
        else:
            if not isinstance(inputs, Tensor) or inputs.dim() != 4:
                raise ValueError("inputs must be the (N, C, H, W) pixel tensor from prepare(images)")
            kwargs = {"pixel_values": inputs.to(device)}
            mask = None
        with torch.no_grad() if self.backbone_frozen else contextlib.nullcontext():
            out = self.model(**kwargs)
        hidden = getattr(out, "last_hidden_state", None)
        if not isinstance(hidden, Tensor) or hidden.dim() != 3:
            raise ValueError(
                f"Hugging Face model in {self.directory} returned no last_hidden_state (N, T, d); "
                "use an encoder model"
            )
        return hidden, mask

    def forward_tokens(self, inputs: Inputs) -> Tensor:
        """Last hidden states (N, T, out_dim), padding positions included (see ``attention_mask``)."""
        return self._hidden(inputs)[0]

    def forward(self, inputs: Inputs) -> Tensor:
        hidden, mask = self._hidden(inputs)
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "mean":
            return masked_mean(hidden, mask)
        assert self.pool is not None
        padding = None if mask is None else mask.eq(0)
        return self.pool(hidden, padding).squeeze(1)

    def cache_identity(self) -> str:
        if not self.frozen:
            return super().cache_identity()
        if self.modality == "text":
            settings = f"max_length={self.max_length}"
        else:
            mean, std = self.image_mean.flatten().tolist(), self.image_std.flatten().tolist()
            settings = f"size={self.image_size}:mean={mean}:std={std}"
        stamp = directory_stamp(self.directory)
        return f"hf:{self.directory}:{stamp}:{self.modality}:{self.pooling}:{settings}"

    def extra_repr(self) -> str:
        return (
            f"path={self.path!r}, modality={self.modality!r}, pooling={self.pooling!r}, "
            f"out_dim={self.out_dim}, backbone_frozen={self.backbone_frozen}"
        )


