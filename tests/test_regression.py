"""alignkit.functional.regression: ridge_fit against numpy's least squares (float64), procrustes_fit against
scipy.linalg.orthogonal_procrustes and a float64 polar-factor reference (no SVD), and the spectrum's
cut-off (shared with SVCCA) on rank-deficient data, where keeping a rounding-noise eigenvalue would
change the λ = 0 answers. GCV and K-fold selection are also tested through fit_adapter in test_adapters."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import alignkit.functional as AF
from alignkit.functional.regression import (
    RIDGE_GRID,
    ProcrustesFit,
    procrustes_fit,
    ridge_fit,
    ridge_gcv,
    ridge_kfold,
)


def _ref_ridge(x: np.ndarray, y: np.ndarray, rel: float) -> np.ndarray:
    """W of ridge with an unpenalised intercept by lstsq on the augmented system; pinv at rel = 0."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    d = x.shape[1]
    if rel == 0:
        return np.linalg.pinv(xc) @ yc
    lam = rel * np.sum(xc**2) / d
    aug_x = np.vstack([xc, np.sqrt(lam) * np.eye(d)])
    aug_y = np.vstack([yc, np.zeros((d, y.shape[1]))])
    return np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]


def _ref_gcv_pinv(x: np.ndarray, y: np.ndarray) -> float:
    """GCV at λ = 0 from the explicit hat matrix H = 11ᵀ/n + Xᶜ(Xᶜ)⁺ (a projection of rank 1 + rank Xᶜ)."""
    n = x.shape[0]
    xc = x - x.mean(0)
    hat = np.ones((n, n)) / n + xc @ np.linalg.pinv(xc)
    resid = (np.eye(n) - hat) @ y
    return float(np.sum(resid**2) / (n * (1 - np.trace(hat) / n) ** 2))


@pytest.mark.parametrize(("n", "d"), [(60, 8), (10, 25)])
@pytest.mark.parametrize("rel", [0.0, 1e-3, 0.7])
def test_ridge_fit_equals_numpy_least_squares(n: int, d: int, rel: float) -> None:
    rng = np.random.default_rng(n + d)
    x = rng.standard_normal((n, d)) * np.linspace(0.5, 3, d) + 4.0
    y = x @ rng.standard_normal((d, 3)) + 0.3 * rng.standard_normal((n, 3)) - 1.0
    w, mu_x, mu_y = ridge_fit(torch.from_numpy(x), torch.from_numpy(y), rel)
    np.testing.assert_allclose(w.numpy(), _ref_ridge(x, y, rel), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mu_x.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mu_y.numpy(), y.mean(0), rtol=1e-12)
    # float32 in, float32 out (computed in float64)
    w32, _, _ = ridge_fit(torch.from_numpy(x).float(), torch.from_numpy(y).float(), rel)
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32, w.float(), rtol=1e-4, atol=1e-4)


