"""Module wrappers for the structural ("macro") objectives of :mod:`alignkit.functional.structural`."""

from __future__ import annotations

from torch import Tensor, nn

from alignkit.functional._checks import check_positive, check_reduction
from alignkit.functional.structural import knn_graph, laplacian_loss, mdms_loss, structure_loss
from alignkit.losses.registry import register

__all__ = ["LaplacianLoss", "MDMSLoss", "StructureLoss"]


@register("structure", "manifold")
class StructureLoss(nn.Module):
    """Manifold-similarity loss ``‖S_x − S_y‖_F² / N²``; see :func:`alignkit.functional.structure_loss`.

    ``forward(x, y)``: x (N, d_x) or (B, N, d_x), y (N, d_y) or (B, N, d_y) → scalar.
    """

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return structure_loss(x, y)


@register("mdms")
class MDMSLoss(nn.Module):
    """Marginal distance-matrix similarity (VA-VAE); see :func:`alignkit.functional.mdms_loss`.

    ``forward(x, y)``: x (N, d_x) or (B, N, d_x), y (N, d_y) or (B, N, d_y) → scalar.

    Args:
        margin: m ≥ 0; VA-VAE uses 0.25.
        chunk_size: rows per block (``None``: automatic, one block for N ≤ 2,048).
    """

    def __init__(self, margin: float = 0.0, chunk_size: int | None = None) -> None:
        super().__init__()
        check_positive(margin, "margin", allow_zero=True)
        if chunk_size is not None and (
            not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be None or an integer ≥ 1, got {chunk_size!r}")
        self.margin = float(margin)
        self.chunk_size = chunk_size

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return mdms_loss(x, y, margin=self.margin, chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, chunk_size={self.chunk_size}"


@register("laplacian")
class LaplacianLoss(nn.Module):
    """Graph-Laplacian smoothness ``Tr(XᵀLX)``; see :func:`alignkit.functional.laplacian_loss`.

    ``graph="knn"`` (default): ``forward(x, y)`` builds ``knn_graph(y.detach(), k, …)`` from the other
    side (no gradient through the graph) and returns ``laplacian_loss(x, A)``: x is pulled to be
    smooth over y's neighbourhoods. ``graph="adjacency"``: ``forward(x, adjacency)`` with an (N, N)
    dense or sparse adjacency given by the caller.

    Args:
        graph: ``"knn"`` | ``"adjacency"``.
        k, metric, weighting, sigma, symmetric, chunk_size: passed to
            :func:`~alignkit.functional.knn_graph` (``graph="knn"`` only).
        normalization: ``None`` (L = D − A) | ``"sym"`` | ``"rw"``.
        reduction: ``"mean"`` (trace / N) | ``"sum"`` (the trace) | ``"none"`` (per-node terms).
    """

    def __init__(
        self,
        graph: str = "knn",
        k: int = 10,
        normalization: str | None = None,
        metric: str = "cosine",
        weighting: str = "connectivity",
        sigma: float | None = None,
        symmetric: bool = True,
        reduction: str = "mean",
        chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        if graph not in ("knn", "adjacency"):
            raise ValueError(f"graph must be 'knn' or 'adjacency', got {graph!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
        if normalization not in (None, "sym", "rw"):
            raise ValueError(f"normalization must be one of (None, 'sym', 'rw'), got {normalization!r}")
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
        if weighting not in ("connectivity", "heat"):
            raise ValueError(f"weighting must be 'connectivity' or 'heat', got {weighting!r}")
        if sigma is not None:
            check_positive(sigma, "sigma")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer ≥ 1, got {chunk_size!r}")
        if graph == "knn" and not symmetric and normalization != "rw":
            raise ValueError(
                "symmetric=False gives a directed kNN graph, which needs normalization='rw', "
                f"got normalization={normalization!r}"
            )
        check_reduction(reduction)
        self.graph = graph
        self.k = k
        self.normalization = normalization
        self.metric = metric
        self.weighting = weighting
        self.sigma = sigma
        self.symmetric = symmetric
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        if self.graph == "knn":
            adjacency = knn_graph(
                other.detach(),
                k=self.k,
                metric=self.metric,
                symmetric=self.symmetric,
                weighting=self.weighting,
                sigma=self.sigma,
                chunk_size=self.chunk_size,
            )
        else:
            adjacency = other
        return laplacian_loss(x, adjacency, normalization=self.normalization, reduction=self.reduction)

    def extra_repr(self) -> str:
        parts = [f"graph={self.graph!r}", f"normalization={self.normalization!r}"]
        if self.graph == "knn":
            parts += [f"k={self.k}", f"metric={self.metric!r}", f"weighting={self.weighting!r}"]
            if self.sigma is not None:
                parts.append(f"sigma={self.sigma}")
            if not self.symmetric:
                parts.append("symmetric=False")
        return ", ".join([*parts, f"reduction={self.reduction!r}"])
