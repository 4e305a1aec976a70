"""The ``supcon`` recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alignkit.recipes.systems.base import _DualEncoderSystem

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["SupConSystem"]


class SupConSystem(_DualEncoderSystem):
    """The ``supcon`` recipe: ``λ_clip·CLIP(e_img, e_txt) + λ_sup·SupCon([e_img, e_txt], digit)``."""

    recipe = "supcon"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        super().__init__(cfg, data)
        from alignkit.losses import SupConLoss

        loss = cfg["loss"]
        self.supcon = SupConLoss(temperature=loss["temperature"], variant=loss["variant"])
        self.clip_weight = float(loss["clip_weight"])
        self.supcon_weight = float(loss["supcon_weight"])

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        return [data.images[rows], data.text[rows], data.labels[rows]]

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text, labels = batch
        out = self.model(images, text)
        views = torch.stack([out["emb_a"], out["emb_b"]], dim=1)  # (N, 2, E): two views per sample
        supcon = self.supcon(views, labels)
        loss = self.clip_weight * out["loss"] + self.supcon_weight * supcon
        return {"loss": loss, "clip": out["loss"], "supcon": supcon, **self._temperature()}

