"""The ``byol`` recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from alignkit.recipes.systems.base import RecipeSystem
from alignkit.towers import image_tower, mlp

__all__ = ["BYOLSystem"]


class BYOLSystem(RecipeSystem):
    """The ``byol`` recipe: :class:`~alignkit.models.CrossModalBYOL` between the image tower and a
    trainable text MLP on the frozen MiniLM embeddings; the joint image embedding is the image
    branch's *prediction* (what the cross-modal loss trains to match the text projection), the joint
    text embedding the text branch's online projection."""

    recipe = "byol"

    def __init__(self, cfg: Mapping[str, Any], text_dim: int) -> None:
        super().__init__()
        from alignkit.models import CrossModalBYOL

        m = cfg["model"]
        self.model = CrossModalBYOL(
            image_tower(m["image_tower"], m["image_width"], m["dropout"]),
            mlp(text_dim, m["text_width"]),
            dim_a=m["image_width"],
            dim_b=m["text_width"],
            proj_dim=m["embed_dim"],
            hidden_dim=m["hidden_dim"],
            tau_base=m["tau_base"],
        )

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        out = self.model(batch[0], batch[1])
        return {"loss": out["loss"], "loss_ab": out["loss_ab"], "loss_ba": out["loss_ba"]}

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.model.step(step, max_steps)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_a(images, predict=True)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.model.encode_b(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.encoder_a(images)

