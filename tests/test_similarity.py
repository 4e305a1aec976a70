"""Similarity metrics against slow float64 references written here (explicit H matrices, loops, numpy,
scipy and scikit-learn), the published numbers of Kornblith et al.'s CKA notebook, and invariances.

pytorch-metric-learning implements none of these metrics, so there is no PML comparison here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import alignkit.functional as AF
import alignkit.functional.similarity as similarity
from alignkit import losses

# --------------------------------------------------------------------------------------------------
# References (float64, obviously correct)


def gram_linear_ref(x: np.ndarray) -> np.ndarray:
    return x @ x.T


def gram_rbf_ref(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Loops: squared distances, σ² = threshold²·median over the full matrix (zero diagonal included)."""
    n = len(x)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dist[i, j] = sum((a - b) ** 2 for a, b in zip(x[i], x[j], strict=True))
    sigma2 = threshold**2 * np.median(dist)
    return np.exp(-dist / (2 * sigma2))


def hsic_biased_ref(k: np.ndarray, l_: np.ndarray) -> float:
    """tr(KHLH) / (n−1)², H = I − 11ᵀ/n."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2


def hsic_unbiased_ref(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. 2012, eq. (5): K̃, L̃ with zero diagonal,
    [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))."""
    n = len(k)
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    value = (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    )
    return float(value) / (n * (n - 3))


def cka_ref(k: np.ndarray, l_: np.ndarray, unbiased: bool = False) -> float:
    hsic = hsic_unbiased_ref if unbiased else hsic_biased_ref
    den = math.sqrt(hsic(k, k) * hsic(l_, l_))
    return 0.0 if den == 0 else hsic(k, l_) / den


def kernel_ref(x: np.ndarray, kernel: str, threshold: float = 1.0) -> np.ndarray:
    return gram_linear_ref(x) if kernel == "linear" else gram_rbf_ref(x, threshold)


def notebook_center_gram(gram: np.ndarray, unbiased: bool) -> np.ndarray:
    """Kornblith et al.'s notebook, ``center_gram`` (U-centring of Székely & Rizzo when unbiased)."""
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def notebook_cka(gram_x: np.ndarray, gram_y: np.ndarray, debiased: bool = False) -> float:
    gx, gy = notebook_center_gram(gram_x, debiased), notebook_center_gram(gram_y, debiased)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def notebook_rbf(x: np.ndarray, threshold: float) -> np.ndarray:
    dots = x @ x.T
    sq = np.diag(dots)
    dist = -2 * dots + sq[:, None] + sq[None, :]
    return np.exp(-dist / (2 * threshold**2 * np.median(dist)))


def inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return v @ np.diag(w**-0.5) @ v.T


