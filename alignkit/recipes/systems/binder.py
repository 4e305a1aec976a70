"""The ``binder`` recipe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alignkit.recipes.systems.base import RecipeSystem, device_of, to_device
from alignkit.recipes.towers import is_identity, side_tower
from alignkit.towers import mlp

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["BinderSystem"]


class BinderSystem(RecipeSystem):
    """The ``binder`` recipe: image anchor, captions (A) and ink profiles (B), (image, A) and
    (image, B) pairs from disjoint halves of the training split (column 3 of the batch: 0 = a caption
    pair, 1 = a profile pair)."""

    recipe = "binder"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        super().__init__()
        from alignkit.models import Binder

        m = cfg["model"]
        self.seed = int(cfg["seed"])
        tower_a, dim_a = side_tower(cfg, data, "a")
        tower_b, dim_b = side_tower(cfg, data, "b")
        profile_dim = int(data.profiles.shape[1])
        self.model = Binder(
            "image",
            {
                "image": tower_a,
                "text": tower_b,
                "profile": mlp(profile_dim, m["profile_width"]),
            },
            {"image": dim_a, "text": dim_b, "profile": m["profile_width"]},
            embed_dim=m["embed_dim"],
            temperature=cfg["loss"]["temperature"],
            projection=m["projection"],
            frozen=("text",) if is_identity(tower_b) else (),
        )

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        kind = torch.zeros(len(rows), dtype=torch.long)
        kind[torch.randperm(len(rows), generator=g)[len(rows) // 2 :]] = 1
        return [data.images[rows], data.text[rows], data.profiles[rows], kind]

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text, profiles, kind = batch
        out: dict[str, Any] = {}
        total: Tensor | None = None
        for value, name, other in ((0, "text", text), (1, "profile", profiles)):
            rows = (kind == value).nonzero().squeeze(1)
            if len(rows) < 2:
                continue
            loss = self.model({"image": images[rows], name: other[rows]})["loss"]
            out[f"loss_{name}"] = loss.detach()
            total = loss if total is None else total + loss
        if total is None:
            raise ValueError("a binder batch needs at least 2 rows of one pair kind; raise train.batch_size")
        out["loss"] = total
        return out

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.embed("image", images)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.model.embed("text", text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.encoders["image"](images)

    @torch.no_grad()
    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        """Emergent caption ↔ profile retrieval on the test split (never trained on these pairs),
        and image → profile retrieval (trained)."""
        from alignkit.functional import recall_at_k

        rows = data.splits["test"]
        device = device_of(self)
        text = self.model.embed("text", to_device(data.text[rows], device))
        prof = self.model.embed("profile", to_device(data.profiles[rows], device))
        image = self.model.embed("image", to_device(data.images[rows], device))
        out: dict[str, float] = {}
        for prefix, q, g in (
            ("text_to_profile", text, prof),
            ("profile_to_text", prof, text),
            ("image_to_profile", image, prof),
        ):
            r = recall_at_k(q, g, k=(1, 5, 10))
            out.update({f"{prefix}_recall@{k}": r[f"recall@{k}"] for k in (1, 5, 10)})
        return out

