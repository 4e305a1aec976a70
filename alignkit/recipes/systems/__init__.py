"""One trainable system per recipe, and :func:`build_system` that picks it from a config.

==============  ====================================================================================
``clip``        :class:`~alignkit.models.DualEncoder`: image tower trained from scratch + projection,
                frozen text embeddings + projection, CLIP loss with a learnable temperature (Radford
                et al. 2021; LiT, Zhai et al. 2022, with the *text* side locked).
``byol``        :class:`~alignkit.models.CrossModalBYOL`: the image branch predicts the momentum target
                of the text branch (a trainable MLP on the frozen text embeddings) and back (Grill et
                al. 2020, "Bootstrap Your Own Latent").
``supcon``      the CLIP dual encoder plus the supervised contrastive loss over the image and text
                embeddings as two views of each sample, positives = same label (Khosla et al. 2020).
``joint``       the dual encoder trained with ``λ1·soft-NN KL + λ2·structure`` (+ ``λ0·CLIP``) through
                :class:`~alignkit.losses.JointLoss`. Both the soft-NN KL and the structure loss vanish
                when every embedding collapses to one point, so the CLIP term (``loss.clip_weight``)
                anchors the pairing; set it to 0 to study the pure micro + macro objective.
``binder``      :class:`~alignkit.models.Binder` with the image as anchor, modality A = captions and
                modality B = a second "sensor" (the digits' row and column ink profiles). The training
                split is halved at random: one half gives (image, caption) pairs, the other (image,
                profile) pairs, so A and B never meet in a loss; their alignment *emerges* (Girdhar et
                al. 2023, "ImageBind"), reported as caption ↔ profile retrieval.
``disentangled`` :class:`~alignkit.models.disentangle.DisentangledContrastive` on the image tower with
                one sub-space for the digit and one for an attribute, two noisy views per image, an
                independence penalty, plus a CLIP term tying the whole embedding to the captions.
``repa``        :class:`~alignkit.models.SiT`, a small diffusion transformer trained by flow matching on
                the digits, plus REPA (Yu et al. 2024) aligning one block's tokens with a frozen
                self-supervised encoder's patch tokens; evaluated by FD / class accuracy / precision-
                recall of its samples (:class:`~alignkit.recipes.systems.repa.REPASystem`).
``itm``         CLIP plus image–text matching: ViT patch tokens and MiniLM token embeddings fused by
                :class:`~alignkit.nn.CoAttention`, a matched / not-matched head trained on hard negatives
                mined from the contrastive similarities (ALBEF, Li et al. 2021); at test time the matcher
                re-ranks the contrastive top-k (:class:`~alignkit.recipes.systems.itm.ITMSystem`).
==============  ====================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from alignkit.recipes.config import validate_config
from alignkit.recipes.systems.base import RecipeSystem
from alignkit.recipes.systems.binder import BinderSystem
from alignkit.recipes.systems.byol import BYOLSystem
from alignkit.recipes.systems.clip import CLIPSystem
from alignkit.recipes.systems.disentangled import DisentangledSystem
from alignkit.recipes.systems.itm import ITMSystem
from alignkit.recipes.systems.joint import JointSystem
from alignkit.recipes.systems.repa import REPASystem
from alignkit.recipes.systems.supcon import SupConSystem

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

#: recipe name → its system class
SYSTEMS: dict[str, Any] = {
    "clip": CLIPSystem,
    "byol": BYOLSystem,
    "supcon": SupConSystem,
    "joint": JointSystem,
    "binder": BinderSystem,
    "disentangled": DisentangledSystem,
    "repa": REPASystem,
    "itm": ITMSystem,
}

__all__ = [
    "SYSTEMS",
    "BYOLSystem",
    "BinderSystem",
    "CLIPSystem",
    "DisentangledSystem",
    "ITMSystem",
    "JointSystem",
    "REPASystem",
    "RecipeSystem",
    "SupConSystem",
    "build_system",
]


def build_system(config: Mapping[str, Any], data: RecipeData) -> RecipeSystem:
    """The system of ``config["recipe"]`` (config as returned by :func:`validate_config`), its towers
    chosen for ``data``'s sides (:func:`alignkit.recipes.towers.side_tower`)."""
    cfg = validate_config(config)
    return SYSTEMS[cfg["recipe"]](cfg, data)