def test_ridge_fit_rejects_bad_input() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="ridge"):
        ridge_fit(x, x, -1.0)
    with pytest.raises(ValueError, match="ridge"):
        ridge_fit(x, x, float("nan"))
    with pytest.raises(ValueError, match="ridge"):
        ridge_fit(x, x, "auto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        ridge_fit(x[:5], x)
    with pytest.raises(ValueError, match="grid"):
        ridge_gcv(x, x, grid=(1.0, -1.0))
    with pytest.raises(ValueError, match="grid"):
        ridge_kfold(x, x, grid=())


def _ref_polar(m: np.ndarray) -> tuple[np.ndarray, float]:
    """(R, tr Σ) of the (d_s, d_t) cross-covariance M of full rank, without an SVD: R is the polar factor
    (MMᵀ)^(-1/2) M (d_s ≤ d_t) or M (MᵀM)^(-1/2) (d_s > d_t), by float64 eigendecomposition, and tr Σ is
    the sum of the square roots of the eigenvalues of the smaller Gram matrix."""
    wide = m.shape[0] <= m.shape[1]
    gram = m @ m.T if wide else m.T @ m
    vals, vecs = np.linalg.eigh(gram)
    inv_sqrt = vecs @ np.diag(vals**-0.5) @ vecs.T
    return (inv_sqrt @ m if wide else m @ inv_sqrt), float(np.sum(np.sqrt(vals)))


def _semi_orthogonal(rng: np.random.Generator, d_s: int, d_t: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((max(d_s, d_t), min(d_s, d_t))))
    return q.T if d_s <= d_t else q  # (d_s, d_t), orthonormal rows (d_s ≤ d_t) or columns


@pytest.mark.parametrize(("d_s", "d_t"), [(6, 6), (4, 9), (9, 4)])
@pytest.mark.parametrize("scale", [False, True])
def test_procrustes_fit_equals_scipy_and_the_polar_factor(d_s: int, d_t: int, scale: bool) -> None:
    rng = np.random.default_rng(10 * d_s + d_t)
    x = rng.standard_normal((50, d_s)) * np.linspace(0.5, 2, d_s) + 3.0
    y = 0.6 * (x - 3.0) @ _semi_orthogonal(rng, d_s, d_t) + 0.4 * rng.standard_normal((50, d_t)) - 1.0
    fit = procrustes_fit(torch.from_numpy(x), torch.from_numpy(y), scale=scale)
    assert isinstance(fit, ProcrustesFit) and isinstance(fit.scale, float)
    w, mu_x, mu_y, c = fit  # unpacks like ridge_fit's triple, plus the scale
    assert w.dtype == torch.float64 and w.shape == (d_s, d_t)
    xc, yc = x - x.mean(0), y - y.mean(0)
    # scipy wants equal widths: zero columns pad the narrower side, and R is the (d_s, d_t) block of its
    # orthogonal answer (the padded coordinates carry the cross-covariance's zero singular values only)
    width = max(d_s, d_t)
    padded = [np.hstack([a, np.zeros((len(a), width - a.shape[1]))]) for a in (xc, yc)]
    r_scipy, sigma_scipy = scipy.linalg.orthogonal_procrustes(*padded)
    r_scipy = r_scipy[:d_s, :d_t]
    r_polar, sigma_polar = _ref_polar(xc.T @ yc)
    c_ref = sigma_polar / np.sum(xc**2) if scale else 1.0
    assert sigma_scipy == pytest.approx(sigma_polar, rel=1e-12)
    assert c == pytest.approx(c_ref, rel=1e-12)
    assert (c != 1.0) is scale
    np.testing.assert_allclose(w.numpy(), c_ref * r_scipy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.numpy(), c_ref * r_polar, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mu_x.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mu_y.numpy(), y.mean(0), rtol=1e-12)
    # R semi-orthogonal, and it beats random semi-orthogonal maps on tr(Rᵀ XᶜᵀYᶜ)
    r = w.numpy() / c
    gram = r @ r.T if d_s <= d_t else r.T @ r
    np.testing.assert_allclose(gram, np.eye(min(d_s, d_t)), atol=1e-12)
    best = np.trace(r.T @ xc.T @ yc)
    assert all(np.trace(_semi_orthogonal(rng, d_s, d_t).T @ xc.T @ yc) < best for _ in range(50))
    # float32 in, float32 out (computed in float64)
    w32, _, _, c32 = procrustes_fit(torch.from_numpy(x).float(), torch.from_numpy(y).float(), scale=scale)
    assert w32.dtype == torch.float32 and c32 == pytest.approx(c, rel=1e-5)
    torch.testing.assert_close(w32, w.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("d_s", "d_t"), [(5, 8), (8, 8)])
def test_procrustes_fit_recovers_a_known_scaled_rotation_exactly(d_s: int, d_t: int) -> None:
    """y = 2.5·x·Q + b with Q of orthonormal rows: scale=True gives W = 2.5·Q, c = 2.5 and maps x onto y;
    scale=False keeps W = Q."""
    rng = np.random.default_rng(d_s + d_t)
    q = _semi_orthogonal(rng, d_s, d_t)
    x = rng.standard_normal((40, d_s)) + 1.5
    y = 2.5 * x @ q + rng.standard_normal(d_t)
    w, mu_x, mu_y, c = procrustes_fit(torch.from_numpy(x), torch.from_numpy(y), scale=True)
    assert c == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(w.numpy(), 2.5 * q, atol=1e-12)
    np.testing.assert_allclose(((torch.from_numpy(x) - mu_x) @ w + mu_y).numpy(), y, atol=1e-12)
    w1, _, _, c1 = procrustes_fit(torch.from_numpy(x), torch.from_numpy(y))
    assert c1 == 1.0
    np.testing.assert_allclose(w1.numpy(), q, atol=1e-12)


def test_procrustes_fit_degenerate_source_maps_to_the_target_mean() -> None:
    """A constant source (or one row): Xᶜ = 0, no rotation is determined; with scale c = 0, W = 0."""
    y = torch.randn(7, 3, dtype=torch.float64)
    for x in (torch.full((7, 4), 2.0, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)):
        w, _, mu_y, c = procrustes_fit(x, y[: len(x)], scale=True)
        assert c == 0.0 and torch.equal(w, torch.zeros(4, 3, dtype=torch.float64))
        torch.testing.assert_close(mu_y, y[: len(x)].mean(0), rtol=0, atol=0)


def test_procrustes_fit_rejects_bad_input() -> None:
    x = torch.randn(10, 3)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="scale must be a bool"):
            procrustes_fit(x, x, scale=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        procrustes_fit(x[:5], x)
    with pytest.raises(ValueError, match="source"):
        procrustes_fit(x[:, 0], x)
    with pytest.raises(ValueError, match="target"):
        procrustes_fit(x, torch.ones(10, 3, dtype=torch.long))
    nan = x.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="target has 1 non-finite"):
        procrustes_fit(x, nan)