def cca_ref(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Canonical correlations from covariance matrices (Hotelling): svd(Cxx^-½ Cxy Cyy^-½); also
    the canonical directions of x. ``ridge`` adds ridge·λ_max·I to each covariance."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    cxx, cyy, cxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    cxx = cxx + ridge * np.linalg.eigvalsh(cxx).max() * np.eye(len(cxx))
    cyy = cyy + ridge * np.linalg.eigvalsh(cyy).max() * np.eye(len(cyy))
    wx, wy = inv_sqrt(cxx), inv_sqrt(cyy)
    u, rho, _ = np.linalg.svd(wx @ cxy @ wy)
    k = min(x.shape[1], y.shape[1])
    return rho[:k], wx @ u[:, :k]


def svcca_ref(x: np.ndarray, y: np.ndarray, keep: float | int) -> float:
    reduced = []
    for a in (x, y):
        ac = a - a.mean(0)
        u, s, _ = np.linalg.svd(ac, full_matrices=False)
        if isinstance(keep, int):
            k = keep
        else:
            frac = np.cumsum(s**2) / np.sum(s**2)
            k = next(i + 1 for i, f in enumerate(frac) if f >= keep)
        reduced.append(u[:, :k] * s[:k])
    rho, _ = cca_ref(*reduced)
    return float(rho.mean())


def pwcca_ref(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al. 2018: variates H = Xc·A, orthonormalised by QR, α_i = Σ_j |⟨h_i, x_j⟩|."""
    rho, directions = cca_ref(x, y)
    xc = x - x.mean(0)
    q, _ = np.linalg.qr(xc @ directions)
    alpha = np.zeros(q.shape[1])
    for i in range(q.shape[1]):
        for j in range(xc.shape[1]):
            alpha[i] += abs(q[:, i] @ xc[:, j])
    return float((alpha / alpha.sum()) @ rho)


def morcos_compute_pwcca(acts1: np.ndarray, acts2: np.ndarray) -> float:
    """Port of ``pwcca.compute_pwcca`` of google/svcca (acts are (neurons, datapoints), epsilon=0),
    with its quirks: raw (uncentred) activations for the weights, means added to the directions,
    weights from the side with fewer neurons."""
    mean1, mean2 = acts1.mean(1, keepdims=True), acts2.mean(1, keepdims=True)
    c1, c2 = acts1 - mean1, acts2 - mean2
    sxx, syy, sxy = c1 @ c1.T, c2 @ c2.T, c1 @ c2.T
    wx, wy = inv_sqrt(sxx), inv_sqrt(syy)
    u, s, vt = np.linalg.svd(wx @ sxy @ wy)
    if len(acts1) <= len(acts2):
        coef, acts, mean, w, vecs = s, acts1, mean1, wx, u.T
    else:
        coef, acts, mean, w, vecs = s, acts2, mean2, wy, vt
    dirns = (vecs @ w) @ (acts - mean) + mean
    p, _ = np.linalg.qr(dirns.T)
    weights = np.sum(np.abs(p.T @ acts.T), axis=1)
    weights = weights / weights.sum()
    return float(np.sum(weights * coef[: len(weights)]))


def procrustes_ref(x: np.ndarray, y: np.ndarray) -> float:
    """min_R ‖XR − Y‖_F² over orthogonal R (scipy), X, Y centred, unit Frobenius norm, zero-padded."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    d = max(xc.shape[1], yc.shape[1])
    xc = np.pad(xc, ((0, 0), (0, d - xc.shape[1])))
    yc = np.pad(yc, ((0, 0), (0, d - yc.shape[1])))
    r, _ = scipy.linalg.orthogonal_procrustes(xc, yc)
    return float(np.sum((xc @ r - yc) ** 2))


def rsa_ref(x: np.ndarray, y: np.ndarray, metric: str, method: str) -> float:
    rx = scipy.spatial.distance.pdist(x, metric)
    ry = scipy.spatial.distance.pdist(y, metric)
    if method == "spearman":
        return float(scipy.stats.spearmanr(rx, ry).statistic)
    return float(scipy.stats.pearsonr(rx, ry).statistic)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def orthogonal(d: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(rand(d, d, seed=seed))
    return q


def related(n: int, dx: int, dy: int, noise: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx)) * rng.uniform(0.2, 2.0, dx) + rng.uniform(-3, 3, dx)
    y = x @ rng.standard_normal((dx, dy)) + noise * rng.standard_normal((n, dy))
    return x, y


# --------------------------------------------------------------------------------------------------
# CKA: published numbers, references, paths


@pytest.fixture
def notebook_data() -> tuple[np.ndarray, np.ndarray]:
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return x, y


def test_published_numbers(notebook_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = map(t64, notebook_data)
    assert float(AF.cka(x, y)) == pytest.approx(0.55761, abs=5e-6)
    assert float(AF.cka(x, y, kernel="rbf", threshold=0.5)) == pytest.approx(0.65483, abs=5e-6)
    assert float(AF.cka(x, y, unbiased=True)) == pytest.approx(0.51346, abs=5e-6)


def test_notebook_port_agrees(notebook_data: tuple[np.ndarray, np.ndarray]) -> None:
    """Beyond the 5 published digits: the notebook's own Gram/U-centring code, to 1e-12."""
    xn, yn = notebook_data
    x, y = t64(xn), t64(yn)
    lin_x, lin_y = gram_linear_ref(xn), gram_linear_ref(yn)
    assert float(AF.cka(x, y)) == pytest.approx(notebook_cka(lin_x, lin_y), abs=1e-12)
    assert float(AF.cka(x, y, unbiased=True)) == pytest.approx(notebook_cka(lin_x, lin_y, True), abs=1e-12)
    for threshold in (0.5, 1.0, 2.0):
        kx, ky = notebook_rbf(xn, threshold), notebook_rbf(yn, threshold)
        for unbiased in (False, True):
            got = float(AF.cka(x, y, kernel="rbf", unbiased=unbiased, threshold=threshold))
            assert got == pytest.approx(notebook_cka(kx, ky, unbiased), abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize(("n", "dx", "dy"), [(30, 4, 6), (9, 12, 5), (12, 3, 3)])
def test_cka_matches_hsic_reference(kernel: str, unbiased: bool, n: int, dx: int, dy: int) -> None:
    x, y = related(n, dx, dy, noise=2.0, seed=n + dx)
    threshold = 0.7
    want = cka_ref(kernel_ref(x, kernel, threshold), kernel_ref(y, kernel, threshold), unbiased)
    got = AF.cka(t64(x), t64(y), kernel=kernel, unbiased=unbiased, threshold=threshold)
    assert got.dtype == torch.float64 and got.shape == ()
    assert float(got) == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_feature_space_equals_gram_form(unbiased: bool) -> None:
    x, y = related(50, 7, 4, seed=3)
    xt, yt = t64(x), t64(y)
    features = similarity._linear_cka_features(xt, yt, unbiased)
    gram = similarity._gram_cka(xt, yt, "linear", unbiased, 1.0)
    assert float(features) == pytest.approx(float(gram), abs=1e-12)
    assert float(features) == pytest.approx(cka_ref(x @ x.T, y @ y.T, unbiased), abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_row_blocks_and_chunks_match(monkeypatch: pytest.MonkeyPatch, kernel: str, unbiased: bool) -> None:
    """Many row blocks (checkpointed under autograd) and row chunks give the same values and grads."""
    x, y = related(23, 5, 3, seed=7)
    for feature_path in (False, True):

        def run(
            x: np.ndarray = x, y: np.ndarray = y, wide: bool = feature_path
        ) -> tuple[float, torch.Tensor]:
            xt = t64(x if wide else np.hstack([x, x, x, x, x])).requires_grad_()
            value = AF.cka(xt, t64(y), kernel=kernel, unbiased=unbiased)
            value.backward()
            return float(value.detach()), xt.grad

        one_value, one_grad = run()
        with monkeypatch.context() as m:
            m.setattr(similarity, "_BLOCK_ELEMENTS", 40)  # 1 row per block
            m.setattr(similarity, "_ROW_CHUNK", 4)
            many_value, many_grad = run()
        assert many_value == pytest.approx(one_value, abs=1e-12)
        torch.testing.assert_close(many_grad, one_grad, atol=1e-12, rtol=1e-9)


def test_from_cross_covariance_matches_reference() -> None:
    x, y = related(40, 6, 3, seed=11)
    xc, yc = x - x.mean(0), y - y.mean(0)
    cov = [t64(a) for a in (xc.T @ xc, yc.T @ yc, xc.T @ yc)]
    assert float(AF.cka_from_cross_covariance(*cov)) == pytest.approx(cka_ref(x @ x.T, y @ y.T), abs=1e-12)
    # A common factor (covariance instead of scatter) cancels in the biased form.
    scaled = AF.cka_from_cross_covariance(*(c / 39 for c in cov))
    assert float(scaled) == pytest.approx(cka_ref(x @ x.T, y @ y.T), abs=1e-12)
    s, t = (xc**2).sum(1), (yc**2).sum(1)
    unbiased = AF.cka_from_cross_covariance(
        *cov, n=40, norms_xx=float(s @ s), norms_yy=float(t @ t), norms_xy=t64(s @ t)
    )
    assert float(unbiased) == pytest.approx(cka_ref(x @ x.T, y @ y.T, unbiased=True), abs=1e-12)
    half = AF.cka_from_cross_covariance(*(c.half() for c in cov))
    assert half.dtype == torch.float16 and float(half) == pytest.approx(cka_ref(x @ x.T, y @ y.T), abs=2e-3)


def test_from_cross_covariance_bad_input() -> None:
    a, b, c = torch.eye(3), torch.eye(2), torch.ones(3, 2)
    with pytest.raises(ValueError, match="cov_yy"):
        AF.cka_from_cross_covariance(a, torch.eye(3), c)
    with pytest.raises(ValueError, match="cov_xx"):
        AF.cka_from_cross_covariance(torch.ones(3), b, c)
    with pytest.raises(ValueError, match="cov_xy"):
        AF.cka_from_cross_covariance(a, b, torch.full((3, 2), math.nan))
    with pytest.raises(ValueError, match="norms_yy"):
        AF.cka_from_cross_covariance(a, b, c, n=10, norms_xx=1.0, norms_xy=1.0)
    with pytest.raises(ValueError, match="n must"):
        AF.cka_from_cross_covariance(a, b, c, n=3, norms_xx=1.0, norms_yy=1.0, norms_xy=1.0)
    with pytest.raises(ValueError, match="pass n"):
        AF.cka_from_cross_covariance(a, b, c, norms_xx=1.0)
    zero = AF.cka_from_cross_covariance(torch.zeros(3, 3), b, torch.zeros(3, 2))
    assert float(zero) == 0.0


# --------------------------------------------------------------------------------------------------
# CKA: properties


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("n", [40, 8])  # feature space and Gram form for linear
def test_invariances(kernel: str, n: int) -> None:
    x, y = related(n, 10, 6, noise=1.5, seed=n)
    base = float(AF.cka(t64(x), t64(y), kernel=kernel))
    q = orthogonal(10, seed=1)
    shift = rand(1, 10, seed=2) * 5
    for transformed in (x @ q, 3.7 * x, 1e-3 * x @ q + shift):
        assert float(AF.cka(t64(transformed), t64(y), kernel=kernel)) == pytest.approx(base, abs=1e-10)
    # A general invertible (ill-conditioned, non-orthogonal) map changes CKA.
    m = np.diag(np.logspace(-2, 2, 10)) @ orthogonal(10, seed=3)
    assert abs(float(AF.cka(t64(x @ m), t64(y), kernel=kernel)) - base) > 0.05


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_unbiased_near_zero_for_independent(kernel: str) -> None:
    x, y = t64(rand(200, 50, seed=0)), t64(rand(200, 50, seed=1))
    biased = float(AF.cka(x, y, kernel=kernel))
    unbiased = float(AF.cka(x, y, kernel=kernel, unbiased=True))
    assert abs(unbiased) < 0.03
    assert biased > 0.15  # inflated by ~d/N


finite_floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 12))
    x = draw(arrays(np.float64, (n, draw(st.integers(1, 5))), elements=finite_floats))
    y = draw(arrays(np.float64, (n, draw(st.integers(1, 5))), elements=finite_floats))
    return x, y


@settings(max_examples=40, deadline=None)
@given(pairs(), st.sampled_from(["linear", "rbf"]))
def test_properties(pair: tuple[np.ndarray, np.ndarray], kernel: str) -> None:
    x, y = map(t64, pair)
    xy, yx = float(AF.cka(x, y, kernel=kernel)), float(AF.cka(y, x, kernel=kernel))
    assert xy == pytest.approx(yx, abs=1e-9)
    assert 0.0 <= xy <= 1.0
    assume(np.ptp(pair[0], axis=0).max() > 1e-3)
    assert float(AF.cka(x, x, kernel=kernel)) == pytest.approx(1.0, abs=1e-9)


def test_float32_large_n_matches_float64() -> None:
    """N = 20,000, d = 256 float32 with large column means: equal to the float64 value within 1e-4
    (checked here to 1e-5; measured ~1e-8). A float32 formula without the float64 combination
    misses the unbiased value by ~2e-3."""
    g = torch.Generator().manual_seed(0)
    n, d = 20_000, 256
    x = torch.randn(n, d, generator=g) * torch.linspace(0.1, 3, d) + 50
    y = (x - 50) @ (0.05 * torch.randn(d, d, generator=g)) + torch.randn(n, d, generator=g) + 20
    # float64 reference: centred data, feature-space HSIC terms, and for the unbiased estimator the
    # feature-space form of Song et al.'s formula from Kornblith et al.'s notebook.
    xd, yd = x.double(), y.double()
    xd, yd = xd - xd.mean(0), yd - yd.mean(0)
    hxy = float((xd.T @ yd).square().sum())
    hxx, hyy = float((xd.T @ xd).square().sum()), float((yd.T @ yd).square().sum())
    s, t = xd.square().sum(1), yd.square().sum(1)

    def fix(h: float, a: torch.Tensor, b: torch.Tensor) -> float:
        return h - n / (n - 2) * float(a @ b) + float(a.sum() * b.sum()) / ((n - 1) * (n - 2))

    want = {False: hxy / math.sqrt(hxx * hyy)}
    want[True] = fix(hxy, s, t) / math.sqrt(fix(hxx, s, s) * fix(hyy, t, t))
    for unbiased, value in want.items():
        assert 0.5 < value < 0.9
        got = AF.cka(x, y, unbiased=unbiased)
        assert got.dtype == torch.float32
        assert float(got) == pytest.approx(value, abs=1e-5)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("n", [30, 6])
def test_zero_variance_is_zero_with_finite_gradients(kernel: str, unbiased: bool, n: int) -> None:
    const = torch.full((n, 8), 0.1, dtype=torch.float64).requires_grad_()
    const32 = torch.full((n, 8), 0.1).requires_grad_()
    other = torch.randn(n, 3, dtype=torch.float64).requires_grad_()
    for a, b in ((const, other), (other, const), (const, const), (const32, const32)):
        value = AF.cka(a, b, kernel=kernel, unbiased=unbiased)
        assert float(value.detach()) == 0.0
        value.backward()
    for t in (const, other, const32):
        assert torch.isfinite(t.grad).all()


def test_constant_columns_are_ignored() -> None:
    """A constant column contributes nothing, however its mean rounds (0.1 is inexact in binary)."""
    x, y = related(25, 3, 4, seed=5)
    padded = np.hstack([x, np.full((25, 2), 0.1)])
    for kernel in ("linear", "rbf"):
        assert float(AF.cka(t64(padded), t64(y), kernel=kernel)) == pytest.approx(
            float(AF.cka(t64(x), t64(y), kernel=kernel)), abs=1e-12
        )


def test_rbf_median_zero_uses_indicator_kernel() -> None:
    """More than half of all pairs coincide: σ → 0 limit K_ij = [x_i = x_j] instead of NaN."""
    x = np.repeat(np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]), [8, 2, 1], axis=0)
    y = rand(11, 3, seed=4)
    got = AF.cka(t64(x), t64(y), kernel="rbf")
    indicator = (scipy.spatial.distance.cdist(x, x) == 0).astype(float)
    assert float(got) == pytest.approx(cka_ref(indicator, gram_rbf_ref(y)), abs=1e-12)


def test_median_selection_both_branches() -> None:
    """The k-th smallest entry (numpy introselect on CPU, torch.kthvalue elsewhere), ties included."""
    u = torch.tensor([5.0, 1.0, 3.0, 3.0, 0.0, 9.0, 3.0, 2.0])
    ordered = sorted(u.tolist())
    for use_numpy in (True, False):
        for k in range(len(u)):
            assert float(u[similarity._kth_smallest_index(u, k, use_numpy=use_numpy)]) == ordered[k]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_rbf_median_small_n(n: int) -> None:
    """np.median over the full N×N matrix (zero diagonal, odd and even N²), for tiny N."""
    x = rand(n, 2, seed=n)
    y = rand(n, 3, seed=n + 1)
    got = float(AF.cka(t64(x), t64(y), kernel="rbf"))
    want = cka_ref(gram_rbf_ref(x), gram_rbf_ref(y)) if n > 1 else 0.0
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_batch_of_one_and_two(kernel: str) -> None:
    one = AF.cka(torch.randn(1, 4), torch.randn(1, 3), kernel=kernel)
    assert float(one) == 0.0
    # Two samples: both centred Grams are multiples of [[1, −1], [−1, 1]] → CKA 1.
    two = AF.cka(torch.randn(2, 4), torch.randn(2, 3), kernel=kernel)
    assert float(two) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="x must have at least 4 rows"):
        AF.cka(torch.randn(3, 4), torch.randn(3, 3), kernel=kernel, unbiased=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("kernel", "unbiased", "n"), [("linear", False, 64), ("linear", True, 16), ("rbf", False, 40)]
)
def test_half_precision(dtype: torch.dtype, kernel: str, unbiased: bool, n: int) -> None:
    x, y = related(n, 24, 20, noise=2.0, seed=1)
    xh, yh = torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)
    got = AF.cka(xh, yh, kernel=kernel, unbiased=unbiased)
    want = AF.cka(xh.float(), yh.float(), kernel=kernel, unbiased=unbiased)
    assert got.dtype == dtype and torch.isfinite(got)
    assert float(got) == pytest.approx(float(want), abs=1e-2)


