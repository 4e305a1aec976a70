"""Representation-similarity metrics (MISSION §7): CKA, SVCCA, PWCCA, orthogonal Procrustes, RSA.

Each compares two sets of representations of the *same* N inputs, x (N, d_x) and y (N, d_y); the
widths may differ, rows must correspond.

* :func:`cka` — centred kernel alignment (Kornblith et al. 2019), linear or RBF kernel, biased or
  unbiased HSIC; differentiable, so ``1 − cka`` is a loss (:class:`alignkit.losses.CKALoss`). Linear
  CKA with N > d runs in feature space (O(N·d²), no N×N matrix); :func:`cka_from_cross_covariance`
  is the same formula on accumulated d×d cross-products, for streaming.
* :func:`canonical_correlations`, :func:`svcca` (Raghu et al. 2017), :func:`pwcca` (Morcos et al.
  2018) — CCA through orthonormal bases of the centred data.
* :func:`procrustes_distance` — orthogonal Procrustes distance (Ding et al. 2021).
* :func:`rsa` — representational similarity analysis (Kriegeskorte et al. 2008), O(N²).

Conventions shared by all of them: columns are centred in the compute dtype with a float64 column
mean, and a column whose entries are all equal is treated as exactly zero after centring (so a
constant representation has zero variance instead of rounding noise); a zero-variance side gives
CKA 0, canonical correlations 0, Procrustes distance 2 and RSA 0 (no NaN). fp16/bf16 input is
computed in float32 and the result is returned in the promoted input dtype.

    >>> import torch, alignkit.functional as AF
    >>> x = torch.randn(1000, 64); y = x @ torch.randn(64, 32) + 0.1 * torch.randn(1000, 32)
    >>> AF.cka(x, y), AF.cka(x, y, kernel="rbf", threshold=0.5), AF.cka(x, y, unbiased=True)
    >>> AF.svcca(x, y), AF.pwcca(x, y), AF.procrustes_distance(x, y), AF.rsa(x[:300], y[:300])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_positive,
    check_same_device,
    check_same_rows,
    compute_dtype,
    l2_normalize,
    one_device,
    shape_str,
)

__all__ = [
    "canonical_correlations",
    "cka",
    "cka_from_cross_covariance",
    "hsic_from_kernel_sums",
    "procrustes_distance",
    "pwcca",
    "rsa",
    "svcca",
]

# Rows per cross-product block: d×d products are taken in the compute dtype over this many rows and
# summed in float64, so the rounding error of an entry does not grow with N.
_ROW_CHUNK = 8192
# Entries of an N×N matrix (kernel, distances) computed at once: row blocks of max(1, this // N) rows,
# i.e. one block up to N = 2048.
_BLOCK_ELEMENTS = 2**22

_KERNELS = ("linear", "rbf")
_METRICS = ("correlation", "euclidean")
_METHODS = ("spearman", "pearson")


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _check_pair(x: object, y: object, min_rows: int = 1, why: str = "") -> tuple[torch.dtype, torch.dtype]:
    """Validate a (N, d_x), (N, d_y) pair; return (compute dtype, output dtype)."""
    for name, t in (("x", x), ("y", y)):
        check_features(t, name, finite=False)
        if t.shape[0] < min_rows:  # type: ignore[union-attr]
            raise ValueError(
                f"{name} must have at least {min_rows} rows{why}, got shape {shape_str(t)}"  # type: ignore[arg-type]
            )
    assert isinstance(x, Tensor) and isinstance(y, Tensor)
    check_same_rows(x, y, "x", "y")
    check_same_device(("x", x), ("y", y))
    check_features(x, "x")  # finiteness last: shape errors first, then one scan per input
    check_features(y, "y")
    return compute_dtype(x, y), torch.promote_types(x.dtype, y.dtype)


def _column_mean(x: Tensor) -> Tensor:
    """Column mean accumulated in float64 over row chunks (no float64 copy of x), in x's dtype.

    For float32 input (N < 2²⁹) the mean of a constant column is exactly that constant.
    """
    total = x.new_zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], _ROW_CHUNK):
        total = total + x[start : start + _ROW_CHUNK].sum(0, dtype=torch.float64)
    return (total / x.shape[0]).to(x.dtype)


def _centring(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, weight)`` such that ``(x − mean) * weight`` is x column-centred and scaled.

    ``weight`` (detached) is 0 for a column whose entries are all equal, so it centres to exactly 0
    whatever the rounding of its mean, and otherwise ``1 / s`` with ``s`` the largest absolute
    centred entry: every similarity here is invariant to a common rescaling, and working at unit
    scale keeps float32 products away from overflow and underflow. The derivative of every
    similarity here with respect to a zero column is 0, so the mask does not change gradients; nor
    does the detached scale (the functions are scale-invariant).
    """
    mean = _column_mean(x)
    with torch.no_grad():
        hi, lo = x.amax(0), x.amin(0)
        varying = hi != lo
        spread = torch.maximum(hi - mean, mean - lo).masked_fill(~varying, 0).amax()
        scale = torch.where(spread > 0, spread, torch.ones_like(spread))
        weight = varying.to(x.dtype) / scale
    return mean, weight


def _centred(x: Tensor) -> Tensor:
    mean, weight = _centring(x)
    return (x - mean) * weight


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """``aᵀb`` (d_a, d_b) in float64: products in the input dtype over row chunks, summed in float64."""
    out = a.new_zeros(a.shape[1], b.shape[1], dtype=torch.float64)
    for start in range(0, a.shape[0], _ROW_CHUNK):
        out = out + (a[start : start + _ROW_CHUNK].mT @ b[start : start + _ROW_CHUNK]).double()
    return out


