"""Module wrapper for the differentiable similarity metric of :mod:`alignkit.functional.similarity`."""

from __future__ import annotations

from torch import Tensor, nn

from alignkit.functional._checks import check_positive
from alignkit.functional.similarity import _KERNELS, cka
from alignkit.losses.registry import register

__all__ = ["CKALoss"]


@register("cka")
class CKALoss(nn.Module):
    """``1 − CKA(x, y)``: pull the representational geometry of x towards y's; see
    :func:`alignkit.functional.cka` (Kornblith et al. 2019).

    ``forward(x, y)``: x (N, d_x), y (N, d_y) → scalar in [0, 1] (biased) or [0, 2] (unbiased).
    Gradients are finite everywhere, also at CKA = 1 (identical inputs) and for constant input.

    Args:
        kernel: ``"linear"`` | ``"rbf"``.
        unbiased: unbiased (debiased) HSIC estimator; needs N ≥ 4.
        threshold: RBF bandwidth as a fraction of the median distance (> 0).
    """

    def __init__(self, kernel: str = "linear", unbiased: bool = False, threshold: float = 1.0) -> None:
        super().__init__()
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
        if not isinstance(unbiased, bool):
            raise ValueError(f"unbiased must be a bool, got {unbiased!r}")
        check_positive(threshold, "threshold")
        self.kernel = kernel
        self.unbiased = unbiased
        self.threshold = float(threshold)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return 1 - cka(x, y, kernel=self.kernel, unbiased=self.unbiased, threshold=self.threshold)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, unbiased={self.unbiased}, threshold={self.threshold}"
