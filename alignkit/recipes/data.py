"""The data a recipe trains on, as tensors: :class:`RecipeData` and :func:`load_data`.

Today's source is the captioned digits (:func:`alignkit.data.load_digits_captions`): 8×8 images,
their captions embedded once by the frozen text tower (cached on disk), class prompts, the ink
profiles (the binder's second "sensor") and the attribute buckets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from alignkit.progress import track
from alignkit.recipes.config import ATTRIBUTES
from alignkit.recipes.towers import PreparedRows, load_tower, resolve
from alignkit.towers.base import is_frozen, prepare_inputs

__all__ = ["RecipeData", "caption_tokens", "ink_profiles", "load_data", "load_recipe_data"]


@dataclass
class RecipeData:
    """The pairs a recipe trains on, as row-aligned sides: row i of ``a`` pairs with row i of ``b``.

    Attributes:
        a: side a's rows: an (N, C, H, W) / (N, H, W) float tensor of images in [0, 1] for a tower
            trained from scratch, an (N, d) float tensor of features, or a row-indexable container
            (:class:`~alignkit.data.sources.FeatureRows` over a memory-mapped file,
            :class:`~alignkit.data.sources.ImageRows`): ``a[rows]`` gives a tensor.
        b: side b's rows, the same forms (for the digits: the frozen caption embeddings).
        splits: ``"train"`` / ``"val"`` / ``"test"`` → (n,) int64 row indices; no group straddles two.
        labels: (N,) int64 class labels, or None.
        prompts: (C, K, D) embeddings of K zero-shot prompts per class in side b's input space, or None
            (then no zero-shot accuracy is reported).
        kind_a, kind_b: ``"image"`` (a trainable image tower reads it), ``"features"`` (a projection
            head reads it; frozen encoders have already embedded text or images into features) or
            ``"inputs"`` (a trainable loaded tower reads it: ``tower_a`` / ``tower_b`` build it).
        groups: (N,) int64 group ids or None: rows sharing one are all correct matches in retrieval.
        profiles: (N, d) a third modality bound to side a (the binder recipe): the digits' ink profiles
            or the first of ``data.extras`` / ``data.extra_columns``; None when there is none.
        attributes: name → (N,) int64 factor codes (the digits' attribute buckets, or label columns).
        captions: the N captions when side b is text, else None.
        class_names: names of labels 0..C-1, or None.
        names: what sides a and b are (for tables and reports).
        source: ``"digits"``, ``"embeddings"`` or ``"pairs"``.
        tower_a, tower_b: factories of the trainable towers that read ``kind == "inputs"`` sides.
        extra_prompts: name → (C, K', D) further prompt sets, each scored as its own labelled
            zero-shot accuracy (the digits: ``seen_template``, a training caption template).
    """

    a: Any
    b: Any
    splits: dict[str, Tensor]
    labels: Tensor | None = None
    prompts: Tensor | None = None
    kind_a: str = "image"
    kind_b: str = "features"
    groups: Tensor | None = None
    profiles: Any = None
    attributes: dict[str, Tensor] = field(default_factory=dict)
    captions: list[str] | None = None
    class_names: list[str] | None = None
    names: tuple[str, str] = ("image", "text")
    source: str = "digits"
    tower_a: Callable[[], nn.Module] | None = None
    tower_b: Callable[[], nn.Module] | None = None
    extra_prompts: dict[str, Tensor] = field(default_factory=dict)

    @property
    def images(self) -> Any:
        """Side a (the digits' images)."""
        return self.a

    @property
    def text(self) -> Any:
        """Side b (the digits' caption embeddings)."""
        return self.b

    @property
    def n(self) -> int:
        """Number of pairs."""
        return len(self.a)

    def width(self, side: str) -> int:
        """Feature width of a ``"features"`` side."""
        value = self.a if side == "a" else self.b
        return int(value.shape[1])

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of side a's images ((N, H, W) counts as one channel)."""
        shape = tuple(self.a.shape[1:])
        return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]


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
    from alignkit.data.digits import SEEN_PROMPT_TEMPLATES

    digits = load_digits_captions(seed=seed)
    images = torch.from_numpy(np.ascontiguousarray(digits.images, dtype=np.float32))
    text = encode_texts(digits.captions, model=text_model)

    def embed_prompts(prompts: list[list[str]]) -> Tensor:
        flat = [p for per_class in prompts for p in per_class]
        return encode_texts(flat, model=text_model).reshape(len(prompts), len(prompts[0]), -1)

    attributes = {}
    for name in ATTRIBUTES:
        words = list(ATTRIBUTE_WORDS[name])
        attributes[name] = torch.tensor(
            [words.index(str(w)) for w in digits.attributes[name]], dtype=torch.long
        )
    return RecipeData(
        a=images,
        b=text,
        labels=torch.from_numpy(np.asarray(digits.labels, dtype=np.int64)),
        prompts=embed_prompts(class_prompts()),
        extra_prompts={"seen_template": embed_prompts(class_prompts(SEEN_PROMPT_TEMPLATES))},
        profiles=ink_profiles(images),
        attributes=attributes,
        splits={k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in digits.splits.items()},
        captions=list(digits.captions),
    )


def caption_tokens(
    captions: list[str], text_model: str = "all-MiniLM-L6-v2", batch_size: int = 128, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """The frozen text model's token embeddings of every caption, for fusion (the ``itm`` recipe).

    Returns ``(tokens, padding)``: (N, T, d) float32 final-layer token embeddings of
    :meth:`~alignkit.towers.text.SentenceTransformerTower.forward_tokens` (MiniLM: d = 384, token 0 is
    [CLS]), all captions padded to the longest T, and the (N, T) bool key-padding mask (True =
    padding). Computed once and cached on disk next to the sentence embeddings (identity: the model
    directory's stamp plus the captions' digest).

    Cost: one MiniLM pass over N captions (≈ 20-40 s for the 1,797 digits captions on 2 cores), then a
    file read of N·T·d floats.
    """
    from safetensors.torch import load_file, save

    from alignkit.io import atomic_write
    from alignkit.towers.base import directory_stamp, embedding_cache_path
    from alignkit.towers.text import SentenceTransformerTower, resolve_sentence_transformer

    if not captions:
        raise ValueError("captions must hold at least one caption, got none")
    _, directory = resolve_sentence_transformer(text_model)  # the model is loaded only on a cache miss
    identity = f"sentence-transformers:{directory}:{directory_stamp(directory)}:token_embeddings"
    path = embedding_cache_path(identity, list(captions))
    path = path.with_name(path.name.replace(".safetensors", ".tokens.safetensors"))
    if path.is_file():
        try:
            cached = load_file(str(path))
            tokens, padding = cached["tokens"], cached["padding"]
            if tokens.shape[0] == len(captions) and padding.shape == tokens.shape[:2]:
                return tokens, padding
        except Exception:  # an unreadable cache file is recomputed
            pass
    tower = SentenceTransformerTower(text_model, frozen=True)
    inputs = tower.prepare(list(captions))  # padded to the longest caption
    chunks = []
    batches = range(0, len(captions), batch_size)
    label = f"token embeddings of {len(captions)} captions"
    with torch.no_grad():
        for start in track(batches, len(batches), label, unit="batch", enabled=progress and len(batches) > 1):
            part = {k: v[start : start + batch_size] for k, v in inputs.items()}
            chunks.append(tower.forward_tokens(part).float().cpu())
    tokens = torch.cat(chunks).contiguous()
    padding = (inputs["attention_mask"] == 0).contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as out:
            out.write(save({"tokens": tokens, "padding": padding}))
    except OSError:
        pass  # no cache: recomputed next time
    return tokens, padding


def load_recipe_data(cfg: Mapping[str, Any], progress: bool = True) -> RecipeData:
    """The data of a validated config: the digits (:func:`load_data`, cached per process) or a user
    source (:func:`alignkit.data.sources.load_source`) with each side run through its tower's
    loading step (:mod:`alignkit.recipes.towers`): frozen encoders embed text or images once
    (cached on disk); fine-tuned ones get their inputs prepared; images for a tower trained from
    scratch and features stay as they are (memory-mapped ``.npy`` files stay on disk).
    """
    d, m = cfg["data"], cfg["model"]
    if d["source"] == "digits":
        return load_data(d["seed"], d["text_model"])
    from alignkit.data.sources import SOURCE_DEFAULTS, load_source

    src = load_source({k: v for k, v in d.items() if k in SOURCE_DEFAULTS and v is not None})
    a, kind_a, factory_a = _side(src.a, src.kind_a, m, d, "a", progress)
    b, kind_b, factory_b = _side(src.b, src.kind_b, m, d, "b", progress)
    prompts = None
    if src.prompts and src.kind_b == "text" and kind_b == "features":
        flat = [p for per_class in src.prompts for p in per_class]
        emb = _embed(load_tower(m, d, "b", "text", frozen=True), flat, progress)
        prompts = emb.reshape(len(src.prompts), len(src.prompts[0]), -1)
    profiles, attributes = None, {}
    for name, value in src.extras.items():
        kind = src.extra_kinds.get(name, "features")
        if kind in ("label",):
            attributes[name] = value
        elif profiles is None and kind in ("features", "text", "number"):
            if kind == "text":
                value = _embed(load_tower(m, d, "b", "text", frozen=True), list(value), progress)
            profiles = value if value.dim() == 2 else value.reshape(-1, 1).float()
    return RecipeData(
        a=a,
        b=b,
        splits=src.splits,
        labels=src.labels,
        prompts=prompts,
        kind_a=kind_a,
        kind_b=kind_b,
        groups=src.groups,
        profiles=profiles,
        attributes=attributes,
        captions=list(src.b) if src.kind_b == "text" else None,
        class_names=src.class_names,
        names=tuple(src.names),  # type: ignore[arg-type]
        source=src.source,
        tower_a=factory_a,
        tower_b=factory_b,
    )


def _embed(tower: nn.Module, items: Any, progress: bool) -> Tensor:
    from alignkit.towers.base import embed_frozen

    return embed_frozen(tower, items, batch_size=128, progress=progress)


def _side(
    value: Any, kind: str, model: Mapping[str, Any], data: Mapping[str, Any], side: str, progress: bool
) -> tuple[Any, str, Callable[[], nn.Module] | None]:
    """(rows, kind, tower factory) of one side after its tower's loading step."""
    name = resolve(model, side, kind)
    if name not in ("sentence-transformers", "hf", "import"):
        return value, ("image" if kind == "image" else "features"), None
    finetune = bool(model[f"tower_{side}_finetune"])
    items = value.to_tensor() if hasattr(value, "to_tensor") else value
    tower = load_tower(model, data, side, kind, frozen=not finetune, example=items[:2])
    if is_frozen(tower):
        return _embed(tower, items, progress), "features", None

    inputs = prepare_inputs(tower, items)  # a trainable part (fine-tuning, an attention pooler)
    return PreparedRows(tower, inputs, len(value)), "inputs", lambda: tower