def _safe_ratio(num: Tensor, den_a: Tensor, den_b: Tensor) -> Tensor:
    """``num / sqrt(den_a · den_b)``, 0 where either is ≤ 0, with finite gradients everywhere."""
    valid = (den_a > 0) & (den_b > 0)
    one = torch.ones_like(den_a)
    root = torch.sqrt(torch.where(valid, den_a, one)) * torch.sqrt(torch.where(valid, den_b, one))
    return torch.where(valid, num / root, torch.zeros_like(num))


# --------------------------------------------------------------------------------------------------
# CKA


@one_device
def cka_from_cross_covariance(
    cov_xx: Tensor,
    cov_yy: Tensor,
    cov_xy: Tensor,
    *,
    n: int | None = None,
    norms_xx: Tensor | float | None = None,
    norms_yy: Tensor | float | None = None,
    norms_xy: Tensor | float | None = None,
) -> Tensor:
    """Linear CKA from the d×d cross-products of column-centred data.

    With centred X (N, d_x), Y (N, d_y) and ``cov_xx = XᵀX``, ``cov_yy = YᵀY``, ``cov_xy = XᵀY``
    (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", eq. for
    linear CKA in feature space)::

        CKA = ‖XᵀY‖_F² / (‖XᵀX‖_F · ‖YᵀY‖_F)

    which equals ``HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L))`` for ``K = XXᵀ``, ``L = YYᵀ`` without
    forming them. Any common positive factor on the three products (e.g. 1/(N−1)) cancels.

    **Unbiased** (pass ``n`` and the three ``norms_*``): the unbiased HSIC estimator of Song et al.
    2012 ("Feature Selection via Dependence Maximization") for the linear kernel, in feature space
    as in Kornblith et al.'s notebook. With ``s_i = ‖x_i‖²``, ``t_i = ‖y_i‖²`` (centred rows)::

        HSIC_u(K, L) ∝ ‖XᵀY‖² − n/(n−2)·Σ_i s_i t_i + ‖X‖_F²·‖Y‖_F² / ((n−1)(n−2))

    where ``‖X‖_F² = tr(cov_xx)``; ``norms_xx = Σ s_i²``, ``norms_yy = Σ t_i²``,
    ``norms_xy = Σ s_i t_i``. Here the products must be the *unnormalised* sums.

    This is the one place the formula lives: :func:`cka` calls it on its own accumulated products
    and streaming accumulators can call it on theirs.

    Args:
        cov_xx: (d_x, d_x). cov_yy: (d_y, d_y). cov_xy: (d_x, d_y).
        n: number of samples; given → unbiased estimator (needs n ≥ 4 and the ``norms_*``).
        norms_xx, norms_yy, norms_xy: scalars as above (unbiased only).

    Returns:
        Scalar in [0, 1] (biased) or [−1, 1] (unbiased), 0 when either side has zero variance,
        in the promoted dtype of the inputs. Combined in float64; gradients are finite everywhere.

    Cost: O(d_x² + d_y² + d_x·d_y) time and memory.
    """
    names = ("cov_xx", "cov_yy", "cov_xy")
    mats = (cov_xx, cov_yy, cov_xy)
    for name, m in zip(names, mats, strict=True):
        check_features(m, name)
    dx, dy = cov_xy.shape
    for name, m, want in zip(names, mats, ((dx, dx), (dy, dy), (dx, dy)), strict=True):
        if tuple(m.shape) != want:
            raise ValueError(
                f"{name} must have shape ({want[0]}, {want[1]}) to match cov_xy {shape_str(cov_xy)} "
                f"((d_x, d_x), (d_y, d_y), (d_x, d_y)), got {shape_str(m)}"
            )
    check_same_device(*zip(names, mats, strict=True))
    out = torch.promote_types(torch.promote_types(cov_xx.dtype, cov_yy.dtype), cov_xy.dtype)
    cxx, cyy, cxy = (m.double() for m in mats)
    hxy, hxx, hyy = cxy.square().sum(), cxx.square().sum(), cyy.square().sum()
    if n is None:
        if any(v is not None for v in (norms_xx, norms_yy, norms_xy)):
            raise ValueError("norms_xx, norms_yy and norms_xy are for the unbiased form: pass n as well")
        return _safe_ratio(hxy, hxx, hyy).clamp(0, 1).to(out)
    if not isinstance(n, int) or isinstance(n, bool) or n < 4:
        raise ValueError(f"n must be an integer ≥ 4 for the unbiased estimator, got {n!r}")
    norms = {"norms_xx": norms_xx, "norms_yy": norms_yy, "norms_xy": norms_xy}
    terms = {}
    for name, v in norms.items():
        if v is None:
            raise ValueError(f"{name} is required for the unbiased form (n={n} was given)")
        t = torch.as_tensor(v, dtype=torch.float64, device=cxy.device)
        if t.numel() != 1 or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be a finite scalar, got shape {shape_str(t)}")
        terms[name] = t.reshape(())
    tx, ty = cxx.diagonal().sum(), cyy.diagonal().sum()
    a, b = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    hxy = hxy - a * terms["norms_xy"] + b * tx * ty
    hxx = hxx - a * terms["norms_xx"] + b * tx * tx
    hyy = hyy - a * terms["norms_yy"] + b * ty * ty
    return _safe_ratio(hxy, hxx, hyy).clamp(-1, 1).to(out)