@pytest.mark.parametrize(
    ("kernel", "unbiased", "n", "dx"),
    [("linear", False, 10, 3), ("linear", True, 10, 3), ("linear", False, 5, 7), ("linear", True, 6, 7),
     ("rbf", False, 9, 3), ("rbf", True, 8, 2)],
)  # fmt: skip
def test_gradcheck(kernel: str, unbiased: bool, n: int, dx: int) -> None:
    x = torch.randn(n, dx, dtype=torch.float64, requires_grad=True)
    y = x.detach() @ torch.randn(dx, 4, dtype=torch.float64) + torch.randn(n, 4, dtype=torch.float64)
    y.requires_grad_()
    fn = lambda a, b: AF.cka(a, b, kernel=kernel, unbiased=unbiased, threshold=0.8)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, y))


def test_gradcheck_row_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(similarity, "_BLOCK_ELEMENTS", 24)  # 3 rows per block, checkpointed
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    for unbiased in (False, True):
        assert torch.autograd.gradcheck(lambda a, b, u=unbiased: AF.cka(a, b, "rbf", u), (x, y))


def test_cka_bad_input() -> None:
    x, y = torch.randn(10, 3), torch.randn(10, 4)
    with pytest.raises(ValueError, match="x and y must have the same number of rows"):
        AF.cka(x, torch.randn(9, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\), got \(10,\)"):
        AF.cka(torch.randn(10), y)
    bad = y.clone()
    bad[1, 1] = math.nan
    with pytest.raises(ValueError, match="y has 1 non-finite"):
        AF.cka(x, bad)
    with pytest.raises(ValueError, match="kernel"):
        AF.cka(x, y, kernel="cosine")
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="threshold"):
            AF.cka(x, y, kernel="rbf", threshold=bad)
    with pytest.raises(ValueError, match="unbiased"):
        AF.cka(x, y, unbiased="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating"):
        AF.cka(torch.ones(10, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="one device"):
        AF.cka(x, torch.empty(10, 4, device="meta"))


# --------------------------------------------------------------------------------------------------
# CKALoss


def test_cka_loss_module() -> None:
    x, y = torch.randn(50, 6), torch.randn(50, 5)
    for kwargs in ({}, {"kernel": "rbf", "threshold": 0.5}, {"unbiased": True}):
        module = losses.build("cka", **kwargs)
        assert isinstance(module, losses.CKALoss)
        torch.testing.assert_close(module(x, y), 1 - AF.cka(x, y, **kwargs))
    assert "kernel='rbf'" in repr(losses.CKALoss(kernel="rbf"))
    with pytest.raises(ValueError, match="kernel"):
        losses.CKALoss(kernel="poly")
    with pytest.raises(ValueError, match="threshold"):
        losses.CKALoss(threshold=0)
    with pytest.raises(ValueError, match="unbiased"):
        losses.CKALoss(unbiased=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{}, {"kernel": "rbf"}, {"unbiased": True}, {"kernel": "rbf", "unbiased": True}]
)
@pytest.mark.parametrize("n", [64, 6])
def test_cka_loss_gradients_finite(kwargs: dict, n: int) -> None:
    criterion = losses.CKALoss(**kwargs)
    x = torch.randn(n, 8, requires_grad=True)
    loss = criterion(x, x.detach().clone())  # CKA = 1
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5) and torch.isfinite(x.grad).all()
    assert float(x.grad.abs().max()) < 1e-3  # a maximum of CKA: gradient ~0
    x.grad = None
    loss = criterion(x, torch.randn(n, 8))  # independent: CKA near 0 for the unbiased estimator
    loss.backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().max()) > 0


