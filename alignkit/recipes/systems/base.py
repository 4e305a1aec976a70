"""What every recipe's system provides: :class:`RecipeSystem`, and the shared dual-encoder base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import EPS
from alignkit.recipes.towers import is_identity, side_tower

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["RecipeSystem", "device_of", "normalize", "to_device"]


def normalize(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=EPS)


def _prompt_classes(embed: Any, prompts: Tensor) -> Tensor:
    """Prompt ensembling: ``w_c = normalize(mean_k normalize(embed(prompts[c, k])))`` → (C, E)."""
    c, k, d = prompts.shape
    e = normalize(embed(prompts.reshape(c * k, d))).reshape(c, k, -1)
    return normalize(e.mean(1))


def to_device(rows: Any, device: torch.device) -> Any:
    """A side's rows on ``device``: a tensor, or the dict of tensors a loaded tower reads."""
    if isinstance(rows, dict):
        return {k: to_device(v, device) for k, v in rows.items()}
    return rows.to(device)


def device_of(module: nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")

class RecipeSystem(nn.Module, ABC):
    """What every recipe's system provides (on top of the Trainer's ``training_step``).

    * ``batch(data, rows)`` → the list of training tensors for the given rows;
    * ``training_step(batch)`` → ``{"loss", …}`` (the :class:`~alignkit.train.Trainer` protocol);
    * ``validation_loss(batch)`` → the loss on a held-out batch, deterministic (no random views);
    * ``embed(data, rows)`` → ``{"image", "text"}`` L2-normalised joint embeddings (row i = image i
      and its caption) and ``{"image_tower", "text_tower"}`` raw tower outputs;
    * ``class_embeddings(prompts)`` → (C, E) zero-shot class vectors from (C, K, D) prompt
      embeddings;
    * ``extra_metrics(data)`` → recipe-specific test-split numbers (may be empty).
    """

    recipe = ""

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        return [data.images[rows], data.text[rows]]

    @abstractmethod
    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        """``{"loss": scalar, …}`` for one training batch (the Trainer protocol)."""

    def validation_loss(self, batch: Sequence[Tensor]) -> Tensor:
        return self.training_step(batch)["loss"]

    @abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """Side a's rows (the digits' (N, 8, 8) images) → (N, E) joint-space embeddings (not normalised)."""

    @abstractmethod
    def encode_text(self, text: Tensor) -> Tensor:
        """Side b's rows (the digits' (N, D) MiniLM caption embeddings) → (N, E) joint-space embeddings."""

    @abstractmethod
    def image_features(self, images: Tensor) -> Tensor:
        """Side a's rows → side a's tower output (N, W) (before the projection head)."""

    def text_features(self, text: Any) -> Tensor:
        """Side b's rows → side b's tower output (the features themselves when b holds features)."""
        return text if isinstance(text, Tensor) else self.encode_text(text)

    @torch.no_grad()
    def embed(self, data: RecipeData, rows: Tensor) -> dict[str, Tensor]:
        device = device_of(self)
        images, text = to_device(data.images[rows], device), to_device(data.text[rows], device)
        return {
            "image": normalize(self.encode_image(images)),
            "text": normalize(self.encode_text(text)),
            "image_tower": self.image_features(images),
            "text_tower": self.text_features(text),
        }

    @torch.no_grad()
    def class_embeddings(self, prompts: Tensor) -> Tensor:
        return _prompt_classes(self.encode_text, prompts.to(device_of(self)))

    @torch.no_grad()
    def zero_shot_logits(self, images: Tensor, class_text: Tensor) -> Tensor:
        """(N, C) cosine similarities of the image embeddings to the class vectors."""
        return normalize(self.encode_image(to_device(images, device_of(self)))) @ class_text.T

    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        return {}

class _DualEncoderSystem(RecipeSystem):
    """A :class:`~alignkit.models.DualEncoder` with side a's tower as tower a and side b's as tower b
    (for the digits: the image tower, and the frozen caption embeddings through ``nn.Identity``)."""

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData, loss: nn.Module | None = None) -> None:
        super().__init__()
        from alignkit.losses import CLIPLoss
        from alignkit.models import DualEncoder

        m = cfg["model"]
        tower, dim_a = side_tower(cfg, data, "a")
        tower_b, dim_b = side_tower(cfg, data, "b")
        if loss is None:
            loss = CLIPLoss(init_temperature=m["init_temperature"], learn_temperature=m["learn_temperature"])
        self.model = DualEncoder(
            tower,
            tower_b,
            dim_a=dim_a,
            dim_b=dim_b,
            embed_dim=m["embed_dim"],
            projection=m["projection"],
            freeze_b=is_identity(tower_b),
            loss=loss,
        )

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_a(images)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.model.encode_b(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.tower_a(images)

    def text_features(self, text: Any) -> Tensor:
        return self.model.tower_b(text)

    @torch.no_grad()
    def class_embeddings(self, prompts: Tensor) -> Tensor:
        # class prompts → text tower (cached MiniLM) → projection → DualEncoder.zero_shot_classifier
        prompts = prompts.to(device_of(self))
        return self.model.zero_shot_classifier([prompts[c] for c in range(prompts.shape[0])], modality="b")

    @torch.no_grad()
    def zero_shot_logits(self, images: Tensor, class_text: Tensor) -> Tensor:
        return self.model.classify(to_device(images, device_of(self)), weights=class_text, modality="a")

    def _temperature(self) -> dict[str, Tensor]:
        scale = self.model.logit_scale
        return {} if scale is None else {"temperature": 1.0 / scale.detach()}