def _linear_cka_features(x: Tensor, y: Tensor, unbiased: bool) -> Tensor:
    """Feature-space linear CKA (float64 scalar) through :func:`cka_from_cross_covariance`."""
    n = x.shape[0]
    mx, wx = _centring(x)
    my, wy = _centring(y)
    f64 = torch.float64
    cxx = x.new_zeros(x.shape[1], x.shape[1], dtype=f64)
    cyy = x.new_zeros(y.shape[1], y.shape[1], dtype=f64)
    cxy = x.new_zeros(x.shape[1], y.shape[1], dtype=f64)
    nxx = nyy = nxy = x.new_zeros((), dtype=f64)
    for start in range(0, n, _ROW_CHUNK):
        a = (x[start : start + _ROW_CHUNK] - mx) * wx
        b = (y[start : start + _ROW_CHUNK] - my) * wy
        cxx = cxx + (a.mT @ a).double()
        cyy = cyy + (b.mT @ b).double()
        cxy = cxy + (a.mT @ b).double()
        if unbiased:
            sa, sb = a.square().sum(1, dtype=f64), b.square().sum(1, dtype=f64)
            nxx = nxx + sa.square().sum()
            nyy = nyy + sb.square().sum()
            nxy = nxy + (sa * sb).sum()
    if not unbiased:
        return cka_from_cross_covariance(cxx, cyy, cxy)
    return cka_from_cross_covariance(cxx, cyy, cxy, n=n, norms_xx=nxx, norms_yy=nyy, norms_xy=nxy)