def test_cka_loss_descends() -> None:
    """A few gradient steps on 1 − CKA raise CKA towards a fixed target."""
    target = torch.randn(80, 6)
    x = torch.randn(80, 6, requires_grad=True)
    criterion = losses.CKALoss()
    opt = torch.optim.SGD([x], lr=20.0)
    start = float(criterion(x, target).detach())
    for _ in range(30):
        opt.zero_grad()
        criterion(x, target).backward()
        opt.step()
    assert float(criterion(x, target).detach()) < start - 0.2


# --------------------------------------------------------------------------------------------------
# CCA family


def test_canonical_correlations_match_covariance_reference() -> None:
    x, y = related(120, 5, 4, noise=3.0, seed=2)
    got = AF.canonical_correlations(t64(x), t64(y))
    want, _ = cca_ref(x, y)
    assert got.shape == (4,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    assert torch.all(got[:-1] >= got[1:])


def test_canonical_correlations_match_sklearn() -> None:
    from sklearn.cross_decomposition import CCA

    rng = np.random.default_rng(0)
    z = rng.standard_normal((400, 2))
    x = np.hstack([z, rng.standard_normal((400, 2))]) @ rng.standard_normal((4, 4))
    y = np.hstack([z * [1.0, 0.4], rng.standard_normal((400, 1))]) + 0.5 * rng.standard_normal((400, 3))
    model = CCA(n_components=2, scale=False, max_iter=5000, tol=1e-12).fit(x, y)
    xs, ys = model.transform(x, y)
    sk = [abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(2)]
    got = AF.canonical_correlations(t64(x), t64(y))
    np.testing.assert_allclose(got[:2].numpy(), sk, atol=1e-6)


def test_canonical_correlations_rank_deficient_and_ridge() -> None:
    x, y = related(60, 4, 3, noise=2.0, seed=8)
    dup = np.hstack([x, x[:, :2] * 2 - 1])  # two exactly dependent columns
    got = AF.canonical_correlations(t64(dup), t64(y))
    want, _ = cca_ref(x, y)
    assert got.shape == (3,) and torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)
    ridge = AF.canonical_correlations(t64(x), t64(y), eps=0.1)
    np.testing.assert_allclose(ridge.numpy(), cca_ref(x, y, ridge=0.1)[0], atol=1e-10)
    assert torch.all(ridge < got)
    # y spans fewer directions than min(d_x, d_y): the missing ones are 0.
    low = np.hstack([y[:, :1], 3 * y[:, :1]])
    padded = AF.canonical_correlations(t64(x), t64(low))
    assert padded.shape == (2,) and float(padded[1]) == 0.0


