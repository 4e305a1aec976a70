"""The ``joint`` recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from alignkit.recipes.systems.base import _DualEncoderSystem

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["JointSystem"]


class JointSystem(_DualEncoderSystem):
    """The ``joint`` recipe: :class:`~alignkit.losses.JointLoss` of CLIP, soft-NN KL and structure."""

    recipe = "joint"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        from alignkit.losses import CLIPLoss, JointLoss

        m, spec = cfg["model"], cfg["loss"]
        terms: dict[str, Any] = {}
        if spec["clip_weight"] > 0:
            terms["clip"] = CLIPLoss(
                init_temperature=m["init_temperature"], learn_temperature=m["learn_temperature"]
            )
        if spec["soft_nn_kl_weight"] > 0:
            terms["soft_nn_kl"] = {"temperature": spec["temperature"]}
        if spec["structure_weight"] > 0:
            terms["structure"] = {}
        weights = {
            "clip": spec["clip_weight"],
            "soft_nn_kl": spec["soft_nn_kl_weight"],
            "structure": spec["structure_weight"],
        }
        joint = JointLoss(terms, weights={k: v for k, v in weights.items() if k in terms})
        super().__init__(cfg, data, loss=joint)

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text = batch[0], batch[1]
        e_a, e_b = self.model.encode_a(images), self.model.encode_b(text)
        total, parts = self.model.loss(e_a, e_b, return_parts=True)
        out: dict[str, Any] = {"loss": total, **{k: v.detach() for k, v in parts.items()}}
        if "clip" in self.model.loss.terms:
            out["temperature"] = 1.0 / self.model.loss.terms["clip"].logit_scale.detach()
        return out