def _sq_dist_rows(z: Tensor, sq: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of the squared-distance matrix, ``‖z_i‖² + ‖z_j‖² − 2 z_i·z_j``.

    Entries at or below the rounding level of that formula (``8·sqrt(d)·eps·(‖z_i‖² + ‖z_j‖²)``),
    negative ones included, and the diagonal are exactly 0, so duplicated rows are at distance 0.
    """
    pair = sq[start:stop, None] + sq[None, :]
    raw = torch.addmm(pair, z[start:stop], z.mT, alpha=-2)
    tol = 8 * math.sqrt(z.shape[1]) * torch.finfo(z.dtype).eps
    dist = torch.where(raw > tol * pair, raw, 0)
    dist.diagonal(start).zero_()
    return dist


def _rbf(dist: Tensor, sigma2: Tensor | None) -> Tensor:
    """``exp(−d / (2σ²))``; for σ = 0 (median distance 0: most pairs coincide) the σ → 0 limit
    ``[d = 0]`` ("+ 0·d" keeps the result in the autograd graph, with zero gradient)."""
    if sigma2 is None:
        return (dist == 0).to(dist.dtype) + 0 * dist
    return torch.exp(dist / (-2 * sigma2))


def _upper_rows(dist: Tensor, start: int) -> list[Tensor]:
    """The entries right of the diagonal of each row of a row block (rows start, start+1, …)."""
    return [dist[i, start + i + 1 :] for i in range(dist.shape[0])]


@torch.no_grad()
def _upper_sq_distances(z: Tensor, sq: Tensor) -> Tensor:
    """The N(N−1)/2 squared distances d_ij, i < j, in row-major order, in row blocks."""
    n = z.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // n)
    upper = z.new_empty(n * (n - 1) // 2)
    offset = 0
    for start in range(0, n, rows):
        for row in _upper_rows(_sq_dist_rows(z, sq, start, min(start + rows, n)), start):
            upper[offset : offset + row.numel()] = row
            offset += row.numel()
    return upper


def _kth_smallest_index(u: Tensor, k: int, use_numpy: bool | None = None) -> int:
    """Index of an entry of the 1-D ``u`` that is k-th smallest (0-based).

    On CPU through numpy's introselect on a copy of the values (``torch.kthvalue`` also keeps an
    int64 index per entry: 3× the memory of u), then one comparison pass to locate it.
    """
    if u.device.type == "cpu" if use_numpy is None else use_numpy:
        value = float(np.partition(u.numpy(), k)[k])
        return int(torch.nonzero(u == value)[0, 0])
    return int(torch.kthvalue(u, k + 1).indices)


def _rbf_sigma2(z: Tensor, upper: Tensor, threshold: float) -> Tensor | None:
    """``threshold² · median(D)`` over the full N×N squared-distance matrix, zero diagonal included.

    Matches Kornblith et al.'s ``np.median(sq_distances)`` (the mean of the two middle values when N²
    is even). Only the upper triangle ``upper`` is needed: the sorted full matrix is N zeros followed
    by every upper value twice. The selected distance(s) are recomputed differentiably from their
    two rows, so the gradient flows through σ as well. ``None`` when the median is 0.
    """
    n = z.shape[0]
    m = n * n
    middle = [(m - 1) // 2] if m % 2 else [m // 2 - 1, m // 2]
    i_all = torch.arange(max(n - 1, 0), device=z.device)
    offsets = i_all * (2 * n - i_all - 1) // 2  # flat index of (i, i + 1) in ``upper``
    values = []
    cache: dict[int, Tensor] = {}
    for k in middle:
        if k < n:  # one of the diagonal zeros
            values.append(z.new_zeros(()))
            continue
        rank = (k - n) // 2
        if rank not in cache:
            flat = _kth_smallest_index(upper, rank)
            i = int(torch.searchsorted(offsets, torch.tensor(flat, device=z.device), right=True)) - 1
            j = flat - int(offsets[i]) + i + 1
            cache[rank] = (z[i] - z[j]).square().sum()
        values.append(cache[rank])
    median = torch.stack(values).mean()
    if not float(median.detach()) > 0:
        return None
    return (threshold * threshold) * median


def _stats(k: Tensor, l_: Tensor, start: int, unbiased: bool) -> tuple[Tensor, ...]:
    """Σ K∘L, Σ K∘K, Σ L∘L (float64) and the row sums of K and L (float64) for a row block starting
    at row ``start``; with the diagonal taken out for the unbiased estimator. Sums along a row are
    in the compute dtype, across rows in float64."""
    r, q = k.sum(1).double(), l_.sum(1).double()
    s_kl = torch.einsum("ij,ij->i", k, l_).double().sum()
    s_kk = torch.einsum("ij,ij->i", k, k).double().sum()
    s_ll = torch.einsum("ij,ij->i", l_, l_).double().sum()
    if unbiased:
        kd, ld = k.diagonal(start).double(), l_.diagonal(start).double()
        s_kl, s_kk, s_ll = s_kl - (kd * ld).sum(), s_kk - kd.square().sum(), s_ll - ld.square().sum()
        r, q = r - kd, q - ld
    return s_kl, s_kk, s_ll, r, q


def _block_stats(
    x: Tensor,
    sqx: Tensor | None,
    sigx: Tensor | None,
    y: Tensor,
    sqy: Tensor | None,
    sigy: Tensor | None,
    *,
    start: int,
    stop: int,
    kernel: str,
    unbiased: bool,
) -> tuple[Tensor, ...]:
    """:func:`_stats` of kernel rows ``start:stop`` (what one checkpointed block computes)."""
    if kernel == "linear":
        k, l_ = x[start:stop] @ x.mT, y[start:stop] @ y.mT
    else:
        assert sqx is not None and sqy is not None
        k = _rbf(_sq_dist_rows(x, sqx, start, stop), sigx)
        l_ = _rbf(_sq_dist_rows(y, sqy, start, stop), sigy)
    return _stats(k, l_, start, unbiased)


class _Recompute(torch.autograd.Function):
    """Run ``fn(*inputs)`` without keeping its intermediates; recompute them in backward.

    Activation checkpointing for one row block (like ``torch.utils.checkpoint``, whose first call
    imports torch._dynamo, seconds on a CPU machine). ``inputs`` are tensors or None.
    """

    @staticmethod
    def forward(
        ctx: Any, fn: Callable[..., tuple[Tensor, ...]], *inputs: Tensor | None
    ) -> tuple[Tensor, ...]:
        ctx.fn = fn
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return fn(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        inputs = [
            None if t is None else t.detach().requires_grad_(need)
            for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[1:], strict=True)
        ]
        wanted = [t for t, need in zip(inputs, ctx.needs_input_grad[1:], strict=True) if need]
        with torch.enable_grad():
            outputs = ctx.fn(*inputs)
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if o.requires_grad]
        if wanted and pairs:
            outs, gouts = zip(*pairs, strict=True)
            found = iter(torch.autograd.grad(outs, wanted, gouts, allow_unused=True))
        else:
            found = iter([None] * len(wanted))
        return (None, *(next(found) if need else None for need in ctx.needs_input_grad[1:]))


def _gram_cka(x: Tensor, y: Tensor, kernel: str, unbiased: bool, threshold: float) -> Tensor:
    """CKA (float64 scalar) from N×N kernel matrices, built in row blocks of O(block·N) memory.

    With row sums ``r = K1`` and ``q = L1`` (K, L symmetric; diagonal zeroed when unbiased)::

        biased    ⟨HKH, HLH⟩ = ΣK∘L − (2/n)·rᵀq + (Σr)(Σq)/n²
        unbiased  n(n−3)·HSIC_u = ΣK∘L + (Σr)(Σq)/((n−1)(n−2)) − (2/(n−2))·rᵀq   (Song et al. 2012)

    combined by :func:`hsic_from_kernel_sums`.

    Several blocks under autograd are checkpointed (recomputed in backward), so memory stays
    O(block·N) for the backward pass too.
    """
    n = x.shape[0]
    xk, yk = _centred(x), _centred(y)
    rows = max(1, _BLOCK_ELEMENTS // n)
    if rows >= n:  # one block: plain autograd; for rbf the distances serve the median too
        if kernel == "linear":
            k, l_ = xk @ xk.mT, yk @ yk.mT
        else:
            dist_x = _sq_dist_rows(xk, xk.square().sum(1), 0, n)
            dist_y = _sq_dist_rows(yk, yk.square().sum(1), 0, n)
            up_x = torch.cat(_upper_rows(dist_x.detach(), 0))
            up_y = torch.cat(_upper_rows(dist_y.detach(), 0))
            k = _rbf(dist_x, _rbf_sigma2(xk, up_x, threshold))
            l_ = _rbf(dist_y, _rbf_sigma2(yk, up_y, threshold))
        parts = [_stats(k, l_, 0, unbiased)]
    else:
        sqx = sqy = sigx = sigy = None
        if kernel == "rbf":
            sqx, sqy = xk.square().sum(1), yk.square().sum(1)
            sigx = _rbf_sigma2(xk, _upper_sq_distances(xk, sqx), threshold)
            sigy = _rbf_sigma2(yk, _upper_sq_distances(yk, sqy), threshold)
        args = (xk, sqx, sigx, yk, sqy, sigy)
        recompute = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)
        parts = []
        for start in range(0, n, rows):
            fn = functools.partial(
                _block_stats, start=start, stop=min(start + rows, n), kernel=kernel, unbiased=unbiased
            )
            parts.append(_Recompute.apply(fn, *args) if recompute else fn(*args))
    s_kl, s_kk, s_ll = (torch.stack([p[i] for p in parts]).sum() for i in range(3))
    r = torch.cat([p[3] for p in parts])
    q = torch.cat([p[4] for p in parts])

    value = _safe_ratio(
        hsic_from_kernel_sums(s_kl, r, q, n, unbiased),
        hsic_from_kernel_sums(s_kk, r, r, n, unbiased),
        hsic_from_kernel_sums(s_ll, q, q, n, unbiased),
    )
    return value.clamp(-1, 1) if unbiased else value.clamp(0, 1)


@one_device
def hsic_from_kernel_sums(sum_kl: Tensor, row_k: Tensor, row_l: Tensor, n: int, unbiased: bool) -> Tensor:
    """HSIC from the sums of two n×n kernel matrices, never the matrices themselves.

    With ``ΣK∘L = sum_kl``, row sums ``r = K1 = row_k`` and ``q = L1 = row_l`` (K, L symmetric; for
    the unbiased form with their diagonals set to zero)::

        biased    HSIC₀ = (ΣK∘L − (2/n)·rᵀq + (Σr)(Σq)/n²) / (n−1)²  = ⟨HKH, HLH⟩ / (n−1)²
        unbiased  HSIC₁ = (ΣK∘L + (Σr)(Σq)/((n−1)(n−2)) − (2/(n−2))·rᵀq) / (n(n−3))

    (Gretton et al. 2005; the unbiased estimator of Song et al. 2012, "Feature Selection via
    Dependence Maximization"). The one place this combination lives: :func:`cka`'s Gram path and
    :class:`alignkit.metrics.MinibatchCKA` both call it.

    Shapes: scalars and (n,) row sums → scalar. Needs n ≥ 4 when unbiased.
    """
    if unbiased:
        total = (
            sum_kl + row_k.sum() * row_l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (row_k * row_l).sum()
        )
        return total / (n * (n - 3))
    total = sum_kl - 2.0 / n * (row_k * row_l).sum() + row_k.sum() * row_l.sum() / (n * n)
    return total / ((n - 1) ** 2)


@one_device
def cka(
    x: Tensor, y: Tensor, kernel: str = "linear", unbiased: bool = False, threshold: float = 1.0
) -> Tensor:
    """Centred kernel alignment between two representations of the same N inputs.

    Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations
    Revisited" (ICML)::

        CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)),   HSIC(K, L) ∝ tr(KHLH),  H = I − 11ᵀ/N

    * ``kernel="linear"``: ``K = XXᵀ`` on column-centred X. When N > max(d_x, d_y) it is computed in
      feature space, ``‖YᵀX‖_F² / (‖XᵀX‖_F·‖YᵀY‖_F)`` (:func:`cka_from_cross_covariance`), with no
      N×N matrix; otherwise from the N×N Gram matrices (cheaper there).
    * ``kernel="rbf"``: ``K_ij = exp(−‖x_i − x_j‖² / (2σ²))``, ``σ = threshold·sqrt(median d²)``, the
      median over the full N×N matrix of squared distances including its zero diagonal, exactly as
      Kornblith et al.'s notebook (``np.median``). If that median is 0 (more than half of all pairs
      coincide) the σ → 0 limit ``K_ij = [x_i = x_j]`` is used instead of dividing by zero.
      The gradient flows through σ too.
    * ``unbiased=True``: the unbiased HSIC estimator (Song, Smola, Gretton, Bedo & Borgwardt 2012,
      "Feature Selection via Dependence Maximization", JMLR), the "debiased" CKA of Kornblith et
      al.'s notebook; in feature space for the linear kernel (exact, see
      :func:`cka_from_cross_covariance`). Needs N ≥ 4; nearly 0 for independent representations,
      where the biased estimate is inflated by d/N.

    Invariant to orthogonal transforms and isotropic scaling of either side (and, biased or not, to
    translations); not to general invertible linear maps. Zero-variance input (every column constant)
    gives 0; gradients are finite everywhere, including at CKA = 1 and for constant input.

    Precision: centred data, products in the compute dtype over blocks of 8,192 rows, combined in
    float64. At N = 20,000, d = 256 float32 input matches the float64 result to better than 1e-6.

    Args:
        x: (N, d_x) representations, rows are samples.
        y: (N, d_y) representations of the same N samples; d_y may differ from d_x.
        kernel: ``"linear"`` | ``"rbf"``.
        unbiased: unbiased (debiased) HSIC estimator.
        threshold: RBF bandwidth as a fraction of the median distance (> 0; rbf only).

    Returns:
        Scalar in [0, 1] (biased) or [−1, 1] (unbiased), in the promoted dtype of x and y.

    Cost: linear, N > d: O(N·(d_x + d_y)²) time, O(d_x² + d_y²) extra memory (plus N·d for backward).
    Gram form (linear with N ≤ d, or rbf): O(N²·(d_x + d_y)) time, O(block·N) memory in row blocks
    of ~4M entries (recomputed in backward); rbf additionally stores the N(N−1)/2 upper-triangle
    distances once (no grad) to take the median — N ≤ ~20k is practical.

    Example::

        AF.cka(layer_a, layer_b)                          # linear
        AF.cka(layer_a, layer_b, "rbf", threshold=0.5)    # RBF, σ = 0.5·median distance
        loss = 1 - AF.cka(student, teacher.detach())
    """
    check_choice(kernel, "kernel", _KERNELS)
    if not isinstance(unbiased, bool):
        raise ValueError(f"unbiased must be a bool, got {unbiased!r}")
    check_positive(threshold, "threshold")
    dtype, out = _check_pair(
        x, y, min_rows=4 if unbiased else 1, why=" for unbiased=True (HSIC_u divides by N(N−3))"
    )
    xk, yk = x.to(dtype), y.to(dtype)
    if kernel == "linear" and x.shape[0] > max(x.shape[1], y.shape[1]):
        value = _linear_cka_features(xk, yk, unbiased)
    else:
        value = _gram_cka(xk, yk, kernel, unbiased, float(threshold))
    return value.to(out)


# --------------------------------------------------------------------------------------------------
# CCA family


def _basis(x: Tensor) -> tuple[Tensor, Tensor]:
    """Left singular vectors ``U`` (N, r) and singular values ``s`` (r,) of the centred x, truncated
    to the numerical rank r (``s > s_max · max(N, d) · eps``, the numpy / torch ``matrix_rank`` rule)."""
    xc = _centred(x)
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    top = float(s[0].detach()) if s.numel() else 0.0
    if not top > 0:
        return u[:, :0], s[:0]
    tol = top * max(x.shape) * torch.finfo(x.dtype).eps
    r = int((s > tol).sum())
    return u[:, :r], s[:r]


def _whitened(u: Tensor, s: Tensor, eps: float) -> Tensor:
    """Orthonormal basis of the centred data, or with ridge ``eps`` the ridge-whitened data
    ``U·diag(s/sqrt(s² + eps·s_max²))``, i.e. ``X(XᵀX + eps·s_max²·I)^{-1/2}``."""
    if eps == 0 or s.numel() == 0:
        return u
    return u * (s / torch.sqrt(s.square() + eps * s[0].square()))


def _check_eps(eps: float) -> None:
    check_positive(eps, "eps", allow_zero=True)


@one_device
def canonical_correlations(x: Tensor, y: Tensor, eps: float = 0.0) -> Tensor:
    """Canonical correlations between x and y, largest first.

    Hotelling 1936, "Relations Between Two Sets of Variates": ``ρ_i = max corr(Xa, Yb)`` over
    directions uncorrelated with the previous ones. Computed stably from the data, not from
    covariance inverses (Björck & Golub 1973): with orthonormal bases ``Qx``, ``Qy`` of the
    column-centred data (thin SVD, which, unlike QR, reveals and drops rank deficiency),
    ``ρ = singular values of QxᵀQy``.

    Args:
        x: (N, d_x). y: (N, d_y), same N.
        eps: ridge regularisation relative to the largest variance: ``Cxx + eps·λ_max·I``
            (likewise for y). 0 (default) is plain CCA on the numerical column spaces, where
            directions below the rank tolerance are dropped (exact for rank-deficient input).

    Returns:
        (min(d_x, d_y),) correlations in [0, 1], descending; positions beyond the numerical rank of
        either side are 0. Note that for N − 1 ≤ max rank, CCA is degenerate (correlations 1).

    Cost: O(N·(d_x² + d_y²)) time for the two SVDs (O(N²·d) when d > N), O(N·(d_x + d_y)) memory.
    """
    _check_eps(eps)
    dtype, out = _check_pair(x, y)
    return _canonical(x.to(dtype), y.to(dtype), eps)[0].to(out)


def _canonical(x: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(ρ padded to min(d_x, d_y), whitened x basis, left singular vectors of the correlation matrix)."""
    k = min(x.shape[1], y.shape[1])
    a = _whitened(*_basis(x), eps)
    b = _whitened(*_basis(y), eps)
    if a.shape[1] == 0 or b.shape[1] == 0:
        return x.new_zeros(k, dtype=torch.float64), a, a.new_zeros(a.shape[1], 0, dtype=torch.float64)
    um, rho, _ = torch.linalg.svd(_cross(a, b), full_matrices=False)
    rho = rho.clamp(0, 1)
    return F.pad(rho, (0, k - rho.numel())), a, um


