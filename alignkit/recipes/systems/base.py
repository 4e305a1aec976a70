"""What every recipe's system provides: :class:`RecipeSystem`, and the shared dual-encoder base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import EPS
from alignkit.towers import image_tower

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["RecipeSystem", "device_of", "normalize"]


def normalize(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=EPS)


def _prompt_classes(embed: Any, prompts: Tensor) -> Tensor:
    """Prompt ensembling: ``w_c = normalize(mean_k normalize(embed(prompts[c, k])))`` → (C, E)."""
    c, k, d = prompts.shape
    e = normalize(embed(prompts.reshape(c * k, d))).reshape(c, k, -1)
    return normalize(e.mean(1))


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
        """(N, 8, 8) images → (N, E) joint-space embeddings (not normalised)."""

    @abstractmethod
    def encode_text(self, text: Tensor) -> Tensor:
        """(N, D) MiniLM caption embeddings → (N, E) joint-space embeddings (not normalised)."""

    @abstractmethod
    def image_features(self, images: Tensor) -> Tensor:
        """(N, 8, 8) images → the image tower's raw (N, W) features."""

    @torch.no_grad()
    def embed(self, data: RecipeData, rows: Tensor) -> dict[str, Tensor]:
        device = device_of(self)
        images, text = data.images[rows].to(device), data.text[rows].to(device)
        return {
            "image": normalize(self.encode_image(images)),
            "text": normalize(self.encode_text(text)),
            "image_tower": self.image_features(images),
            "text_tower": text,
        }

    @torch.no_grad()
    def class_embeddings(self, prompts: Tensor) -> Tensor:
        return _prompt_classes(self.encode_text, prompts.to(device_of(self)))

    @torch.no_grad()
    def zero_shot_logits(self, images: Tensor, class_text: Tensor) -> Tensor:
        """(N, C) cosine similarities of the image embeddings to the class vectors."""
        return normalize(self.encode_image(images.to(device_of(self)))) @ class_text.T

    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        return {}

class _DualEncoderSystem(RecipeSystem):
    """A :class:`~alignkit.models.DualEncoder` with the image tower as tower a and the (already
    encoded, frozen) text embeddings through ``nn.Identity`` as tower b."""

    def __init__(self, cfg: Mapping[str, Any], text_dim: int, loss: nn.Module | None = None) -> None:
        super().__init__()
        from alignkit.losses import CLIPLoss
        from alignkit.models import DualEncoder

        m = cfg["model"]
        tower = image_tower(m["image_tower"], m["image_width"], m["dropout"])
        if loss is None:
            loss = CLIPLoss(init_temperature=m["init_temperature"], learn_temperature=m["learn_temperature"])
        self.model = DualEncoder(
            tower,
            nn.Identity(),
            dim_a=m["image_width"],
            dim_b=text_dim,
            embed_dim=m["embed_dim"],
            projection=m["projection"],
            freeze_b=True,
            loss=loss,
        )

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_a(images)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.model.encode_b(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.tower_a(images)

    @torch.no_grad()
    def class_embeddings(self, prompts: Tensor) -> Tensor:
        # class prompts → text tower (cached MiniLM) → projection → DualEncoder.zero_shot_classifier
        prompts = prompts.to(device_of(self))
        return self.model.zero_shot_classifier([prompts[c] for c in range(prompts.shape[0])], modality="b")

    @torch.no_grad()
    def zero_shot_logits(self, images: Tensor, class_text: Tensor) -> Tensor:
        return self.model.classify(images.to(device_of(self)), weights=class_text, modality="a")

    def _temperature(self) -> dict[str, Tensor]:
        scale = self.model.logit_scale
        return {} if scale is None else {"temperature": 1.0 / scale.detach()}

