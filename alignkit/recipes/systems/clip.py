"""The ``clip`` recipe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from alignkit.recipes.systems.base import _DualEncoderSystem

__all__ = ["CLIPSystem"]


class CLIPSystem(_DualEncoderSystem):
    """The ``clip`` recipe: LiT with the text side locked, CLIP loss with a learnable temperature."""

    recipe = "clip"

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text = batch[0], batch[1]
        out = self.model(images, text)
        return {"loss": out["loss"], **self._temperature()}

