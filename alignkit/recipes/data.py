"""The data a recipe trains on, as tensors: :class:`RecipeData` and :func:`load_data`.

Today's source is the captioned digits (:func:`alignkit.data.load_digits_captions`): 8×8 images,
their captions embedded once by the frozen text tower (cached on disk), class prompts, the ink
profiles (the binder's second "sensor") and the attribute buckets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from alignkit.recipes.config import ATTRIBUTES

__all__ = ["RecipeData", "ink_profiles", "load_data"]


@dataclass
class RecipeData:
    """The captioned digits as tensors, shared by every recipe.

    Attributes:
        images: (N, 8, 8) float32 in [0, 1].
        labels: (N,) int64 digits.
        text: (N, D) float32 MiniLM embeddings of the captions (unit rows; D = 384).
        prompts: (10, K, D) embeddings of the K zero-shot prompts of each digit.
        profiles: (N, 16) the ink profiles (:func:`ink_profiles`), the binder's second "sensor".
        attributes: name → (N,) int64 bucket index of each attribute word (0 = the low word).
        splits: ``"train"`` / ``"val"`` / ``"test"`` → (n,) int64 row indices.
        captions: the N captions.
    """

    images: Tensor
    labels: Tensor
    text: Tensor
    prompts: Tensor
    profiles: Tensor
    attributes: dict[str, Tensor]
    splits: dict[str, Tensor]
    captions: list[str]


def ink_profiles(images: Tensor) -> Tensor:
    """Row and column ink profiles: ``[Σ_c p[r, c] / W for each row r ‖ Σ_r p[r, c] / H for each column c]``.

    Shapes: (N, H, W) → (N, H + W). A second, lossy "sensor" view of each image for the binder
    recipe. Cost O(N·H·W).
    """
    if not isinstance(images, Tensor) or images.dim() != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, H, W), got {got}")
    h, w = images.shape[1:]
    return torch.cat([images.sum(2) / w, images.sum(1) / h], dim=1)


@functools.lru_cache(maxsize=4)
def load_data(seed: int = 0, text_model: str = "all-MiniLM-L6-v2") -> RecipeData:
    """The captioned digits (:func:`alignkit.data.load_digits_captions`) with cached caption and prompt
    embeddings (:func:`alignkit.data.encode_texts`), as :class:`RecipeData`.

    Cached per process (the tensors are shared: do not modify them). The first call on a machine
    encodes the 1,797 captions with MiniLM (≈ 20-40 s on 2 CPU cores); later calls read the disk
    cache (``$ALIGNKIT_CACHE`` or ``~/.cache/alignkit``).
    """
    from alignkit.data import ATTRIBUTE_WORDS, class_prompts, encode_texts, load_digits_captions

    digits = load_digits_captions(seed=seed)
    images = torch.from_numpy(np.ascontiguousarray(digits.images, dtype=np.float32))
    text = encode_texts(digits.captions, model=text_model)
    prompts = class_prompts()
    flat = [p for per_class in prompts for p in per_class]
    prompt_emb = encode_texts(flat, model=text_model).reshape(len(prompts), len(prompts[0]), -1)
    attributes = {}
    for name in ATTRIBUTES:
        words = list(ATTRIBUTE_WORDS[name])
        attributes[name] = torch.tensor(
            [words.index(str(w)) for w in digits.attributes[name]], dtype=torch.long
        )
    return RecipeData(
        images=images,
        labels=torch.from_numpy(np.asarray(digits.labels, dtype=np.int64)),
        text=text,
        prompts=prompt_emb,
        profiles=ink_profiles(images),
        attributes=attributes,
        splits={k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in digits.splits.items()},
        captions=list(digits.captions),
    )

