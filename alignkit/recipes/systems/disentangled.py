"""The ``disentangled`` recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from alignkit.recipes.systems.base import RecipeSystem, device_of, to_device
from alignkit.recipes.towers import is_identity, side_tower

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["DisentangledSystem"]


class DisentangledSystem(RecipeSystem):
    """The ``disentangled`` recipe: :class:`DisentangledContrastive` on two noisy views of each image
    with factors (digit, attribute bucket), plus ``λ_clip·CLIP`` between the whole image embedding
    and a linear projection of the caption embedding."""

    recipe = "disentangled"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        super().__init__()
        from alignkit.losses import CLIPLoss
        from alignkit.models.disentangle import DisentangledContrastive

        m, spec, d = cfg["model"], cfg["loss"], cfg["data"]
        self.attribute = d["attribute"]
        self.noise = float(d["noise"])
        self.probe_iterations = int(cfg["train"]["probe_iterations"])
        tower_a, dim_a = side_tower(cfg, data, "a")
        self.clamp = data.kind_a == "image"  # noisy views of images stay in [0, 1]
        self.model = DisentangledContrastive(
            tower_a,
            in_dim=dim_a,
            subspaces={"digit": m["subspace_dim"], self.attribute: m["subspace_dim"]},
            hidden_dim=m["hidden_dim"],
            temperature=spec["temperature"],
            independence=spec["independence"],
            independence_weight=spec["independence_weight"],
        )
        tower_b, dim_b = side_tower(cfg, data, "b")
        proj = nn.Linear(dim_b, 2 * m["subspace_dim"], bias=False)
        self.text_proj = proj if is_identity(tower_b) else nn.Sequential(tower_b, proj)
        self.clip = CLIPLoss(init_temperature=m["init_temperature"])
        self.clip_weight = float(spec["clip_weight"])

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        factors = torch.stack([data.labels[rows], data.attributes[self.attribute][rows]], dim=1)
        return [data.images[rows], data.text[rows], factors]

    def _loss(self, batch: Sequence[Tensor], generator: torch.Generator | None) -> dict[str, Any]:
        images, text, factors = batch

        def view() -> Tensor:
            noise = torch.randn(images.shape, generator=generator, device="cpu").to(images.device)
            noisy = images + self.noise * noise
            return noisy.clamp(0.0, 1.0) if self.clamp else noisy

        parts = self.model.loss(view(), view(), factors, output_dict=True)
        assert isinstance(parts, dict)
        out: dict[str, Any] = {
            "contrastive": parts["contrastive"].detach(),
            "independence": parts["independence"].detach(),
        }
        total = parts["loss"]
        if self.clip_weight > 0:
            clip = self.clip(self.model(images), self.text_proj(text))
            out["clip"] = clip.detach()
            total = total + self.clip_weight * clip
        out["loss"] = total
        return out

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        return self._loss(batch, None)

    def validation_loss(self, batch: Sequence[Tensor]) -> Tensor:
        return self._loss(batch, torch.Generator().manual_seed(0))["loss"]

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model(images)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.text_proj(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.encoder(images)

    @torch.no_grad()
    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        """Linear-probe accuracy of each factor (digit, attribute) from each sub-space (test split)."""
        device = device_of(self)
        tr, te = data.splits["train"], data.splits["test"]
        ftr = self.batch(data, tr)[2].to(device)
        fte = self.batch(data, te)[2].to(device)
        report = self.model.probe_report(
            to_device(data.images[tr], device),
            ftr,
            to_device(data.images[te], device),
            fte,
            max_iter=self.probe_iterations,
        )
        return {
            f"probe_{factor}_from_{space}": float(acc)
            for factor, row in report.items()
            for space, acc in row.items()
        }

