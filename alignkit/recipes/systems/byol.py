"""The ``byol`` recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from alignkit.recipes.systems.base import RecipeSystem
from alignkit.recipes.towers import is_identity, side_tower
from alignkit.towers import mlp

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["BYOLSystem"]


class BYOLSystem(RecipeSystem):
    """The ``byol`` recipe: :class:`~alignkit.models.CrossModalBYOL` between the image tower and a
    trainable text MLP on the frozen MiniLM embeddings; the joint image embedding is the image
    branch's *prediction* (what the cross-modal loss trains to match the text projection), the joint
    text embedding the text branch's online projection."""

    recipe = "byol"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        super().__init__()
        from alignkit.models import CrossModalBYOL

        m = cfg["model"]
        tower_a, dim_a = side_tower(cfg, data, "a")
        tower_b, dim_b = side_tower(cfg, data, "b")
        head = mlp(dim_b, m["text_width"])  # a trainable text branch on top of side b's tower
        self.model = CrossModalBYOL(
            tower_a,
            head if is_identity(tower_b) else nn.Sequential(tower_b, head),
            dim_a=dim_a,
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

