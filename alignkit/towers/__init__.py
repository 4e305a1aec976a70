"""Encoders ("towers") on either side of an alignment, built by name with :func:`build_tower`.

    from alignkit.towers import build_tower, embed_frozen
    image = build_tower("vit", image_size=8, patch_size=2, width=64, pooling="attention")
    text = build_tower("sentence-transformers")               # frozen MiniLM, out_dim 384
    feats = embed_frozen(text, captions, batch_size=256)      # (N, 384), computed once, cached

Every tower follows :mod:`alignkit.towers.base`: ``out_dim``, ``frozen``, ``prepare(items)``,
``select(inputs, rows)``, ``forward(inputs) -> (N, out_dim)``.

Kinds (``TOWER_KINDS``) and their keyword arguments (config ``model.tower_a.<key>``):

``"mlp"``, ``"cnn"`` — from-scratch image towers of the digits demo (:mod:`alignkit.towers.image`):
    ``width=256``, ``dropout=0.0``, ``size=8`` (or (H, W)), ``channels=1`` (see :func:`image_tower`).
``"vit"`` — :class:`~alignkit.towers.vit.ViT`, a small Vision Transformer trained from scratch:
    ``image_size=8``, ``patch_size=2``, ``in_channels=1``, ``width=64``, ``depth=2``, ``num_heads=4``,
    ``mlp_ratio=4.0``, ``dropout=0.0``, ``pooling="cls"`` ("cls" | "attention" | "mean"), ``seed=None``.
``"frozen"`` — :class:`~alignkit.towers.frozen.FrozenFeatures`, identity on precomputed features:
    ``out_dim`` (required).
``"sentence-transformers"`` — :class:`~alignkit.towers.text.SentenceTransformerTower`:
    ``path="all-MiniLM-L6-v2"`` (packaged MiniLM, a local directory, or a repo id in the local HF
    cache), ``frozen=True``, ``device="cpu"``, ``max_length=None``.
``"hf"`` — :class:`~alignkit.towers.hf.HFTower`, a ``transformers`` AutoModel from a local directory:
    ``path`` (required), ``pooling=None`` ("cls" | "mean" | "attention"; default mean for text, cls
    for images), ``frozen=True``, ``modality=None`` ("text" | "image", from the config),
    ``max_length=None``, ``image_mean=None``, ``image_std=None``, ``device="cpu"``.
``"import"`` — :class:`~alignkit.towers.custom.ImportedTower`, a user module by import path:
    ``path`` (required, ``"my_pkg.towers:build"``), ``kwargs={}`` (passed to the builder),
    ``frozen=False``, ``example=None`` (items for a dry run when the module has no ``out_dim``),
    ``out_dim=None``.

Only ``"frozen"``, and ``"sentence-transformers"`` / ``"hf"`` with ``frozen=True`` (and a non-
attention pooling), are ``frozen`` towers whose features :func:`embed_frozen` computes once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from alignkit.towers import base, frozen, vit
from alignkit.towers.base import *  # noqa: F403
from alignkit.towers.base import tower_out_dim
from alignkit.towers.frozen import *  # noqa: F403
from alignkit.towers.image import IMAGE_TOWERS, image_tower, mlp
from alignkit.towers.vit import *  # noqa: F403

__all__ = [
    *base.__all__,
    *frozen.__all__,
    *vit.__all__,
    "IMAGE_TOWERS",
    "TOWER_KINDS",
    "build_tower",
    "image_tower",
    "mlp",
    "tower_kwargs",
]

TOWER_KINDS = ("mlp", "cnn", "vit", "frozen", "sentence-transformers", "hf", "import")


def _image_tower(kind: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        return image_tower(kind, **kwargs)

    build.__signature__ = inspect.signature(image_tower).replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in inspect.signature(image_tower).parameters.items() if name != "kind"]
    )
    return build


def _factory(kind: str) -> Callable[..., nn.Module]:
    if kind in ("mlp", "cnn"):
        return _image_tower(kind)
    if kind == "vit":
        return vit.ViT
    if kind == "frozen":
        return frozen.FrozenFeatures
    if kind == "sentence-transformers":
        from alignkit.towers.text import SentenceTransformerTower

        return SentenceTransformerTower
    if kind == "hf":
        from alignkit.towers.hf import HFTower

        return HFTower
    from alignkit.towers.custom import ImportedTower

    return ImportedTower


def _check_kind(kind: object) -> str:
    if kind not in TOWER_KINDS:
        raise ValueError(f"tower kind must be one of {TOWER_KINDS}, got {kind!r}")
    return kind  # type: ignore[return-value]


def tower_kwargs(kind: str) -> dict[str, Any]:
    """The keyword arguments tower ``kind`` takes, with their defaults (``inspect.Parameter.empty``
    for required ones). Importing the kind's module is the only cost (no model is loaded)."""
    parameters = inspect.signature(_factory(_check_kind(kind))).parameters
    return {name: p.default for name, p in parameters.items() if name not in ("self",)}


def build_tower(kind: str, **kwargs: Any) -> nn.Module:
    """Build the tower ``kind`` (one of ``TOWER_KINDS``) with ``kwargs`` (see the module docstring).

    Raises:
        ValueError: unknown kind, an argument the kind does not take, a missing required argument,
            or the tower's own validation (one line each).
    """
    factory = _factory(_check_kind(kind))
    accepted = tower_kwargs(kind)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"tower kind {kind!r} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    missing = [n for n, d in accepted.items() if d is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ValueError(f"tower kind {kind!r} needs {', '.join(missing)}")
    tower = factory(**kwargs)
    if not hasattr(tower, "frozen"):
        tower.frozen = False  # the mlp / cnn modules: trained from scratch
    tower_out_dim(tower)  # every tower states its width
    return tower