def _n_keep(s: Tensor, keep: float) -> int:
    if isinstance(keep, int):
        return min(keep, s.numel())
    if s.numel() == 0:
        return 0
    var = s.double().square()
    frac = var.cumsum(0) / var.sum()
    return min(int((frac < keep).sum()) + 1, s.numel())


@one_device
def svcca(x: Tensor, y: Tensor, keep: float = 0.99) -> Tensor:
    """Singular vector CCA: mean canonical correlation after an SVD reduction of each side.

    Raghu, Gilmer, Yosinski & Sohl-Dickstein 2017, "SVCCA: Singular Vector Canonical Correlation
    Analysis for Deep Learning Dynamics and Interpretability" (NeurIPS). Each centred side is reduced
    to its top singular directions (``X ≈ U_k S_k V_kᵀ``, keeping ``U_k S_k``), then
    ``SVCCA = mean_i ρ_i`` over the min(k_x, k_y) canonical correlations of the reduced data (the
    singular values of ``U_{x,k}ᵀ U_{y,k}``).

    Args:
        x: (N, d_x). y: (N, d_y), same N.
        keep: a float in (0, 1]: keep the fewest directions whose variance (σ²) reaches this
            fraction of the total (the paper keeps 99%); an int ≥ 1: keep that many directions.

    Returns:
        Scalar in [0, 1] in the promoted dtype of x and y; 0 if either side has zero variance.

    Cost: O(N·(d_x + d_y)²) time. For N ≥ 4·(d_x + d_y) without autograd, the spectra come from the
    centred (d, d) Gram matrices in float64 and the correlations from the cross-covariance, so memory
    is O((d_x + d_y)²) beyond one row chunk (directions weaker than s_max·sqrt(N·eps₆₄) ≈ 10⁻⁶·s_max
    at N = 10⁵ count as rank-deficient there); otherwise two thin SVDs, O(N·(d_x + d_y)) memory.
    """
    is_int = isinstance(keep, int) and not isinstance(keep, bool)
    if not (is_int and keep >= 1) and not (isinstance(keep, float) and 0 < keep <= 1 and math.isfinite(keep)):
        raise ValueError(
            f"keep must be a fraction of variance in (0, 1] (float) or a number of directions ≥ 1 "
            f"(int), got {keep!r}"
        )
    dtype, out = _check_pair(x, y)
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if n >= _GRAM_ROWS * (dx + dy) and not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
        rho = _svcca_from_grams(x.to(dtype), y.to(dtype), keep)
    else:
        ux, sx = _basis(x.to(dtype))
        uy, sy = _basis(y.to(dtype))
        kx, ky = _n_keep(sx, keep), _n_keep(sy, keep)
        rho = None if kx == 0 or ky == 0 else torch.linalg.svdvals(_cross(ux[:, :kx], uy[:, :ky]))
    if rho is None:
        return x.new_zeros((), dtype=out)
    return rho.clamp(0, 1).mean().to(out)


