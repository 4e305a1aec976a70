"""Module wrappers for the disentangled contrastive objectives (:mod:`alignkit.functional.disentangle`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from alignkit.functional._checks import check_positive
from alignkit.functional.disentangle import decorrelation_loss, subspace_contrastive_loss
from alignkit.losses.registry import register

__all__ = ["DecorrelationLoss", "SubspaceContrastiveLoss"]


def _check_subspaces(num_subspaces: int | Sequence[int]) -> int | tuple[int, ...]:
    if isinstance(num_subspaces, int):
        if num_subspaces < 1:
            raise ValueError(f"num_subspaces must be ≥ 1, got {num_subspaces}")
        return num_subspaces
    widths = tuple(int(w) for w in num_subspaces)
    if not widths or min(widths) < 1:
        raise ValueError(f"num_subspaces widths must be positive, got {list(num_subspaces)}")
    return widths


@register("subspace_contrastive")
class SubspaceContrastiveLoss(nn.Module):
    """Per-sub-space contrastive loss; see :func:`alignkit.functional.subspace_contrastive_loss`.

    ``forward(z1, z2, factors=None)``: z1, z2 (N, d); factors (N, k) integer labels or None.
    """

    def __init__(self, num_subspaces: int | Sequence[int], temperature: float = 0.1) -> None:
        super().__init__()
        check_positive(temperature, "temperature")
        self.num_subspaces = _check_subspaces(num_subspaces)
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor, factors: Tensor | None = None) -> Tensor:
        return subspace_contrastive_loss(z1, z2, self.num_subspaces, self.temperature, factors)

    def extra_repr(self) -> str:
        return f"num_subspaces={self.num_subspaces}, temperature={self.temperature}"


@register("decorrelation")
class DecorrelationLoss(nn.Module):
    """Cross-sub-space correlation penalty; see :func:`alignkit.functional.decorrelation_loss`.

    ``forward(z1, z2=None)``: the penalty of z1 (N, d), or the mean of the penalties of both views,
    so the term fits a :class:`~alignkit.losses.JointLoss` whose terms all receive ``(z1, z2)``.
    """

    def __init__(self, num_subspaces: int | Sequence[int], penalty: str = "correlation") -> None:
        super().__init__()
        if penalty not in ("correlation", "covariance"):
            raise ValueError(f"penalty must be 'correlation' or 'covariance', got {penalty!r}")
        self.num_subspaces = _check_subspaces(num_subspaces)
        self.penalty = penalty

    def forward(self, z1: Tensor, z2: Tensor | None = None) -> Tensor:
        loss = decorrelation_loss(z1, self.num_subspaces, self.penalty)
        if z2 is not None:
            loss = (loss + decorrelation_loss(z2, self.num_subspaces, self.penalty)) / 2
        return loss

    def extra_repr(self) -> str:
        return f"num_subspaces={self.num_subspaces}, penalty={self.penalty!r}"
