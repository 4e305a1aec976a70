"""Closed-form maps from one representation to another: ridge regression and the choice of its
strength, and orthogonal Procrustes.

* :func:`ridge_fit` — the affine least-squares map ``f(x) = (x − μ_x) W + μ_y`` with an unpenalised
  intercept and a ridge relative to the data's scale (Hoerl & Kennard 1970), closed form.
* :func:`procrustes_fit` — the same affine form with ``W = c·R``, ``R`` (semi-)orthogonal from one SVD
  of the cross-covariance (Schönemann 1966) and an optional isotropic scale ``c``; returns a
  :class:`ProcrustesFit` that unpacks like ridge_fit's triple plus ``c``.
* :func:`ridge_gcv` — the relative ridge chosen by generalised cross-validation (Golub, Heath &
  Wahba 1979), in closed form from one spectrum.
* :func:`ridge_kfold` — the relative ridge chosen by K-fold cross-validation (Stone 1974).

All three share one scale convention, so a strength chosen by either selector means the same map:
with centred rows ``Xᶜ`` (n, d), ``λ = ridge · tr(XᶜᵀXᶜ) / d`` (a relative strength: invariant to a
rescaling of x). They compute in float64 (the solves are ill-conditioned exactly where ridge
matters, n ≈ d) and take spectra from the smaller Gram matrix, truncated where a float64 Gram matrix
stops resolving eigenvalues (the cut-off :func:`alignkit.functional.svcca` uses, shared helper).

    >>> import torch, alignkit.functional as AF
    >>> rel, scores = AF.ridge_gcv(old, new)              # (n, d_s), (n, d_t) training pairs
    >>> w, mu_old, mu_new = AF.ridge_fit(old, new, rel)
    >>> mapped = (old_index - mu_old) @ w + mu_new
    >>> w, mu_old, mu_new, c = AF.procrustes_fit(old, new, scale=True)   # w = c·R
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import Tensor

from alignkit.functional._checks import check_features, check_int, check_positive, check_same_rows, one_device
from alignkit.functional.similarity import _gram_basis

__all__ = ["RIDGE_GRID", "ProcrustesFit", "procrustes_fit", "ridge_fit", "ridge_gcv", "ridge_kfold"]

#: Relative ridge strengths searched by :func:`ridge_gcv` and :func:`ridge_kfold` by default:
#: 10^-6 … 10^2 in quarter decades.
RIDGE_GRID: tuple[float, ...] = tuple(10.0 ** (e / 4) for e in range(-24, 9))


def _check_pair(source: object, target: object) -> tuple[Tensor, Tensor]:
    check_features(source, "source")
    check_features(target, "target")
    assert isinstance(source, Tensor) and isinstance(target, Tensor)
    check_same_rows(source, target, "source", "target")
    return source, target


def _check_grid(grid: object) -> None:
    if (
        not isinstance(grid, (tuple, list))
        or not grid
        or any(isinstance(g, bool) or not isinstance(g, numbers.Real) for g in grid)
        or any(not math.isfinite(g) or g < 0 for g in grid)
    ):
        raise ValueError(f"grid must be a non-empty sequence of finite numbers ≥ 0, got {grid!r}")


def _ridge_weight(xc: Tensor, yc: Tensor, ridge: float) -> Tensor:
    """``W (d_s, d_t) = (XᶜᵀXᶜ + λI)⁻¹ XᶜᵀYᶜ``, ``λ = ridge·tr(XᶜᵀXᶜ)/d_s``; min-norm lstsq at λ = 0."""
    gram = xc.T @ xc
    lam = ridge * float(gram.diagonal().sum()) / xc.shape[1]
    if lam > 0:
        gram.diagonal().add_(lam)
        return torch.linalg.solve(gram, xc.T @ yc)
    return torch.linalg.pinv(xc) @ yc


def _spectrum(xc: Tensor) -> tuple[Tensor, Tensor]:
    """``(s², V)`` of the thin SVD ``Xᶜ = U S Vᵀ`` (n, d), float64, from the smaller Gram matrix:
    ``XᶜᵀXᶜ = V S² Vᵀ`` when n ≥ d, else ``XᶜXᶜᵀ = U S² Uᵀ`` and ``V = XᶜᵀU / s``. Truncated by
    :func:`alignkit.functional.similarity._gram_basis` (the helper SVCCA uses): ``s > s_max·sqrt(max(n,
    d)·eps₆₄)``, the smallest singular value a float64 Gram matrix resolves — below it an eigenvalue
    is rounding noise, and dividing by it (λ = 0) would amplify noise. Cost O(n·d·min(n, d) +
    min(n, d)³), several times faster than an SVD of a tall matrix on CPU."""
    n, d = xc.shape
    if n >= d:
        v, s = _gram_basis(xc.T @ xc, n, xc.dtype)
        return s.square(), v
    u, s = _gram_basis(xc @ xc.T, d, xc.dtype)
    return s.square(), (xc.T @ u) / s


@one_device
def ridge_fit(source: Tensor, target: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Ridge regression with an unpenalised intercept: the affine map from ``source`` rows to ``target`` rows.

    Hoerl & Kennard 1970, "Ridge Regression: Biased Estimation for Nonorthogonal Problems"
    (Technometrics). With column means ``μ_x``, ``μ_y`` and centred rows ``Xᶜ``, ``Yᶜ``::

        W = (XᶜᵀXᶜ + λI)⁻¹ XᶜᵀYᶜ,   λ = ridge · tr(XᶜᵀXᶜ) / d_s,   f(x) = (x − μ_x) W + μ_y

    ``ridge = 0``: the minimum-norm least-squares solution ``W = (Xᶜ)⁺ Yᶜ`` (also when d_s ≥ n).
    The relative strength makes ``ridge`` invariant to a rescaling of x; choose it with
    :func:`ridge_gcv` or :func:`ridge_kfold`.

    Args:
        source: (n, d_s) rows.
        target: (n, d_t) rows of the same n items.
        ridge: relative strength, a finite number ≥ 0.

    Returns:
        ``(W (d_s, d_t), μ_x (d_s,), μ_y (d_t,))`` in the promoted input dtype (computed in float64;
        not differentiable: inputs are detached).

    Cost: O(n·d_s·(d_s + d_t) + d_s³) time (λ = 0: an SVD of Xᶜ, O(n·d_s·min(n, d_s))), O(d_s² +
    n·(d_s + d_t)) memory for the float64 copies.
    """
    source, target = _check_pair(source, target)
    check_positive(ridge, "ridge", allow_zero=True)
    x, y = source.detach().double(), target.detach().double()
    mu_x, mu_y = x.mean(0), y.mean(0)
    weight = _ridge_weight(x - mu_x, y - mu_y, float(ridge))
    out = torch.promote_types(source.dtype, target.dtype)
    return weight.to(out), mu_x.to(out), mu_y.to(out)


