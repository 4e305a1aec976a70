"""Which encoder reads each side of a recipe's pairs, from the config's ``model.tower_a`` / ``model.tower_b``.

Per side, by what the side holds and the tower named (``auto`` picks the usual one):

==================  ===============  =======================================================================
tower               side holds       what happens
==================  ===============  =======================================================================
``auto``            features         ``frozen``: the features go straight to the trainable projection head
``auto``            text             ``sentence-transformers`` with ``data.text_model`` (MiniLM), frozen
``auto``            image            ``model.image_tower`` (mlp / cnn / vit) trained from scratch
``frozen``          features         as ``auto``
``mlp``             features         a trainable 2-layer MLP of width ``model.image_width`` on the features
``mlp|cnn|vit``     image            that tower, trained from scratch (:func:`alignkit.towers.image_tower`)
``sentence-``       text             a sentence-transformers model (``model.tower_<side>_path``: a local
``transformers``                     directory or an installed package; default ``data.text_model``)
``hf``              text or image    a ``transformers`` model from the local directory ``tower_<side>_path``,
                                     pooled by ``tower_<side>_pooling`` (cls / mean / attention)
``import``          anything         ``tower_<side>_path = "my_pkg.towers:build"`` called with
                                     ``tower_<side>_kwargs``
==================  ===============  =======================================================================

A loaded tower (sentence-transformers, hf, import) is frozen unless ``tower_<side>_finetune: true``:
a frozen one embeds every row once when the data is loaded (cached on disk,
:func:`alignkit.towers.base.embed_frozen`), so training reads features; a fine-tuned one becomes part
of the system and reads the prepared inputs (token ids, pixels) batch by batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from alignkit.towers.image import image_tower, mlp

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["PreparedRows", "is_identity", "load_tower", "resolve", "side_tower"]

_LOADED = ("sentence-transformers", "hf", "import")


class PreparedRows:
    """Row-aligned prepared inputs of a fine-tuned tower (token ids and masks, pixels): ``rows[idx]``
    gives the tower's inputs for those rows (:meth:`~alignkit.towers.base.Tower.select`)."""

    def __init__(self, tower: nn.Module, inputs: Any, n: int) -> None:
        self.tower, self.inputs, self.n = tower, inputs, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: Any) -> Any:
        from alignkit.towers.base import select_rows

        return select_rows(self.tower, self.inputs, rows)


def load_tower(
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    side: str,
    kind: str,
    frozen: bool,
    example: Any = None,
) -> nn.Module:
    """Build the loaded tower ``model.tower_<side>`` (sentence-transformers, hf or import) for a side
    holding ``kind`` (``"text"`` | ``"image"`` | ``"features"``); ``example`` rows let an imported
    module without ``out_dim`` be measured by a dry run."""
    name = model[f"tower_{side}"]
    path = model[f"tower_{side}_path"]
    if name in ("auto", "sentence-transformers"):
        from alignkit.towers.text import SentenceTransformerTower

        return SentenceTransformerTower(path or data["text_model"], frozen=frozen)
    if path is None:
        raise ValueError(f"model.tower_{side} is {name!r}: set model.tower_{side}_path")
    if name == "hf":
        from alignkit.towers.hf import HFTower

        modality = "image" if kind == "image" else "text"
        return HFTower(path, pooling=model[f"tower_{side}_pooling"], frozen=frozen, modality=modality)
    from alignkit.towers.custom import ImportedTower

    return ImportedTower(path, kwargs=model[f"tower_{side}_kwargs"] or {}, frozen=frozen, example=example)


def resolve(model: Mapping[str, Any], side: str, kind: str) -> str:
    """The tower that reads a side holding ``kind``, or a ValueError saying why the pair does not fit."""
    name = model[f"tower_{side}"]
    fits = {
        "features": ("auto", "frozen", "mlp", "import"),
        "text": ("auto", "sentence-transformers", "hf", "import"),
        "image": ("auto", "mlp", "cnn", "vit", "hf", "import"),
    }
    if name not in fits[kind]:
        raise ValueError(
            f"model.tower_{side} is {name!r} but side {side} holds {kind}; "
            f"choose one of {', '.join(fits[kind])}"
        )
    if name == "auto":
        return {"features": "frozen", "text": "sentence-transformers", "image": model["image_tower"]}[kind]
    return name


def side_tower(cfg: Mapping[str, Any], data: RecipeData, side: str) -> tuple[nn.Module, int]:
    """The trainable encoder of side ``"a"`` / ``"b"`` and its output width.

    ``"features"`` sides get ``nn.Identity`` (the projection head is the trainable part) unless
    ``model.tower_<side>`` is ``mlp``; ``"image"`` sides get :func:`~alignkit.towers.image_tower` sized
    to the images; ``"inputs"`` sides get the fine-tuned loaded tower.
    """
    m = cfg["model"]
    kind = data.kind_a if side == "a" else data.kind_b
    if kind == "inputs":
        factory = data.tower_a if side == "a" else data.tower_b
        assert factory is not None
        tower = factory()
        return tower, int(tower.out_dim)
    if kind == "image":
        channels, h, w = data.image_shape()
        name = resolve(m, side, "image")
        return image_tower(name, m["image_width"], m["dropout"], (h, w), channels), int(m["image_width"])
    width = data.width(side)
    if m[f"tower_{side}"] == "mlp":
        return mlp(width, m["image_width"]), int(m["image_width"])
    return nn.Identity(), width


def is_identity(module: nn.Module) -> bool:
    """True for a side whose features go straight to the projection head."""
    return isinstance(module, nn.Identity)

