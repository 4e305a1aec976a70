"""Structural ("macro") alignment objectives (MISSION §2).

Point-to-point losses pull ``x_i`` towards ``y_i``; structural losses ask only that the *relations*
between samples agree on both sides, so x and y may have different widths and live in unrelated
spaces:

* :func:`structure_loss` — manifold similarity ``‖S_x − S_y‖_F² / N²`` of the within-side cosine
  similarity matrices, exact in O(N·d²) through d×d Gram matrices;
* :func:`mdms_loss` — VA-VAE's marginal distance-matrix similarity
  ``(1/N²) Σ_ij ReLU(|S_x,ij − S_y,ij| − m)``, in row blocks with O(N·block) memory;
* :func:`laplacian_loss` — the graph-Laplacian smoothness ``Tr(XᵀLX)`` (Belkin & Niyogi 2003) of x
  on a graph, typically :func:`knn_graph` built from the other side.

Cosine similarities follow the library convention for zero vectors: a zero row has cosine 0 with
every row, itself included (rows are scaled by ``1 / max(‖x_i‖, EPS)``).

    >>> import torch, alignkit.functional as AF
    >>> x, y = torch.randn(512, 64), torch.randn(512, 384)
    >>> loss = AF.structure_loss(x, y) + AF.mdms_loss(x, y, margin=0.25)
    >>> loss = loss + AF.laplacian_loss(x, AF.knn_graph(y, k=10), normalization="sym")
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from alignkit.functional._checks import (
    EPS,
    check_choice,
    check_features,
    check_int,
    check_positive,
    check_reduction,
    check_same_device,
    compute_dtype,
    l2_normalize,
    one_device,
    reduce,
    shape_str,
)
from alignkit.functional.neighbors import knn

__all__ = ["knn_graph", "laplacian_loss", "mdms_loss", "structure_loss"]

# Rows per float32 Gram product in structure_loss; the blocks are summed in float64, so the rounding
# error of a Gram entry does not grow with N (see structure_loss).
_GRAM_CHUNK = 8192
# Default mdms block: about this many (row, column) pairs per block, i.e. one block up to N = 2048.
_MDMS_BLOCK_PAIRS = 2048 * 2048

_NORMALIZATIONS = (None, "sym", "rw")
_METRICS = ("cosine", "euclidean")
_WEIGHTINGS = ("connectivity", "heat")


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _normalized_pair(x: Tensor, y: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor, torch.dtype]:
    """Validate x, y ((N, d) or (B, N, d), same leading dims); return both row-normalised (unless
    ``normalize=False``) as (B, N, d) in the compute dtype, and the dtype to return the result in."""
    check_features(x, "x", ndim=(2, 3))
    check_features(y, "y", ndim=(2, 3))
    if x.dim() != y.dim() or x.shape[:-1] != y.shape[:-1]:
        lead = "(N, ·)" if x.dim() == 2 else "(B, N, ·)"
        raise ValueError(
            f"x and y must have the same rank and leading dimensions {lead} (only the feature width "
            f"may differ), got x {shape_str(x)} and y {shape_str(y)}"
        )
    if x.shape[-2] == 0:
        raise ValueError(f"x and y must have at least one row, got x {shape_str(x)}")
    check_same_device(("x", x), ("y", y))
    dtype = compute_dtype(x, y)
    out = torch.promote_types(x.dtype, y.dtype)
    xh, yh = x.to(dtype), y.to(dtype)
    if normalize:
        xh, yh = l2_normalize(xh), l2_normalize(yh)
    if x.dim() == 2:
        xh, yh = xh.unsqueeze(0), yh.unsqueeze(0)
    return xh, yh, out


# --------------------------------------------------------------------------------------------------
# structure_loss


def _unit_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x / ‖x‖`` per row (as :func:`l2_normalize`: scaled by the row's max first, so exact for any
    finite magnitude; a zero row stays zero) and the reciprocal norms ``1/‖x‖`` (B, N, 1), ``1/EPS``
    for a zero row (the gradient ``F.normalize`` gives there)."""
    scale = x.abs().amax(-1, keepdim=True)
    zero = scale == 0
    scaled = x / torch.where(zero, torch.ones_like(scale), scale)
    norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)  # in [1, √d], or 0 for a zero row
    unit = scaled / norm.clamp_min(1.0)
    inv = torch.where(zero, torch.full_like(scale, 1 / EPS), norm.clamp_min(1.0).reciprocal() / scale)
    return unit, inv