class ProcrustesFit(NamedTuple):
    """Result of :func:`procrustes_fit`: the affine map ``f(x) = (x − μ_x) W + μ_y`` and its scale.

    It unpacks as ``W, μ_x, μ_y, c`` — the first three in :func:`ridge_fit`'s order and meaning.

    weight: (d_s, d_t) ``W = c·R`` (``R`` itself when ``scale=False``, where ``c = 1``).
    source_mean: (d_s,) ``μ_x``.
    target_mean: (d_t,) ``μ_y``.
    scale: the isotropic scale ``c`` as a Python float (1.0 without ``scale``; 0.0 when ``Xᶜ = 0`` or
        ``XᶜᵀYᶜ = 0``, where no rotation is determined and the map is the constant ``μ_y``).
    """

    weight: Tensor
    source_mean: Tensor
    target_mean: Tensor
    scale: float


@one_device
def procrustes_fit(source: Tensor, target: Tensor, scale: bool = False) -> ProcrustesFit:
    """Orthogonal Procrustes with centring and an optional isotropic scale, from ``source`` to ``target``.

    The map is a rotation between equal widths, a semi-orthogonal map between different ones.

    Schönemann 1966, "A generalized solution of the orthogonal Procrustes problem" (Psychometrika);
    isotropic scale: Gower & Dijksterhuis 2004, "Procrustes Problems" (Oxford). With column means
    ``μ_x``, ``μ_y``, centred rows ``Xᶜ`` (n, d_s), ``Yᶜ`` (n, d_t) and the thin SVD of the (d_s, d_t)
    cross-covariance::

        XᶜᵀYᶜ = U Σ Vᵀ,   R = U Vᵀ,   c = tr Σ / ‖Xᶜ‖²_F  (scale=True, else c = 1),
        W = c·R,   f(x) = (x − μ_x) W + μ_y

    ``R`` maximises ``tr(Rᵀ XᶜᵀYᶜ)`` over semi-orthogonal (d_s, d_t) matrices: ``RRᵀ = I`` when
    d_s ≤ d_t, ``RᵀR = I`` when d_s > d_t. For d_s ≤ d_t the map ``x ↦ xR`` is an isometry, so ``R``
    minimises ``‖XᶜR − Yᶜ‖_F`` and ``c`` is the least-squares scale given ``R``. For d_s > d_t ``R``
    is a projection and the same ``R`` and ``c`` are returned: they maximise the correlation
    ``tr(Rᵀ XᶜᵀYᶜ)`` but are not the least-squares projection (``‖XᶜR‖`` then depends on ``R``).
    Equals ``scipy.linalg.orthogonal_procrustes(Xᶜ, Yᶜ)`` (``R`` and ``tr Σ``) up to rounding.

    Args:
        source: (n, d_s) rows.
        target: (n, d_t) rows of the same n items.
        scale: fit the isotropic scale ``c`` (a bool).

    Returns:
        :class:`ProcrustesFit` ``(W (d_s, d_t), μ_x (d_s,), μ_y (d_t,), c)``; the tensors in the promoted
        input dtype (computed in float64; not differentiable: inputs are detached), ``c`` a float.

    Cost: O(n·d_s·d_t) time for the cross-covariance plus an SVD of it, O(d_s·d_t·min(d_s, d_t));
    O(n·(d_s + d_t) + d_s·d_t) memory for the float64 copies.
    """
    source, target = _check_pair(source, target)
    if not isinstance(scale, bool):
        raise ValueError(f"scale must be a bool, got {scale!r}")
    x, y = source.detach().double(), target.detach().double()
    mu_x, mu_y = x.mean(0), y.mean(0)
    xc = x - mu_x
    u, s, vh = torch.linalg.svd(xc.T @ (y - mu_y), full_matrices=False)
    rotation = u @ vh
    c = 1.0
    if scale:
        norm = float(xc.square().sum())
        c = float(s.sum()) / norm if norm > 0 else 0.0
    out = torch.promote_types(source.dtype, target.dtype)
    return ProcrustesFit((c * rotation).to(out), mu_x.to(out), mu_y.to(out), c)


