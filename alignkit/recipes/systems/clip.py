"""The ``clip`` recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from alignkit.recipes.systems.base import _DualEncoderSystem

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["CLIPSystem"]


class CLIPSystem(_DualEncoderSystem):
    """The ``clip`` recipe: a dual encoder (LiT with the text side locked on the digits) trained with
    the CLIP loss and a learnable temperature (Radford et al. 2021), or with ``loss.contrastive:
    siglip`` the sigmoid loss with a learnable temperature and bias (Zhai et al. 2023)."""

    recipe = "clip"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        loss = None
        if cfg["loss"]["contrastive"] == "siglip":
            from alignkit.losses import SigLIPLoss

            m = cfg["model"]
            temperature = m["init_temperature"]
            loss = SigLIPLoss(init_temperature=temperature, learn_temperature=m["learn_temperature"])
        super().__init__(cfg, data, loss=loss)

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text = batch[0], batch[1]
        out = self.model(images, text)
        return {"loss": out["loss"], **self._temperature()}