@pytest.mark.parametrize("keep", [0.99, 0.8, 3, 10])
def test_svcca_matches_reference(keep: float) -> None:
    x, y = related(150, 8, 6, noise=1.5, seed=4)
    got = AF.svcca(t64(x), t64(y), keep=keep)
    want = svcca_ref(x, y, keep)  # an int beyond the width keeps every direction (slicing)
    assert float(got) == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("keep", [0.99, 1.0, 5])
def test_svcca_gram_path_equals_the_svd_path(keep: float) -> None:
    """N ≥ 4·(d_x + d_y) without autograd takes the spectra from the Gram matrices (no (N, k) matrix);
    with autograd the thin SVDs: the same value, also for a rank-deficient side and float32 input."""
    x, y = related(1200, 12, 9, noise=1.0, seed=11)
    x = np.hstack([x, x[:, :3] @ np.ones((3, 2))])  # two exactly dependent columns
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        xt, yt = torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)
        gram = float(AF.svcca(xt, yt, keep=keep))
        svd = float(AF.svcca(xt.clone().requires_grad_(), yt, keep=keep).detach())
        assert gram == pytest.approx(svd, abs=tol)
    full_rank = float(AF.svcca(t64(x[:, :12]), t64(y), keep=keep))  # the Gram path against the reference
    assert full_rank == pytest.approx(svcca_ref(x[:, :12], y, keep), abs=1e-9)