def _unit_rows_backward(grad: Tensor, unit: Tensor, inv: Tensor) -> Tensor:
    """Gradient through ``_unit_rows``: ``(g − x̂·⟨g, x̂⟩)/‖x‖`` (for a zero row x̂ = 0: ``g/EPS``)."""
    radial = unit * (grad * unit).sum(-1, keepdim=True)
    return grad.sub_(radial).mul_(inv)


class _GramStructure(torch.autograd.Function):
    """Per batch item ``‖X̂X̂ᵀ − ŶŶᵀ‖_F² = ‖X̂ᵀX̂‖² + ‖ŶᵀŶ‖² − 2‖X̂ᵀŶ‖²`` (float64 result), X̂, Ŷ
    the row-normalised inputs (normalised here, so the backward needs no autograd graph).

    Gram products are taken over row blocks of ``_GRAM_CHUNK`` in the input dtype and summed in
    float64. Backward: ``∂/∂X̂ = 4(X̂·G_xx − Ŷ·G_xyᵀ)``, ``∂/∂Ŷ = 4(Ŷ·G_yy − X̂·G_xy)``, then through
    the row normalisation.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:
        xh, inv_x = _unit_rows(x)
        yh, inv_y = _unit_rows(y)
        batch, n, dx = xh.shape
        dy = yh.shape[-1]
        acc = torch.float64
        gxx = xh.new_zeros(batch, dx, dx, dtype=acc)
        gyy = xh.new_zeros(batch, dy, dy, dtype=acc)
        gxy = xh.new_zeros(batch, dx, dy, dtype=acc)
        for start in range(0, n, _GRAM_CHUNK):
            a, b = xh[:, start : start + _GRAM_CHUNK], yh[:, start : start + _GRAM_CHUNK]
            gxx += (a.mT @ a).to(acc)
            gyy += (b.mT @ b).to(acc)
            gxy += (a.mT @ b).to(acc)
        sums = gxx.square().sum((-2, -1)) + gyy.square().sum((-2, -1)) - 2 * gxy.square().sum((-2, -1))
        ctx.save_for_backward(xh, yh, inv_x, inv_y, gxx.to(xh.dtype), gyy.to(xh.dtype), gxy.to(xh.dtype))
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        xh, yh, inv_x, inv_y, gxx, gyy, gxy = ctx.saved_tensors
        scale = (4 * grad).to(xh.dtype)[:, None, None]
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.baddbmm(xh @ gxx, yh, gxy.mT, alpha=-1).mul_(scale)
            grad_x = _unit_rows_backward(grad_x, xh, inv_x)
        if ctx.needs_input_grad[1]:
            grad_y = torch.baddbmm(yh @ gyy, xh, gxy, alpha=-1).mul_(scale)
            grad_y = _unit_rows_backward(grad_y, yh, inv_y)
        return grad_x, grad_y


@one_device
def structure_loss(x: Tensor, y: Tensor) -> Tensor:
    """Manifold-similarity loss ``‖S_x − S_y‖_F² / N²`` between within-side cosine similarities.

    ``S_x[i, j] = cos(x_i, x_j)`` and ``S_y[i, j] = cos(y_i, y_j)``: the loss asks that the two sides
    agree on how similar every pair of samples is, without comparing x with y directly, so the
    widths d_x and d_y may differ. The diagonal is included (its difference is 0, except for a zero
    row, whose cosine with everything, itself included, is 0). Invariant to rotations and to positive
    rescaling of the rows of either side.

    Computed exactly without any N×N matrix: with row-normalised X̂ and Ŷ,
    ``‖X̂X̂ᵀ − ŶŶᵀ‖² = ‖X̂ᵀX̂‖² + ‖ŶᵀŶ‖² − 2‖X̂ᵀŶ‖²`` (``‖AAᵀ‖ = ‖AᵀA‖``). Only when
    ``N·(d_x + d_y) ≤ d_x² + d_y² + d_x·d_y`` (N ≲ 1.5·d, e.g. 256 tokens of width 768) is the N×N
    form cheaper in both time and memory than the d×d Grams, and it is used instead; both are exact.

    Precision: the three Gram terms are each up to N² while the loss can be tiny, so the d×d Gram
    products are taken in the compute dtype over blocks of 8,192 rows and summed and combined in
    float64. For float32 input at N = 8,192, d = 256 the result matches the float64 N×N form to an
    **absolute** error below 1e-8: measured ≤ 7e-9 over independent, nearly equal, rotated, low-rank
    and mean-shifted data with loss values from 1e-16 to 0.17 (the loss is at most 4); at N = 2²⁰,
    d = 64 the measured error is below 1e-9, since the float64 block sums keep it from growing with
    N. The bound is absolute, not relative: a loss of 1e-4 or more is accurate to 1e-4 relative, a
    loss below ~1e-8 is resolved only to that level. Gradients are computed in the compute dtype.

    Args:
        x: (N, d_x) or (B, N, d_x) features, rows are samples (tokens).
        y: (N, d_y) or (B, N, d_y); same rank and leading dimensions as x.
            With a batch dimension the similarity matrices are within each batch item (e.g. over
            the tokens of each image) and the loss is averaged over B.

    Returns:
        Scalar loss in [0, 4], in the promoted dtype of x and y.

    Cost: O(N·(d_x + d_y)²) time, O(d_x² + d_y²) extra memory (Gram form); O(N²·(d_x + d_y)) time
    and O(N²) memory in the small-N case. Memory for backward: the normalised inputs and the Grams.

    Example::

        loss = structure_loss(student_tokens, teacher_tokens)   # (N, 384) vs (N, 768)
    """
    xc, yc, out = _normalized_pair(x, y, normalize=False)
    n, dx, dy = xc.shape[1], xc.shape[-1], yc.shape[-1]
    if n * (dx + dy) <= dx * dx + dy * dy + dx * dy:
        xh, yh = l2_normalize(xc), l2_normalize(yc)
        diff = xh @ xh.mT - yh @ yh.mT
        sums = diff.square().sum((-2, -1), dtype=torch.float64)
    else:
        sums = _GramStructure.apply(xc, yc)
    return (sums.mean() / (n * n)).to(out)


# --------------------------------------------------------------------------------------------------
# mdms_loss


class _BlockMDMS(torch.autograd.Function):
    """Per batch item ``Σ_ij ReLU(|D_ij| − m)``, ``D = X̂X̂ᵀ − ŶŶᵀ`` (float64), in row blocks.

    The loss is a sum of per-entry terms of a symmetric D, so its gradient is available block by
    block while the forward runs: with ``W_ij = sign(D_ij)·[|D_ij| > m]`` (symmetric),
    ``∂/∂X̂ = 2·W·X̂`` and ``∂/∂Ŷ = −2·W·Ŷ``, one row block of W at a time. The forward stores these
    (B, N, d) gradients (only for inputs that need one, decided by the caller from the grad mode) and
    the backward scales them: no N×N matrix is kept and nothing is recomputed, so one block costs
    three matrix products where autograd through the N×N form costs four, and memory is
    O(B·block·N + B·N·d).
    """

    @staticmethod
    def forward(
        ctx: Any, xh: Tensor, yh: Tensor, margin: float, block: int, need_x: bool, need_y: bool
    ) -> Tensor:
        batch, n, _ = xh.shape
        sums = xh.new_zeros(batch, dtype=torch.float64)
        grad_x = torch.empty_like(xh) if need_x else None
        grad_y = torch.empty_like(yh) if need_y else None
        for start in range(0, n, block):
            stop = start + block
            diff = torch.baddbmm(xh[:, start:stop] @ xh.mT, yh[:, start:stop], yh.mT, alpha=-1)
            excess = diff.abs().sub_(margin)
            if need_x or need_y:
                weight = diff.sign_().mul_(excess > 0)
                if grad_x is not None:
                    grad_x[:, start:stop] = weight @ xh
                if grad_y is not None:
                    grad_y[:, start:stop] = weight @ yh
            sums += excess.clamp_min_(0).sum((-2, -1), dtype=torch.float64)
            del diff, excess
        ctx.grads = (grad_x, grad_y)
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_x, grad_y = ctx.grads
        scale = (2 * grad).to(grad_x.dtype if grad_x is not None else grad_y.dtype)[:, None, None]
        return (
            grad_x * scale if grad_x is not None and ctx.needs_input_grad[0] else None,
            grad_y * -scale if grad_y is not None and ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
        )


@one_device
def mdms_loss(x: Tensor, y: Tensor, margin: float = 0.0, chunk_size: int | None = None) -> Tensor:
    """Marginal distance-matrix similarity ``(1/N²) Σ_ij ReLU(|cos(x_i,x_j) − cos(y_i,y_j)| − m)``.

    From VA-VAE (Yao et al. 2025, "Reconstruction vs. Generation: Taming Optimization Dilemma in
    Latent Diffusion Models", L_mdms, margin m₂ = 0.25 there), where x are the VAE latent's tokens and
    y a frozen vision foundation model's features at the same positions. Differences of pairwise
    similarity within the margin are free. The average is over all N² pairs, **the diagonal
    included** (its difference is 0, so with m ≥ 0 it adds nothing but counts in the 1/N²; a zero
    row has cosine 0 with everything, itself included). Invariant to rotations and positive rescaling
    of rows.

    No closed form exists, so ``S_x − S_y`` is computed in blocks of rows against all columns. The
    gradient of each block is taken during the forward pass (a custom autograd function), so forward
    + backward memory is O(B·block·N + B·N·d), never O(N²), and no block is recomputed. At the
    subgradient points (|D_ij| = m exactly) the gradient is 0, as autograd's ReLU gives.

    Args:
        x: (N, d_x) or (B, N, d_x); with a batch dimension the matrices are within each batch item
            (VA-VAE: the h·w tokens of each image) and the loss is averaged over B.
        y: (N, d_y) or (B, N, d_y), same rank and leading dimensions as x.
        margin: m ≥ 0.
        chunk_size: rows per block. ``None``: about 2,048² (row, column) pairs per block, that is
            ``max(1, 2048² // (B·N))`` rows — a single block for every N ≤ 2,048 when B = 1.

    Returns:
        Scalar loss in [0, 2], in the promoted dtype of x and y.

    Cost: O(B·N²·(d_x + d_y)) time; O(B·block·N + B·N·(d_x + d_y)) memory.
    """
    check_positive(margin, "margin", allow_zero=True)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    xh, yh, out = _normalized_pair(x, y)
    batch, n = xh.shape[:2]
    block = chunk_size if chunk_size is not None else max(1, _MDMS_BLOCK_PAIRS // (batch * n))
    grad_on = torch.is_grad_enabled()
    need_x, need_y = grad_on and xh.requires_grad, grad_on and yh.requires_grad
    sums = _BlockMDMS.apply(xh, yh, float(margin), min(block, n), need_x, need_y)
    return (sums.mean() / (n * n)).to(out)


# --------------------------------------------------------------------------------------------------
# laplacian_loss


def _matmul(adjacency: Tensor, x: Tensor) -> Tensor:
    if adjacency.layout == torch.sparse_coo:
        return torch.sparse.mm(adjacency, x)
    return adjacency @ x


def _is_symmetric(adjacency: Tensor) -> bool:
    """Dense symmetry check in two matrix-vector products: ``A·v`` against ``Aᵀ·v`` for a fixed,
    irregular positive v (a Weyl sequence), to 1e-4 of ``max |A·v|`` (float32 rounding of a dense row
    stays far below that). Only when the probe disagrees is A compared with Aᵀ entry by entry (to 1e-6
    of the largest weight), so a symmetric A never costs the slow transposed comparison."""
    n = adjacency.shape[0]
    probe = torch.arange(n, dtype=adjacency.dtype, device=adjacency.device)
    probe = probe.mul_(0.6180339887498949).frac_().add_(0.5)
    right, left = adjacency @ probe, probe @ adjacency
    if float((right - left).abs().max()) <= 1e-4 * float(right.abs().max()):
        return True
    return bool(torch.allclose(adjacency, adjacency.mT, rtol=0.0, atol=1e-6 * float(adjacency.abs().max())))


def _check_adjacency(adjacency: object, n: int, x: Tensor, dtype: torch.dtype, symmetric: bool) -> Tensor:
    """Validate the adjacency; return it in ``dtype`` (COO coalesced), ready for ``_matmul``."""
    if not isinstance(adjacency, Tensor):
        raise ValueError(
            f"adjacency must be a torch.Tensor of shape ({n}, {n}), got {type(adjacency).__name__}"
        )
    if adjacency.dim() != 2 or tuple(adjacency.shape) != (n, n):
        raise ValueError(
            f"adjacency must have shape ({n}, {n}) (N×N for x of shape {shape_str(x)}), "
            f"got {shape_str(adjacency)}"
        )
    check_same_device(("x", x), ("adjacency", adjacency))
    if adjacency.is_complex():
        raise ValueError(f"adjacency must hold real weights, got dtype {adjacency.dtype}")
    layout = adjacency.layout
    if layout not in (torch.strided, torch.sparse_coo, torch.sparse_csr):
        raise ValueError(f"adjacency must be dense, sparse COO or sparse CSR, got layout {layout}")
    adjacency = adjacency.to(dtype)  # also 0/1 integer or boolean graphs
    if layout == torch.sparse_coo:
        adjacency = adjacency.coalesce()
    values = adjacency if layout == torch.strided else adjacency.values()
    if values.numel():
        low, high = (float(v) for v in torch.aminmax(values))  # one pass; NaN propagates
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"adjacency has non-finite weight(s) (NaN or Inf), shape {shape_str(adjacency)}")
        if low < 0:
            raise ValueError(f"adjacency must have non-negative weights, got minimum {low:g}")
    if symmetric and layout == torch.strided and not _is_symmetric(adjacency):
        gap = float((adjacency - adjacency.mT).abs().max())
        raise ValueError(
            f"adjacency must be symmetric for normalization None or 'sym' (max |A − Aᵀ| = {gap:g}); "
            "use normalization='rw' for a directed graph"
        )
    return adjacency


@one_device
def laplacian_loss(
    x: Tensor, adjacency: Tensor, normalization: str | None = None, reduction: str = "mean"
) -> Tensor:
    """Graph-Laplacian smoothness ``Tr(XᵀLX)`` of x on a weighted graph (Laplacian eigenmaps,
    Belkin & Niyogi 2003).

    With degrees ``d_i = Σ_j A_ij`` and ``D = diag(d)``:

    * ``normalization=None``: ``L = D − A``; ``Tr(XᵀLX) = ½ Σ_ij A_ij ‖x_i − x_j‖²``;
    * ``"sym"``: ``L_sym = I − D^{-1/2} A D^{-1/2}``; ``Tr = ½ Σ_ij A_ij ‖x_i/√d_i − x_j/√d_j‖²``;
    * ``"rw"``: ``L_rw = I − D^{-1} A`` (random walk; A may be directed, degrees are row sums).

    Isolated nodes (d_i = 0) contribute 0: ``D^{-1}`` and ``D^{-1/2}`` are taken as 0 there and the
    normalised Laplacians are ``D^{-1/2}(D − A)D^{-1/2}`` and ``D^{-1}(D − A)``, whose row and
    column of an isolated node are zero (the convention of ``scipy.sparse.csgraph.laplacian`` and
    networkx). On every other node they equal the formulas above. Self-loops cancel out.

    L is never formed: ``Tr(XᵀLX) = Σ_i x_i·(LX)_i`` with ``LX`` from one product ``A @ X`` (a
    sparse product for sparse A), e.g. ``Σ_i d_i‖x_i‖² − Σ_i x_i·(AX)_i`` for ``L = D − A``. For
    ``normalization=None`` the rows of x are centred first (exact, since L·1 = 0 = 1ᵀ·L) to limit
    cancellation when the features share a large offset.

    A kNN graph is usually built from the *other* side, without gradient::

        loss = laplacian_loss(x, knn_graph(y, k=10))

    Args:
        x: (N, d) features, the nodes of the graph in order.
        adjacency: (N, N) non-negative weights, dense or ``torch.sparse_coo`` / ``torch.sparse_csr``.
            Must be symmetric for ``None`` and ``"sym"``: checked for dense input by a cheap probe
            (two matrix-vector products; an asymmetry below ~1e-4 of the largest weighted degree can
            pass), not checked for sparse input (:func:`knn_graph` with ``symmetric=True`` is
            symmetric). Finite and non-negative weights are checked (one pass over the weights).
        normalization: ``None`` | ``"sym"`` | ``"rw"``.
        reduction: ``"mean"``: ``Tr(XᵀLX) / N``; ``"sum"``: the trace itself; ``"none"``: the (N,)
            per-node terms ``x_i·(LX)_i``, which sum to the trace (single terms can be negative).

    Returns:
        Scalar (or (N,) for ``"none"``) in x's dtype.

    Cost: one ``A @ X``: O(N²·d) time for dense A, O(nnz·d) for sparse; O(N·d) extra memory.
    """
    check_features(x, "x")
    check_reduction(reduction)
    check_choice(normalization, "normalization", _NORMALIZATIONS)
    n = x.shape[0]
    dtype = compute_dtype(x)
    adjacency = _check_adjacency(adjacency, n, x, dtype, symmetric=normalization != "rw")
    xc = x.to(dtype)
    if normalization is None and reduction != "none":
        xc = xc - xc.mean(dim=0, keepdim=True)
    degree = _matmul(adjacency, torch.ones(n, 1, dtype=dtype, device=x.device)).squeeze(1)
    if normalization is None:
        per_node = degree * xc.square().sum(1) - (xc * _matmul(adjacency, xc)).sum(1)
    else:
        connected = degree > 0
        safe = torch.where(connected, degree, torch.ones_like(degree))
        self_term = torch.where(connected, xc.square().sum(1), torch.zeros_like(degree))
        if normalization == "sym":
            xs = xc * torch.where(connected, safe.rsqrt(), torch.zeros_like(degree))[:, None]
            per_node = self_term - (xs * _matmul(adjacency, xs)).sum(1)
        else:
            inv = torch.where(connected, safe.reciprocal(), torch.zeros_like(degree))
            per_node = self_term - inv * (xc * _matmul(adjacency, xc)).sum(1)
    return reduce(per_node, reduction).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# knn_graph


def _symmetrize_max(rows: Tensor, cols: Tensor, values: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Union of the edges and their transposes, weight ``max(A_ij, A_ji)``; sorted (coalesced) indices."""
    keys = torch.cat([rows * n + cols, cols * n + rows])
    both = torch.cat([values, values])
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    merged = both.new_zeros(unique.shape[0]).scatter_reduce_(0, inverse, both, "amax", include_self=False)
    return torch.stack([unique // n, unique % n]), merged


@torch.no_grad()
@one_device
def knn_graph(
    z: Tensor,
    k: int = 10,
    metric: str = "cosine",
    symmetric: bool = True,
    weighting: str = "connectivity",
    sigma: float | None = None,
    chunk_size: int = 4096,
) -> Tensor:
    """Sparse adjacency of each row's k nearest neighbours (self excluded), for :func:`laplacian_loss`.

    Built under ``torch.no_grad``: no gradient flows through the graph. Build it from the *other*
    side (the target you align to), e.g. ``laplacian_loss(x, knn_graph(y, k))``.

    Neighbours are found by chunked top-k: blocks of ``chunk_size`` rows against all N rows, so at
    most a (chunk_size, N) block of scores exists at once. ``"cosine"`` ranks by cosine similarity
    (distance ``1 − cos``; a zero row has cosine 0 with everything); ``"euclidean"`` ranks by
    ``2·a·b − ‖b‖²`` and the kept distances are then recomputed exactly as ``‖a − b‖``. Ties (equal
    distances) are broken arbitrarily. ``symmetric=True`` returns ``A = max(A, Aᵀ)`` (i is linked to j
    if either is among the other's k nearest), which :func:`laplacian_loss` needs for
    ``normalization`` None or ``"sym"``; ``symmetric=False`` gives exactly k entries per row (a
    directed graph, usable with ``"rw"``).

    Args:
        z: (N, d) features, N ≥ 2.
        k: neighbours per row, 1 ≤ k ≤ N − 1.
        metric: ``"cosine"`` | ``"euclidean"``.
        symmetric: symmetrise by element-wise max.
        weighting: ``"connectivity"`` (weight 1) | ``"heat"`` (``exp(−dist²/σ²)``).
        sigma: heat-kernel width; ``None``: the median of the N·k neighbour distances (if that is 0,
            the mean of the positive ones, or 1 if all are 0).
        chunk_size: rows per block.

    Returns:
        Coalesced ``torch.sparse_coo`` (N, N) tensor in z's dtype, with N·k entries (directed) or
        between N·k and 2·N·k entries (symmetric).

    Cost: O(N²·d) time, O(chunk_size·N + N·k) memory.
    """
    check_features(z, "z", min_rows=2)
    n = z.shape[0]
    check_int(k, "k", 1, n - 1, f" (N − 1 = {n - 1} for z of shape {shape_str(z)})")
    check_choice(metric, "metric", _METRICS)
    check_choice(weighting, "weighting", _WEIGHTINGS)
    if sigma is not None:
        check_positive(sigma, "sigma")
    check_int(chunk_size, "chunk_size", 1)
    found = knn(z.detach(), k, metric=metric, chunk_size=chunk_size, backend="torch")  # self excluded
    indices = found.indices
    # knn gives cosine similarities, or exact euclidean distances
    dist = (1 - found.values).clamp_min(0) if metric == "cosine" else found.values
    if weighting == "heat":
        if sigma is None:
            width = float(dist.median())
            if width <= 0:
                positive = dist[dist > 0]
                width = float(positive.mean()) if positive.numel() else 1.0
        else:
            width = float(sigma)
        values = torch.exp(-(dist / width).square())
    else:
        values = torch.ones_like(dist)
    rows_idx = torch.arange(n, device=z.device).repeat_interleave(k)
    cols_idx, values = indices.reshape(-1), values.reshape(-1)
    if symmetric:
        index, values = _symmetrize_max(rows_idx, cols_idx, values, n)
        return torch.sparse_coo_tensor(
            index, values.to(z.dtype), (n, n), is_coalesced=True, check_invariants=False
        )
    index = torch.stack([rows_idx, cols_idx])
    return torch.sparse_coo_tensor(index, values.to(z.dtype), (n, n), check_invariants=False).coalesce()
