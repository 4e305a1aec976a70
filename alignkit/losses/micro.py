"""Module wrappers for the point-to-point ("micro") objectives of :mod:`alignkit.functional.losses`.

Each module holds its hyper-parameters (validated in ``__init__``) and calls the functional form;
``forward`` takes the tensors. Built by name with :func:`alignkit.losses.build`::

    criterion = losses.build("mcos", margin=0.5)
    loss = criterion(vae_tokens, dino_tokens)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alignkit.functional._checks import check_choice, check_positive, check_reduction
from alignkit.functional.losses import (
    MARGIN_DISTANCES,
    MINING,
    _check_chunk_size,
    _check_margin,
    _check_noise_log_prob,
    batch_triplet_loss,
    byol_loss,
    marginal_cosine_loss,
    nce_loss,
    pair_contrastive_loss,
    repa_loss,
    soft_nn_kl_loss,
    triplet_loss,
)
from alignkit.functional.scores import SCORES
from alignkit.losses.registry import register

__all__ = [
    "BYOLLoss",
    "BatchTripletLoss",
    "MarginalCosineLoss",
    "NCELoss",
    "PairContrastiveLoss",
    "REPALoss",
    "SoftNNKLLoss",
    "TripletLoss",
]


@register("repa")
class REPALoss(nn.Module):
    """REPA token-wise alignment ``−mean cos``; see :func:`alignkit.functional.repa_loss`.

    ``forward(source, target)``: (N, d) or (B, T, d) each. The projector ``h_φ`` that maps the
    trained model's hidden tokens to the frozen encoder's width belongs to the model, not to the loss.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        return repa_loss(source, target, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


@register("marginal_cosine", "mcos")
class MarginalCosineLoss(nn.Module):
    """VA-VAE marginal cosine loss ``mean ReLU(1 − m − cos)``; see
    :func:`alignkit.functional.marginal_cosine_loss` (VA-VAE uses ``margin=0.5``).

    ``forward(x, y)``: (N, d) or (B, T, d) each; a (B, C, H, W) map as ``x.flatten(2).transpose(1, 2)``.
    """

    def __init__(self, margin: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_margin(margin, upper=2.0)
        check_reduction(reduction)
        self.margin = margin
        self.reduction = reduction

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return marginal_cosine_loss(x, y, self.margin, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"


@register("soft_nn_kl")
class SoftNNKLLoss(nn.Module):
    """Soft nearest-neighbour KL; see :func:`alignkit.functional.soft_nn_kl_loss`.

    ``forward(x, y)``: (N, d) each, row ``i`` of ``x`` paired with row ``i`` of ``y``.
    """

    def __init__(
        self, temperature: float = 0.1, reduction: str = "mean", chunk_size: int | None = None
    ) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        check_reduction(reduction)
        _check_chunk_size(chunk_size)
        self.temperature = temperature
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return soft_nn_kl_loss(x, y, self.temperature, self.reduction, self.chunk_size)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}, chunk_size={self.chunk_size}"


@register("pair_contrastive")
class PairContrastiveLoss(nn.Module):
    """Hadsell et al. contrastive loss ``y·D² + (1 − y)·max(0, m − D)²``; see
    :func:`alignkit.functional.pair_contrastive_loss`.

    ``forward(x, y, is_positive)``: x, y (N, d); is_positive (N,) bool or 0/1.
    """

    def __init__(self, margin: float = 1.0, distance: str = "euclidean", reduction: str = "mean") -> None:
        super().__init__()
        check_positive(margin, "margin")
        check_choice(distance, "distance", MARGIN_DISTANCES)
        check_reduction(reduction)
        self.margin = margin
        self.distance = distance
        self.reduction = reduction

    def forward(self, x: Tensor, y: Tensor, is_positive: Tensor) -> Tensor:
        return pair_contrastive_loss(x, y, is_positive, self.margin, self.distance, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, reduction={self.reduction!r}"


@register("triplet")
class TripletLoss(nn.Module):
    """Triplet margin loss on explicit triplets; see :func:`alignkit.functional.triplet_loss`.

    ``forward(anchor, positive, negative)``: (N, d) each.
    """

    def __init__(self, margin: float = 0.2, distance: str = "euclidean", reduction: str = "mean") -> None:
        super().__init__()
        _check_margin(margin)
        check_choice(distance, "distance", MARGIN_DISTANCES)
        check_reduction(reduction)
        self.margin = margin
        self.distance = distance
        self.reduction = reduction

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_loss(anchor, positive, negative, self.margin, self.distance, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, reduction={self.reduction!r}"


@register("batch_triplet")
class BatchTripletLoss(nn.Module):
    """Triplet loss with in-batch mining from labels; see :func:`alignkit.functional.batch_triplet_loss`.

    ``forward(embeddings, labels)``: embeddings (N, d), labels (N,) integers.
    """

    def __init__(
        self,
        margin: float = 0.2,
        distance: str = "euclidean",
        mining: str = "all",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_margin(margin)
        check_choice(distance, "distance", MARGIN_DISTANCES)
        check_choice(mining, "mining", MINING)
        check_reduction(reduction)
        self.margin = margin
        self.distance = distance
        self.mining = mining
        self.reduction = reduction

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return batch_triplet_loss(embeddings, labels, self.margin, self.distance, self.mining, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, distance={self.distance!r}, mining={self.mining!r}, "
            f"reduction={self.reduction!r}"
        )


@register("nce")
class NCELoss(nn.Module):
    """Binary NCE / negative sampling; see :func:`alignkit.functional.nce_loss`.

    ``forward(query, positive, negatives, noise_log_prob=None)``: query (N, d_q), positive (N, d_k),
    negatives (N, M, d_k) or (M, d_k). A ``noise_log_prob`` given to ``forward`` (typically a tensor of
    the sampled keys' log-probabilities) replaces the one given to the constructor.

    With ``score_kind="bilinear"`` the module owns the weight ``A`` of ``qᵀ A k`` as a learnable
    parameter of shape ``dim`` = (d_q, d_k) (an int means square), initialised to the identity (so the
    score starts as the dot product on the shared coordinates).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        noise_log_prob: float | None = None,
        score_kind: str = "dot",
        dim: int | tuple[int, int] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        check_choice(score_kind, "score_kind", SCORES)
        check_reduction(reduction)
        if isinstance(noise_log_prob, Tensor):
            raise ValueError(
                "noise_log_prob of the constructor must be None or a float; pass tensors to forward"
            )
        _check_noise_log_prob(noise_log_prob, 1, 1)
        self.weight: nn.Parameter | None = None
        if score_kind == "bilinear":
            shape = (dim, dim) if isinstance(dim, int) else tuple(dim) if dim is not None else None
            if shape is None or len(shape) != 2 or min(shape) < 1:
                raise ValueError(f"score_kind='bilinear' needs dim, an int or (d_q, d_k) ≥ 1, got {dim!r}")
            self.weight = nn.Parameter(torch.eye(*shape))
        elif dim is not None:
            raise ValueError(f"dim is only used with score_kind='bilinear', got score_kind={score_kind!r}")
        self.temperature = temperature
        self.noise_log_prob = noise_log_prob
        self.score_kind = score_kind
        self.reduction = reduction

    def forward(
        self,
        query: Tensor,
        positive: Tensor,
        negatives: Tensor,
        noise_log_prob: float | Tensor | None = None,
    ) -> Tensor:
        noise = self.noise_log_prob if noise_log_prob is None else noise_log_prob
        return nce_loss(
            query,
            positive,
            negatives,
            noise,
            self.temperature,
            self.reduction,
            score_kind=self.score_kind,
            weight=self.weight,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, noise_log_prob={self.noise_log_prob}, "
            f"score_kind={self.score_kind!r}, reduction={self.reduction!r}"
        )


@register("byol")
class BYOLLoss(nn.Module):
    """BYOL ``2 − 2·cos(p, sg(t))``; see :func:`alignkit.functional.byol_loss` (target detached).

    ``forward(prediction, target)``: (N, d) each. Symmetrising over the two views (or, across
    modalities, image→text and text→image) is the model's job.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return byol_loss(prediction, target, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