#: :func:`svcca` takes its spectra from the (d, d) Gram matrices when N ≥ this × (d_x + d_y).
_GRAM_ROWS = 4


def _centred_grams(x: Tensor, y: Tensor, norms_only: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``(X̃ᵀX̃, ỸᵀỸ, X̃ᵀỸ)`` in float64 of the centred, scaled sides (:func:`_centring`), one pass over
    row chunks (each chunk cast to float64: no float64 copy of x or y). ``norms_only``: the first two
    are only their traces ``‖X̃‖_F²``, ``‖Ỹ‖_F²``. Cost: O(N·(d_x + d_y)²) (O(N·d_x·d_y) with
    ``norms_only``), O((d_x + d_y)²) memory beyond one chunk."""
    (mx, wx), (my, wy) = _centring(x), _centring(y)
    f64 = torch.float64
    gxx = x.new_zeros(() if norms_only else (x.shape[1], x.shape[1]), dtype=f64)
    gyy = x.new_zeros(() if norms_only else (y.shape[1], y.shape[1]), dtype=f64)
    gxy = x.new_zeros(x.shape[1], y.shape[1], dtype=f64)
    for start in range(0, x.shape[0], _ROW_CHUNK):
        a = ((x[start : start + _ROW_CHUNK] - mx) * wx).double()
        b = ((y[start : start + _ROW_CHUNK] - my) * wy).double()
        gxx += a.square().sum() if norms_only else a.mT @ a
        gyy += b.square().sum() if norms_only else b.mT @ b
        gxy += a.mT @ b
    return gxx, gyy, gxy


def _gram_basis(gram: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(V, s)`` of the centred data from its float64 Gram ``X̃ᵀX̃ = V·diag(s²)·Vᵀ``, descending, truncated
    like :func:`_basis` (``s > s_max · max(N, d) · eps`` of the input dtype), and never below what a
    Gram matrix resolves (``s > s_max · sqrt(max(N, d) · eps₆₄)``). Shared with the ridge solvers
    (:mod:`alignkit.functional.regression`), which pass float64 and an (N, N) Gram when N < d."""
    evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0), evecs.flip(1)
    if evals.numel() == 0 or not float(evals[0]) > 0:
        return evecs[:, :0], evals[:0]
    size = max(n, gram.shape[0])
    rel = max(size * torch.finfo(dtype).eps, math.sqrt(size * torch.finfo(torch.float64).eps))
    s = evals.clamp(min=0).sqrt()
    r = int((s > float(s[0]) * rel).sum())
    return evecs[:, :r], s[:r]