@pytest.mark.parametrize(("n", "d", "rank"), [(40, 10, 7), (12, 20, 5)])
def test_gcv_and_kfold_at_zero_ridge_drop_the_rounding_noise_of_rank_deficient_data(
    n: int, d: int, rank: int
) -> None:
    """X = A·B of rank < d (n > d: the (d, d) Gram; n < d: the (n, n) one). At λ = 0 the fit is the
    pseudo-inverse: an eigenvalue of rounding noise kept by the spectrum's cut-off would add one to
    tr H and divide by ~1e-16, so GCV and the K-fold error would move far from the references."""
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) + 2.0
    y = x @ rng.standard_normal((d, 4)) / d + rng.standard_normal((n, 4))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    _, gcv = ridge_gcv(xt, yt, grid=(0.0, 0.5))
    assert float(gcv[0]) == pytest.approx(_ref_gcv_pinv(x, y), rel=1e-8)
    _, kfold = ridge_kfold(xt, yt, folds=4, seed=3, grid=(0.0, 0.5))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3)).numpy()
    for column, rel in enumerate((0.0, 0.5)):
        total = 0.0
        for part in np.array_split(order, 4):
            fit = np.setdiff1d(np.arange(n), part)
            w = _ref_ridge(x[fit], y[fit], rel)
            total += float(np.sum(((x[part] - x[fit].mean(0)) @ w + y[fit].mean(0) - y[part]) ** 2))
        assert float(kfold[column]) == pytest.approx(total / (n * 4), rel=1e-8)


def test_exported_from_the_functional_namespace_and_adapters() -> None:
    from alignkit import adapters

    assert AF.ridge_gcv is ridge_gcv is adapters.ridge_gcv
    assert AF.procrustes_fit is procrustes_fit is adapters.procrustes_fit
    assert AF.ProcrustesFit is ProcrustesFit
    assert AF.ridge_kfold is ridge_kfold is adapters.ridge_kfold
    assert AF.RIDGE_GRID is RIDGE_GRID is adapters.RIDGE_GRID
    assert RIDGE_GRID[0] == pytest.approx(1e-6) and RIDGE_GRID[-1] == pytest.approx(100.0)


def _ref_kfold_refit(x: np.ndarray, y: np.ndarray, rel: float, folds: int, seed: int) -> float:
    """K-fold error by refitting every fold from its rows in numpy (lstsq on the augmented system)."""
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    total = 0.0
    for part in np.array_split(order, min(folds, n)):
        fit = np.setdiff1d(np.arange(n), part)
        w = _ref_ridge(x[fit], y[fit], rel)
        total += float(np.sum(((x[part] - x[fit].mean(0)) @ w + y[fit].mean(0) - y[part]) ** 2))
    return total / (n * y.shape[1])


@pytest.mark.parametrize(
    ("n", "d", "folds", "offset"),
    [
        (80, 10, 5, 0.0),  # (d, d) Grams downdated
        (80, 10, 5, 1e4),  # … with an offset 10⁴× the spread: centring once first keeps every digit
        (30, 50, 5, 3.0),  # fewer fitting rows than d: blocks of the (n, n) Gram
        (11, 4, 11, 0.0),  # leave-one-out, 10 fitting rows ≥ d
    ],
)
def test_kfold_from_downdated_moments_equals_refitting_every_fold(
    n: int, d: int, folds: int, offset: float
) -> None:
    rng = np.random.default_rng(n * d)
    x = rng.standard_normal((n, d)) * np.linspace(0.3, 2, d) + offset
    y = (x - offset) @ rng.standard_normal((d, 3)) / np.sqrt(d) + 0.5 * rng.standard_normal((n, 3)) + offset
    grid = (0.0, 1e-4, 1e-2, 0.3, 10.0) if n > d else (1e-4, 1e-2, 0.3, 10.0)
    best, scores = ridge_kfold(torch.from_numpy(x), torch.from_numpy(y), folds=folds, seed=5, grid=grid)
    for rel, score in zip(grid, scores.tolist(), strict=True):
        assert score == pytest.approx(_ref_kfold_refit(x, y, rel, folds, 5), rel=1e-9)
    assert best == grid[int(scores.argmin())]