def test_pwcca_matches_references() -> None:
    x, y = related(150, 5, 7, noise=2.0, seed=6)
    got = float(AF.pwcca(t64(x), t64(y)))
    assert got == pytest.approx(pwcca_ref(x, y), abs=1e-10)
    xc = x - x.mean(0)  # the released code uses raw activations: equal for centred x, d_x ≤ d_y
    assert float(AF.pwcca(t64(xc), t64(y))) == pytest.approx(morcos_compute_pwcca(xc.T, y.T), abs=1e-10)
    # Weighted towards the strongly correlated directions, so different from the plain mean.
    assert abs(got - float(AF.canonical_correlations(t64(x), t64(y)).mean())) > 1e-3


@pytest.mark.parametrize("fn", [AF.svcca, AF.pwcca])
def test_cca_metrics_invariances_and_edge_cases(fn: Callable[..., torch.Tensor]) -> None:
    x, y = related(80, 6, 5, noise=1.0, seed=9)
    base = float(fn(t64(x), t64(y)))
    assert 0 < base < 1
    assert float(fn(t64(2.5 * x + 4), t64(y - 1))) == pytest.approx(base, abs=1e-9)
    q = orthogonal(6, seed=2)
    rotated = float(fn(t64(x @ q), t64(y)))
    if fn is AF.svcca:
        assert rotated == pytest.approx(base, abs=1e-9)
    else:  # PWCCA's weights sum |⟨h_i, x_j⟩| over x's own neurons: not rotation-invariant
        assert abs(rotated - base) > 1e-4
    assert float(fn(t64(x), t64(x @ orthogonal(6, seed=5)))) == pytest.approx(1.0, abs=1e-9)
    assert float(fn(torch.full((80, 6), 0.3, dtype=torch.float64), t64(y))) == 0.0
    assert float(fn(torch.randn(1, 3), torch.randn(1, 2))) == 0.0
    assert float(fn(torch.randn(2, 3), torch.randn(2, 2))) == pytest.approx(1.0, abs=1e-5)
    for dtype in (torch.float16, torch.bfloat16):
        half = fn(t64(x).to(dtype), t64(y).to(dtype))
        assert half.dtype == dtype and float(half) == pytest.approx(base, abs=2e-2)