def _svcca_from_grams(x: Tensor, y: Tensor, keep: float) -> Tensor | None:
    """SVCCA's canonical correlations without an (N, k) matrix: with ``X̃ = U_x S_x V_xᵀ`` (from the Gram),
    ``U_{x,k}ᵀ U_{y,k} = S_{x,k}⁻¹ V_{x,k}ᵀ (X̃ᵀỸ) V_{y,k} S_{y,k}⁻¹``. None when a side has no variance.
    Memory O((d_x + d_y)²) beyond one row chunk; time O(N·(d_x + d_y)²)."""
    gxx, gyy, gxy = _centred_grams(x, y)
    vx, sx = _gram_basis(gxx, x.shape[0], x.dtype)
    vy, sy = _gram_basis(gyy, y.shape[0], y.dtype)
    kx, ky = _n_keep(sx, keep), _n_keep(sy, keep)
    if kx == 0 or ky == 0:
        return None
    left, right = vx[:, :kx] / sx[:kx], vy[:, :ky] / sy[:ky]
    return torch.linalg.svdvals(left.mT @ gxy @ right)


@one_device
def pwcca(x: Tensor, y: Tensor, eps: float = 0.0) -> Tensor:
    """Projection-weighted CCA: canonical correlations weighted by how much of x each variate explains.

    Morcos, Raghu & Bengio 2018, "Insights on representational similarity in neural networks with
    canonical correlation" (NeurIPS)::

        PWCCA = Σ_i α_i ρ_i,   α_i ∝ Σ_j |⟨h_i, x_j⟩|,   Σ α_i = 1

    with ``h_i`` the (orthonormalised) canonical variates of x and ``x_j`` the j-th centred column
    (neuron) of x. Weights come from x, so PWCCA is not symmetric. Equal to the released
    ``compute_pwcca`` of Morcos et al. when d_x ≤ d_y and x has zero column means (that code
    weights by the side with fewer neurons and uses the uncentred activations).

    Args:
        x: (N, d_x), the side the weights come from. y: (N, d_y), same N.
        eps: ridge regularisation, as in :func:`canonical_correlations`.

    Returns:
        Scalar in [0, 1] in the promoted dtype of x and y; 0 if either side has zero variance.

    Cost: O(N·(d_x² + d_y²)) time, O(N·(d_x + d_y)) memory.
    """
    _check_eps(eps)
    dtype, out = _check_pair(x, y)
    xk = x.to(dtype)
    rho, a, um = _canonical(xk, y.to(dtype), eps)
    k = um.shape[1]
    if k == 0:
        return x.new_zeros((), dtype=out)
    h = torch.linalg.qr(a @ um.to(dtype)).Q  # (N, k), as the reference QR-orthonormalises
    alpha = (h.mT @ _centred(xk)).abs().sum(1, dtype=torch.float64)
    total = alpha.sum()
    if not float(total) > 0:
        return x.new_zeros((), dtype=out)
    return ((alpha / total) * rho[:k]).sum().to(out)


# --------------------------------------------------------------------------------------------------
# Procrustes


def _compress(a: Tensor) -> Tensor:
    """For d > N, an (N, N) matrix with the same Gram matrix ``aaᵀ`` (thin SVD, ``U·S``)."""
    if a.shape[1] <= a.shape[0]:
        return a
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    return u * s