@one_device
def ridge_gcv(source: Tensor, target: Tensor, grid: tuple[float, ...] = RIDGE_GRID) -> tuple[float, Tensor]:
    """Choose the relative ridge strength by generalised cross-validation, in closed form from one spectrum.

    For ridge regression with an unpenalised intercept on centred rows ``Xᶜ = U S Vᵀ`` (n × d) and
    ``λ = ridge·tr(XᶜᵀXᶜ)/d`` (the scale of :func:`ridge_fit`), the hat matrix is
    ``H = 11ᵀ/n + U diag(s²/(s² + λ)) Uᵀ`` and (Golub, Heath & Wahba 1979, "Generalized
    Cross-Validation as a Method for Choosing a Good Ridge Parameter", Technometrics)::

        GCV(λ) = ‖(I − H) Y‖_F² / (n · (1 − tr H / n)²),
        ‖(I − H) Y‖_F² = ‖Yᶜ‖² − ‖UᵀYᶜ‖² + Σ_k (λ / (s_k² + λ))² ‖(UᵀYᶜ)_k‖²,
        tr H = 1 + Σ_k s_k² / (s_k² + λ),

    summed over all target columns (one λ shared by every output). GCV approximates leave-one-out
    error, is invariant to rotations of the data, and needs no held-out rows: only the training
    pairs are used. A λ whose effective degrees of freedom reach n scores +inf.

    Args:
        source: (n, d_s) training rows (centred here).
        target: (n, d_t) training rows.
        grid: relative strengths to try (each ≥ 0).

    Returns:
        ``(best, scores)``: the chosen relative ridge and the (len(grid),) float64 GCV scores (CPU).
        With n ≤ 2 (nothing to cross-validate) every score is +inf and the largest value is chosen.

    Cost: the spectrum of ``Xᶜ`` from its smaller Gram matrix, O(n·d_s·(min(n, d_s) + d_t) + min(n, d_s)³)
    time; O(len(grid)·min(n, d_s)) after it.
    """
    source, target = _check_pair(source, target)
    _check_grid(grid)
    x, y = source.detach().double(), target.detach().double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    n, d = xc.shape
    s2, v = _spectrum(xc)
    proj = (v.T @ (xc.T @ yc)).square().sum(1) / s2  # ‖(UᵀYᶜ)_k‖² = ‖(VᵀXᶜᵀYᶜ)_k‖² / s_k², (r,)
    total = float(yc.square().sum())
    base = float(xc.square().sum()) / d
    scores = torch.full((len(grid),), math.inf, dtype=torch.float64)
    for i, rel in enumerate(grid):
        lam = rel * base
        if lam > 0:
            shrink = lam / (s2 + lam)
            fit = s2 / (s2 + lam)
        else:
            shrink, fit = torch.zeros_like(s2), torch.ones_like(s2)  # _spectrum kept only resolved s² > 0
        rss = total - float(proj.sum()) + float((shrink.square() * proj).sum())
        slack = 1.0 - (1.0 + float(fit.sum())) / n
        if slack > 1e-9:
            scores[i] = max(rss, 0.0) / (n * slack * slack)
    finite = torch.isfinite(scores)
    if not bool(finite.any()):
        return float(max(grid)), scores
    best = int(torch.where(finite, scores, torch.full_like(scores, math.inf)).argmin())
    return float(grid[best]), scores


