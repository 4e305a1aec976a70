"""alignkit.functional.regression: ridge_fit against numpy's least squares (float64), and the spectrum's
cut-off (shared with SVCCA) on rank-deficient data, where keeping a rounding-noise eigenvalue would
change the λ = 0 answers. GCV and K-fold selection are also tested through fit_adapter in test_adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import alignkit.functional as AF
from alignkit.functional.regression import RIDGE_GRID, ridge_fit, ridge_gcv, ridge_kfold


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