def _sq_norm(a: Tensor) -> Tensor:
    """‖a‖_F² accumulated in float64 over row chunks."""
    total = a.new_zeros((), dtype=torch.float64)
    for start in range(0, a.shape[0], _ROW_CHUNK):
        total = total + a[start : start + _ROW_CHUNK].square().sum(dtype=torch.float64)
    return total


@one_device
def procrustes_distance(x: Tensor, y: Tensor) -> Tensor:
    """Orthogonal Procrustes distance between centred, unit-Frobenius-norm representations.

    Ding, Denain & Steinhardt 2021, "Grounding Representation Similarity with Statistical Testing"
    (NeurIPS); Schönemann 1966 for the solution::

        d(X, Y) = min_Q ‖XQ − Y‖_F² = 2 − 2‖XᵀY‖_*,   X, Y centred, ‖X‖_F = ‖Y‖_F = 1

    (nuclear norm; Q orthogonal). For d_x ≠ d_y the narrower side is conceptually zero-padded, which
    the nuclear norm of the (d_x, d_y) matrix XᵀY already handles. 0 iff y is a rotation (and
    rescaling, and translation) of x; at most 2. A zero-variance side gives 2.

    Args:
        x: (N, d_x). y: (N, d_y), same N.

    Returns:
        Scalar in [0, 2] in the promoted dtype of x and y; differentiable.

    Cost: O(N·d_x·d_y + min(d_x, d_y)²·max(d_x, d_y)) time, O(d_x·d_y) extra memory; a side wider
    than N is first reduced to N columns by a thin SVD (O(N²·d)), which leaves d unchanged. Without
    autograd and N > d the moments are accumulated over row chunks in float64 (no centred copy of
    x or y; O(N·(d_x + d_y)²) time); with autograd the centred copies are kept for the backward.
    """
    dtype, out = _check_pair(x, y)
    if x.shape[0] > max(x.shape[1], y.shape[1]) and not (
        torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    ):  # no centred copies: the moments over row chunks (float64)
        nx, ny, cross = _centred_grams(x.to(dtype), y.to(dtype), norms_only=True)
    else:
        xc, yc = _compress(_centred(x.to(dtype))), _compress(_centred(y.to(dtype)))
        nx, ny, cross = _sq_norm(xc), _sq_norm(yc), _cross(xc, yc)
    nuclear = torch.linalg.svdvals(cross).sum()
    cos = _safe_ratio(nuclear, nx, ny)
    return (2 - 2 * cos).clamp(0, 2).to(out)


# --------------------------------------------------------------------------------------------------
# RSA


def _rdm_upper(x: Tensor, metric: str) -> Tensor:
    """Upper triangle (i < j, row-major, as scipy's ``pdist``) of the representational dissimilarity
    matrix, computed in row blocks (zero distances have zero gradient)."""
    n = x.shape[0]
    if metric == "correlation":
        with torch.no_grad():
            varying = (x.amax(1) != x.amin(1)).to(x.dtype)
        z = l2_normalize((x - x.mean(1, keepdim=True)) * varying[:, None], dim=1)
    else:
        z = x
    rows = max(1, _BLOCK_ELEMENTS // n)
    parts = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        if metric == "correlation":
            block = 1 - z[start:stop] @ z.mT
        else:  # direct differences (no ‖a‖² + ‖b‖² − 2a·b rounding): exact ties stay ties, as in scipy
            block = torch.cdist(z[start:stop], z, compute_mode="donot_use_mm_for_euclid_dist")
        parts.append(torch.cat(_upper_rows(block, start)))
    return torch.cat(parts)


def _average_ranks(v: Tensor) -> Tensor:
    """1-based ranks in float64, ties given their average rank (as ``scipy.stats.rankdata``)."""
    ordered, order = torch.sort(v)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(average[inverse])
    ranks[order] = average[inverse]
    return ranks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a, b = a - a.mean(), b - b.mean()
    return _safe_ratio((a * b).sum(), a.square().sum(), b.square().sum()).clamp(-1, 1)


@one_device
def rsa(x: Tensor, y: Tensor, metric: str = "correlation", method: str = "spearman") -> Tensor:
    """Representational similarity analysis: correlation between the two dissimilarity matrices.

    Kriegeskorte, Mur & Bandettini 2008, "Representational similarity analysis — connecting the
    branches of systems neuroscience" (Front. Syst. Neurosci.). Each side's RDM is

    * ``metric="correlation"``: ``1 − pearson(x_i, x_j)`` (correlation across features between rows;
      a constant row has correlation 0 with everything, dissimilarity 1), or
    * ``metric="euclidean"``: ``‖x_i − x_j‖``,

    and the result is the Spearman (``method="spearman"``, average ranks for ties, as scipy) or
    Pearson correlation of the two upper triangles (i < j). Differentiable for ``"pearson"`` only.

    Args:
        x: (N, d_x), N ≥ 3. y: (N, d_y), same N.
        metric: ``"correlation"`` | ``"euclidean"``.
        method: ``"spearman"`` | ``"pearson"``.

    Returns:
        Scalar in [−1, 1] in the promoted dtype of x and y; 0 if either RDM is constant.

    Cost: O(N²·(d_x + d_y)) time for the RDMs in row blocks, plus O(N² log N) to rank them; O(N²)
    memory — the N(N−1)/2 upper-triangle values of each side and, for Spearman, their sort order
    and ranks (~40 bytes per pair and side at peak): fine for N ≤ ~10k.
    """
    check_choice(metric, "metric", _METRICS)
    check_choice(method, "method", _METHODS)
    dtype, out = _check_pair(x, y, min_rows=3, why=" (RSA correlates the N(N−1)/2 pairs)")
    rx, ry = _rdm_upper(x.to(dtype), metric), _rdm_upper(y.to(dtype), metric)
    if method == "spearman":
        rx, ry = _average_ranks(rx), _average_ranks(ry)
    return _pearson(rx.double(), ry.double()).to(out)