def test_cca_bad_input() -> None:
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    for fn in (AF.svcca, AF.pwcca, AF.canonical_correlations):
        with pytest.raises(ValueError, match="same number of rows"):
            fn(x, torch.randn(11, 2))
        with pytest.raises(ValueError, match="y must have shape"):
            fn(x, torch.randn(10))
        with pytest.raises(ValueError, match="x has 1 non-finite"):
            fn(x.index_put((torch.tensor([2]), torch.tensor([1])), torch.tensor(math.inf)), y)
    for keep in (0, 0.0, -0.5, 1.5, True, "all", math.nan):
        with pytest.raises(ValueError, match="keep"):
            AF.svcca(x, y, keep=keep)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        AF.canonical_correlations(x, y, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        AF.pwcca(x, y, eps=math.nan)


# --------------------------------------------------------------------------------------------------
# Procrustes


@pytest.mark.parametrize(("n", "dx", "dy"), [(50, 6, 6), (50, 4, 7), (8, 12, 20), (9, 3, 15)])
def test_procrustes_matches_scipy(n: int, dx: int, dy: int) -> None:
    x, y = related(n, dx, dy, noise=2.0, seed=n + dy)
    got = AF.procrustes_distance(t64(x), t64(y))
    assert got.dtype == torch.float64 and 0 < float(got) < 2
    assert float(got) == pytest.approx(procrustes_ref(x, y), abs=1e-10)


def test_procrustes_chunked_moments_equal_the_centred_copies() -> None:
    """Without autograd (N > d) the moments come from row chunks in float64; with autograd from centred
    copies: the same distance, float64 and float32, over more rows than one chunk."""
    x, y = related(9000, 10, 7, noise=1.0, seed=12)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        xt, yt = torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype)
        chunked = float(AF.procrustes_distance(xt, yt))
        copies = float(AF.procrustes_distance(xt.clone().requires_grad_(), yt).detach())
        assert chunked == pytest.approx(copies, abs=tol)
    assert float(AF.procrustes_distance(t64(x), t64(y))) == pytest.approx(procrustes_ref(x, y), abs=1e-10)


def test_procrustes_zero_for_rotated_copies() -> None:
    x = rand(40, 5, seed=1)
    q = orthogonal(5, seed=3)
    assert float(AF.procrustes_distance(t64(x), t64(3 * x @ q + 1))) == pytest.approx(0, abs=1e-12)
    embed = orthogonal(8, seed=4)[:5]  # (5, 8), orthonormal rows: isometric embedding into 8 dims
    assert float(AF.procrustes_distance(t64(x), t64(x @ embed))) == pytest.approx(0, abs=1e-12)
    far = float(AF.procrustes_distance(t64(x), t64(rand(40, 5, seed=9))))
    assert far > 0.5