@one_device
def ridge_kfold(
    source: Tensor, target: Tensor, folds: int = 5, grid: tuple[float, ...] = RIDGE_GRID, seed: int = 0
) -> tuple[float, Tensor]:
    """Choose the relative ridge strength by k-fold cross-validation on the training pairs.

    The rows are shuffled (``torch.randperm`` seeded by ``seed``) and cut into ``folds`` parts of
    near-equal size. For each part, ridge regression with an unpenalised intercept is fitted on the
    other rows exactly as :func:`ridge_fit` fits it (centred rows, ``λ = ridge·tr(XᶜᵀXᶜ)/d`` on the
    fitting rows; ``ridge = 0``: minimum-norm least squares) and scored by its squared error on the
    part; the score of a grid value is the mean squared error per target coordinate over all rows::

        CV(λ) = Σ_f ‖Y_f − ((X_f − μ_x⁻ᶠ) W⁻ᶠ(λ) + μ_y⁻ᶠ)‖_F² / (n · d_t)

    (Stone 1974, "Cross-validatory choice and assessment of statistical predictions", JRSS B). Unlike
    GCV (:func:`ridge_gcv`, a rotation-invariant approximation of leave-one-out) it refits on actual
    held-out parts, so it stays honest where GCV's approximation is loose (n ≈ d, heavy-tailed
    leverage); ``folds = n`` is exact leave-one-out.

    No fold is refitted from its rows. The rows are centred once (a shift changes nothing here, and
    the folds' means are then small, so no digits are lost to an offset) and the moments of all rows
    are taken once; a fold's fitting moments are the total minus its held-out part's, centred on the
    fitting mean by a rank-one correction::

        XᶜᵀXᶜ = (XᵀX − X_fᵀX_f) − n₋f μμᵀ,   XᶜᵀYᶜ = (XᵀY − X_fᵀY_f) − n₋f μ μ_yᵀ

    and its spectrum ``XᶜᵀXᶜ = V S² Vᵀ`` gives ``B = VᵀXᶜᵀYᶜ = S UᵀYᶜ`` and, for ``P = (X_f − μ) V``,
    ``PᵀP`` and ``PᵀY_fᶜ`` from the part's own moments ``X_fᵀX_f``, ``X_fᵀY_f`` (P is never formed). When a
    fold fits on fewer rows than d_s, the (n, n) Gram ``XXᵀ`` of all rows is taken instead: a fold's
    row Gram is its fitting block, double-centred, ``XᶜXᶜᵀ = U S² Uᵀ``, and ``P = Kᶜ_{f,fit} U / s``,
    ``B = S UᵀYᶜ`` (no (d_s, ·) basis). With ``D(λ) = diag(1 / (s² + λ))`` the fold's prediction is
    ``P D B`` and its error ``‖Y_fᶜ‖² − 2 Σ_k D_k (PᵀY_fᶜBᵀ)_kk + Dᵀ((PᵀP) ∘ (BBᵀ)) D``, so every grid
    value costs O(r²), r = rank(Xᶜ) ≤ min(n, d_s).

    Args:
        source: (n, d_s) training rows.
        target: (n, d_t) training rows.
        folds: number of parts (≥ 2); at most n (fewer rows: leave-one-out).
        grid: relative strengths to try (each ≥ 0).
        seed: shuffling seed (≥ 0).

    Returns:
        ``(best, scores)``: the chosen relative ridge (the smallest-error grid value) and the
        (len(grid),) float64 cross-validated errors (CPU). With n < 2 every score is +inf and the
        largest value is chosen.

    Cost (K = folds): with every fitting set of at least d_s rows, one pass of O(n·d_s·(d_s + d_t)) for
    the moments, the held-out parts' moments O((n/K)·d_s·(d_s + d_t)) per fold (one more pass in all),
    and O(d_s²·(d_s + d_t)) per fold for the spectrum and the projections: O(n·d_s·(d_s + d_t) +
    K·d_s²·(d_s + d_t)) time instead of K refits' O(K·n·d_s·(d_s + d_t)); else O(n²·(d_s + d_t) + K·n³).
    Memory O(n·(d_s + d_t) + min(n, d_s)²); O(len(grid)·K·r²) for the grid.
    """
    source, target = _check_pair(source, target)
    check_int(folds, "folds", 2)
    check_int(seed, "seed", 0)
    _check_grid(grid)
    x, y = source.detach().double(), target.detach().double()
    n, d = x.shape
    scores = torch.zeros(len(grid), dtype=torch.float64, device=x.device)
    if n < 2:
        return float(max(grid)), torch.full((len(grid),), math.inf, dtype=torch.float64)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
    parts = order.tensor_split(min(folds, n))
    x, y = x - x.mean(0), y - y.mean(0)  # shift-invariant; keeps the rank-one centring below exact
    primal = n - max(len(part) for part in parts) >= d  # every fold fits on ≥ d rows: (d, d) Grams
    if primal:
        gram, cross, sum_x, sum_y = x.T @ x, x.T @ y, x.sum(0), y.sum(0)
    else:
        kernel = x @ x.T  # (n, n)
    for part in parts:
        m = len(part)
        n_fit = n - m
        xp, yp = x[part], y[part]
        if primal:
            gram_p, cross_p, sx_p, sy_p = xp.T @ xp, xp.T @ yp, xp.sum(0), yp.sum(0)
            mu_x, mu_y = (sum_x - sx_p) / n_fit, (sum_y - sy_p) / n_fit
            g = gram - gram_p - n_fit * torch.outer(mu_x, mu_x)  # XᶜᵀXᶜ of the fitting rows
            c = cross - cross_p - n_fit * torch.outer(mu_x, mu_y)  # XᶜᵀYᶜ
            v, s = _gram_basis(g, n_fit, torch.float64)
            b = v.T @ c  # S Uᵀ Yᶜ, (r, d_t)
            trace = float(g.diagonal().sum())
            # PᵀP and PᵀY_fᶜ from the part's moments, P = (X_f − μ)V never formed: O(d²·(d + d_t))
            outer = torch.outer
            pp = v.T @ (gram_p - outer(sx_p, mu_x) - outer(mu_x, sx_p) + m * outer(mu_x, mu_x)) @ v
            py = v.T @ (cross_p - outer(sx_p, mu_y) - outer(mu_x, sy_p) + m * outer(mu_x, mu_y))
        else:
            fit = torch.ones(n, dtype=torch.bool, device=x.device)
            fit[part] = False
            k = kernel[fit][:, fit]
            k_mean = k.mean(0)  # μ·x_j for the fitting rows j
            kc = k - k_mean[None, :] - k_mean[:, None] + k_mean.mean()  # XᶜXᶜᵀ
            u, s = _gram_basis(kc, d, torch.float64)
            kp = kernel[part][:, fit]  # x_p·x_j, (m, n_fit)
            kp = kp - kp.mean(1, keepdim=True) - k_mean[None, :] + k_mean.mean()  # (x_p − μ)·(x_j − μ)
            p = (kp @ u) / s  # (X_f − μ) V with V = XᶜᵀU / s
            mu_y = y[fit].mean(0)
            b = s[:, None] * (u.T @ (y[fit] - mu_y))
            trace = float(kc.diagonal().sum())
            pp, py = p.T @ p, p.T @ (yp - mu_y)
        s2 = s.square()
        cross_k = (py * b).sum(1)  # (PᵀY_fᶜBᵀ)_kk, (r,)
        quad = pp * (b @ b.T)  # (r, r)
        total = float((yp - mu_y).square().sum())
        base = trace / d
        for i, rel in enumerate(grid):
            dk = 1.0 / (s2 + rel * base)  # W = V diag(1 / (s² + λ)) S UᵀYᶜ; λ = 0: the pseudo-inverse
            scores[i] += total - 2.0 * float(dk @ cross_k) + float(dk @ quad @ dk)
    scores = (scores / (n * y.shape[1])).clamp_min(0.0).cpu()
    return float(grid[int(scores.argmin())]), scores
