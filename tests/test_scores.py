"""alignkit.functional.scores: distances and scores against loop references and torch.cdist."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.functional.scores import paired_distance, pairwise_distance, score

# --------------------------------------------------------------------------------------------------
# Slow references: Python floats over .tolist(), one pair at a time.


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def _norm(u: list[float]) -> float:
    return math.sqrt(_dot(u, u))


def _ref_distance(u: list[float], v: list[float], metric: str) -> float:
    if metric == "euclidean":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))
    if metric == "squared":
        return sum((a - b) ** 2 for a, b in zip(u, v, strict=True))
    if metric == "cosine":
        nu, nv = _norm(u), _norm(v)
        return 1.0 - (_dot(u, v) / (nu * nv) if nu > 0 and nv > 0 else 0.0)
    return -_dot(u, v)


def _ref_score(u: list[float], v: list[float], kind: str, a: list[list[float]] | None = None) -> float:
    if kind == "dot":
        return _dot(u, v)
    if kind == "cosine":
        return 1.0 - _ref_distance(u, v, "cosine")
    if kind == "l1":
        return -sum(abs(x - y) for x, y in zip(u, v, strict=True))
    if kind == "l2":
        return -_ref_distance(u, v, "euclidean")
    assert a is not None
    return sum(u[i] * a[i][j] * v[j] for i in range(len(u)) for j in range(len(v)))


METRICS = ["euclidean", "squared", "cosine", "dot"]
KINDS = ["dot", "cosine", "l1", "l2"]


# --------------------------------------------------------------------------------------------------
# pairwise_distance


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_matches_loop(metric: str) -> None:
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.randn(4, 5, dtype=torch.float64)
    y[0] = 0.0  # a zero vector: cosine distance 1, no NaN
    expected = [[_ref_distance(u, v, metric) for v in y.tolist()] for u in x.tolist()]
    got = pairwise_distance(x, y, metric=metric)
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_pairwise_euclidean_matches_cdist_values_and_gradients() -> None:
    x = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    y = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    ours = pairwise_distance(x, y)
    peer = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(ours, peer)
    weights = torch.randn(30, 40, dtype=torch.float64)
    g_ours = torch.autograd.grad((ours * weights).sum(), (x, y))
    g_peer = torch.autograd.grad((peer * weights).sum(), (x, y))
    for a, b in zip(g_ours, g_peer, strict=True):
        torch.testing.assert_close(a, b)


def test_pairwise_euclidean_float32_is_close_to_cdist() -> None:
    x, y = torch.randn(50, 32) * 3, torch.randn(20, 32) * 3
    torch.testing.assert_close(pairwise_distance(x, y), torch.cdist(x, y), atol=1e-4, rtol=1e-5)


def test_self_distance_has_exact_zero_diagonal_and_is_symmetric() -> None:
    x = torch.randn(25, 8) * 100  # large norms: the expansion's rounding is far above zero
    for d in (pairwise_distance(x), pairwise_distance(x, x)):
        assert torch.equal(d.diagonal(), torch.zeros(25))
        torch.testing.assert_close(d, d.T)
    assert torch.equal(pairwise_distance(x, metric="squared").diagonal(), torch.zeros(25))


@pytest.mark.parametrize("metric", ["euclidean", "squared"])
def test_gradient_is_finite_at_zero_distance(metric: str) -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    x[3] = x[1]  # a duplicated row: zero distance off the diagonal too
    x.requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    pairwise_distance(x, y, metric=metric).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    x.grad = None
    paired_distance(x, x.detach(), metric=metric).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # the subgradient 0 at a minimum


def test_pairwise_gradcheck_away_from_zero() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for metric in METRICS:
        assert torch.autograd.gradcheck(lambda a, b, m=metric: pairwise_distance(a, b, metric=m), (x, y))


# --------------------------------------------------------------------------------------------------
# paired_distance


@pytest.mark.parametrize("metric", METRICS)
def test_paired_distance_matches_loop_and_pairwise_diagonal(metric: str) -> None:
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randn(7, 4, dtype=torch.float64)
    expected = torch.tensor(
        [_ref_distance(u, v, metric) for u, v in zip(x.tolist(), y.tolist(), strict=True)]
    )
    got = paired_distance(x, y, metric=metric)
    torch.testing.assert_close(got, expected.to(torch.float64))
    torch.testing.assert_close(got, pairwise_distance(x, y, metric=metric).diagonal())


# --------------------------------------------------------------------------------------------------
# score


@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_loop(kind: str) -> None:
    q = torch.randn(6, 5, dtype=torch.float64)
    k = torch.randn(6, 5, dtype=torch.float64)
    q[2] = 0.0
    expected = [_ref_score(u, v, kind) for u, v in zip(q.tolist(), k.tolist(), strict=True)]
    torch.testing.assert_close(score(q, k, kind=kind), torch.tensor(expected, dtype=torch.float64))


def test_bilinear_score_matches_loop_with_rectangular_weight() -> None:
    q = torch.randn(5, 3, dtype=torch.float64)
    k = torch.randn(5, 4, dtype=torch.float64)
    a = torch.randn(3, 4, dtype=torch.float64)
    expected = [_ref_score(u, v, "bilinear", a.tolist()) for u, v in zip(q.tolist(), k.tolist(), strict=True)]
    torch.testing.assert_close(score(q, k, "bilinear", weight=a), torch.tensor(expected, dtype=torch.float64))
    # the identity weight is the dot product
    k3 = torch.randn(5, 3, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(score(q, k3, "bilinear", weight=eye), score(q, k3, "dot"))


@pytest.mark.parametrize("kind", [*KINDS, "bilinear"])
def test_score_broadcasts_leading_dims(kind: str) -> None:
    q = torch.randn(4, 3, dtype=torch.float64)
    negatives = torch.randn(4, 6, 3, dtype=torch.float64)
    a = torch.randn(3, 3, dtype=torch.float64) if kind == "bilinear" else None
    got = score(q[:, None], negatives, kind, weight=a)
    assert got.shape == (4, 6)
    ref_a = a.tolist() if a is not None else None
    for i in range(4):
        for m in range(6):
            expected = _ref_score(q[i].tolist(), negatives[i, m].tolist(), kind, ref_a)
            assert math.isclose(float(got[i, m]), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_score_l2_and_l1_gradients_finite_at_equal_rows() -> None:
    q = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    for kind in ("l1", "l2"):
        q.grad = None
        score(q, q.detach(), kind).sum().backward()
        assert torch.isfinite(q.grad).all()


# --------------------------------------------------------------------------------------------------
# Validation and dtypes


def test_bad_arguments_raise_value_errors_naming_them() -> None:
    x, y = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(x, y, metric="manhattan")
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\), got \(4,\)"):
        pairwise_distance(x[:, 0], y)
    with pytest.raises(ValueError, match="feature size"):
        pairwise_distance(x, torch.randn(5, 2))
    with pytest.raises(ValueError, match="y has 1 non-finite"):
        pairwise_distance(x, torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match=r"same shape, got \(4, 3\) and \(5, 3\)"):
        paired_distance(x, y)
    with pytest.raises(ValueError, match="kind"):
        score(x, x, kind="hamming")
    with pytest.raises(ValueError, match=r"needs weight.*\(3, 3\)"):
        score(x, x, kind="bilinear")
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 2\)"):
        score(x, torch.randn(4, 2), kind="bilinear", weight=torch.randn(2, 3))
    with pytest.raises(ValueError, match="only used with kind='bilinear'"):
        score(x, x, kind="dot", weight=torch.eye(3))
    with pytest.raises(ValueError, match="feature size"):
        score(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="must broadcast"):
        score(x, y)
    with pytest.raises(ValueError, match="k must be a floating-point tensor"):
        score(x, torch.ones(4, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_half_precision_out_close_to_float32(dtype: torch.dtype) -> None:
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    for fn in (
        lambda a, b, m: pairwise_distance(a, b, metric=m),
        lambda a, b, m: paired_distance(a, b, metric=m),
    ):
        for metric in METRICS:
            ref = fn(x, y, metric)
            got = fn(x.to(dtype), y.to(dtype), metric)
            assert got.dtype == dtype and torch.isfinite(got).all()
            torch.testing.assert_close(got.float(), ref, atol=0.1, rtol=0.05)
    for kind in KINDS:
        got = score(x.to(dtype), y.to(dtype), kind)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), score(x, y, kind), atol=0.1, rtol=0.05)
    # mixed dtypes: the promoted dtype
    assert pairwise_distance(x.to(dtype), y.double()).dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), d=st.integers(1, 6), scale=st.floats(1e-3, 1e3))
def test_distance_properties(seed: int, n: int, d: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    eu = pairwise_distance(x, y)
    assert (eu >= 0).all()
    torch.testing.assert_close(eu, torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist"),
                               atol=1e-9 * scale, rtol=1e-7)  # fmt: skip
    torch.testing.assert_close(pairwise_distance(y, x), eu.T)
    cos = pairwise_distance(x, y, metric="cosine")
    assert ((cos >= -1e-12) & (cos <= 2 + 1e-12)).all()
    # cosine distance and cosine score ignore positive scaling
    torch.testing.assert_close(pairwise_distance(3.5 * x, y, metric="cosine"), cos)
    torch.testing.assert_close(score(x, 0.25 * y, "cosine"), score(x, y, "cosine"))