def test_procrustes_edge_cases_and_gradients() -> None:
    y = torch.randn(10, 3, dtype=torch.float64)
    assert float(AF.procrustes_distance(torch.full((10, 4), 0.2, dtype=torch.float64), y)) == 2.0
    assert float(AF.procrustes_distance(torch.randn(1, 3), torch.randn(1, 2))) == 2.0
    assert float(AF.procrustes_distance(torch.randn(2, 3), torch.randn(2, 2))) == pytest.approx(0, abs=1e-6)
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(AF.procrustes_distance, (x, y.clone().requires_grad_()))
    const = torch.full((10, 4), 0.2, requires_grad=True)
    AF.procrustes_distance(const, y.float()).backward()
    assert torch.isfinite(const.grad).all()
    xn, yn = related(30, 5, 4, seed=3)
    for dtype in (torch.float16, torch.bfloat16):
        got = AF.procrustes_distance(t64(xn).to(dtype), t64(yn).to(dtype))
        assert got.dtype == dtype and float(got) == pytest.approx(procrustes_ref(xn, yn), abs=2e-2)
    with pytest.raises(ValueError, match="same number of rows"):
        AF.procrustes_distance(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        AF.procrustes_distance(torch.randn(5, 2, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="non-finite"):
        AF.procrustes_distance(torch.randn(5, 2), torch.tensor([[math.nan, 0.0]] * 5))


# --------------------------------------------------------------------------------------------------
# RSA


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_rsa_matches_scipy(metric: str, method: str) -> None:
    x, y = related(40, 6, 5, noise=2.0, seed=12)
    got = AF.rsa(t64(x), t64(y), metric=metric, method=method)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(rsa_ref(x, y, metric, method), abs=1e-10)


def test_rsa_ties_row_blocks_and_constant_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (30, 4)).astype(float)  # many tied distances
    y = x[:, :2] + rng.integers(0, 2, (30, 2))
    want = rsa_ref(x, y, "euclidean", "spearman")
    monkeypatch.setattr(similarity, "_BLOCK_ELEMENTS", 60)  # 2 rows per block
    assert float(AF.rsa(t64(x), t64(y), metric="euclidean")) == pytest.approx(want, abs=1e-12)
    # Constant rows have no correlation distance in scipy (NaN); here dissimilarity 1, finite.
    xc = x.copy()
    xc[0] = 2.0
    assert torch.isfinite(AF.rsa(t64(xc), t64(y)))
    assert float(AF.rsa(torch.ones(5, 3), torch.randn(5, 2), metric="euclidean")) == 0.0


def test_rsa_gradients_dtypes_and_bad_input() -> None:
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    for metric in ("correlation", "euclidean"):
        assert torch.autograd.gradcheck(lambda a, b, m=metric: AF.rsa(a, b, m, "pearson"), (x, y))
    xn, yn = related(25, 6, 5, noise=1.0, seed=2)
    for dtype in (torch.float16, torch.bfloat16):
        got = AF.rsa(t64(xn).to(dtype), t64(yn).to(dtype))
        assert got.dtype == dtype and float(got) == pytest.approx(
            rsa_ref(xn, yn, "correlation", "spearman"), abs=3e-2
        )
    for n in (1, 2):
        with pytest.raises(ValueError, match="x must have at least 3 rows"):
            AF.rsa(torch.randn(n, 3), torch.randn(n, 3))
    with pytest.raises(ValueError, match="metric"):
        AF.rsa(torch.randn(5, 3), torch.randn(5, 3), metric="cosine")
    with pytest.raises(ValueError, match="method"):
        AF.rsa(torch.randn(5, 3), torch.randn(5, 3), method="kendall")
    with pytest.raises(ValueError, match="same number of rows"):
        AF.rsa(torch.randn(5, 3), torch.randn(6, 3))


def test_hsic_from_kernel_sums_matches_the_matrix_formulas() -> None:
    """Biased: tr(KHLH)/(n−1)²; unbiased: Song et al. 2012's HSIC₁ written with explicit matrices."""
    n = 9
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(n, 3, generator=g, dtype=torch.float64),
        torch.randn(n, 4, generator=g, dtype=torch.float64),
    )
    k, l_ = x @ x.T, torch.exp(-(torch.cdist(y, y) ** 2))
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    biased = torch.trace(k @ h @ l_ @ h) / (n - 1) ** 2
    got = AF.hsic_from_kernel_sums((k * l_).sum(), k.sum(1), l_.sum(1), n, unbiased=False)
    assert float(got) == pytest.approx(float(biased), rel=1e-12)
    kt, lt = k - torch.diag(torch.diag(k)), l_ - torch.diag(torch.diag(l_))
    one = torch.ones(n, 1, dtype=torch.float64)
    song = (
        torch.trace(kt @ lt)
        + (one.T @ kt @ one) * (one.T @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one.T @ kt @ lt @ one)
    ) / (n * (n - 3))
    got = AF.hsic_from_kernel_sums((kt * lt).sum(), kt.sum(1), lt.sum(1), n, unbiased=True)
    assert float(got) == pytest.approx(float(song), rel=1e-12)
