"""Neighbour metrics (knn, mutual_knn, cknna, csls) against slow float64 references written here."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

import alignkit.functional as AF
import alignkit.functional.neighbors as neighbors

# --------------------------------------------------------------------------------------------------
# References (float64, loops / explicit matrices)


def cos64(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Explicit cosine matrix in float64; a zero row has cosine 0 with everything."""
    b = a if b is None else b
    a, b = a.double(), b.double()
    na = a.norm(dim=1).clamp_min(1e-8)
    nb = b.norm(dim=1).clamp_min(1e-8)
    return (a @ b.T) / (na[:, None] * nb[None, :])


def scores64(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Higher is nearer: cosine, dot, or minus the euclidean distance (by broadcasting, not expansion)."""
    if metric == "cosine":
        return cos64(a, b)
    if metric == "dot":
        return a.double() @ b.double().T
    return -((a.double()[:, None, :] - b.double()[None, :, :]) ** 2).sum(-1).sqrt()


def neighbour_lists(scores: torch.Tensor, k: int, exclude_self: bool) -> list[list[int]]:
    """Row-wise k best columns by sorting each row in Python."""
    out = []
    for i, row in enumerate(scores.tolist()):
        cand = [j for j in range(len(row)) if not (exclude_self and j == i)]
        cand.sort(key=lambda j, row=row: -row[j])
        out.append(cand[:k])
    return out


def cknna_ref(x: torch.Tensor, y: torch.Tensor, k: int, unbiased: bool) -> float:
    """CKNNA from its definition (Huh et al. 2024 and platonic-rep's code), with Python loops."""
    n = x.shape[0]
    K, L = cos64(x).tolist(), cos64(y).tolist()
    nx = [set(r) for r in neighbour_lists(torch.tensor(K), k, exclude_self=unbiased)]
    ny = [set(r) for r in neighbour_lists(torch.tensor(L), k, exclude_self=unbiased)]

    def masked(S: list[list[float]], keep) -> list[list[float]]:
        return [[S[i][j] if keep(i, j) else 0.0 for j in range(n)] for i in range(n)]

    def hsic(A: list[list[float]], B: list[list[float]]) -> float:
        if unbiased:  # Song et al. 2012, eq. 5, on matrices with zero diagonal
            A = [[0.0 if i == j else A[i][j] for j in range(n)] for i in range(n)]
            B = [[0.0 if i == j else B[i][j] for j in range(n)] for i in range(n)]
            trace = sum(A[i][j] * B[j][i] for i in range(n) for j in range(n))
            sa = sum(map(sum, A))
            sb = sum(map(sum, B))
            col_a = [sum(A[i][j] for i in range(n)) for j in range(n)]
            row_b = [sum(B[j]) for j in range(n)]
            ab = sum(col_a[j] * row_b[j] for j in range(n))  # 1ᵀAB1
            return (trace + sa * sb / ((n - 1) * (n - 2)) - 2 * ab / (n - 2)) / (n * (n - 3))
        H = torch.eye(n, dtype=torch.float64) - 1.0 / n
        At, Bt = torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)
        return float(torch.trace(At @ H @ Bt @ H))

    kl = hsic(
        masked(K, lambda i, j: j in nx[i] and j in ny[i]), masked(L, lambda i, j: j in nx[i] and j in ny[i])
    )
    kk = hsic(masked(K, lambda i, j: j in nx[i]), masked(K, lambda i, j: j in nx[i]))
    ll = hsic(masked(L, lambda i, j: j in ny[i]), masked(L, lambda i, j: j in ny[i]))
    return kl / math.sqrt(kk * ll)


def csls_ref(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    C = cos64(x, y).tolist()
    n, m = len(C), len(C[0])
    r_src = [sum(sorted(C[i], reverse=True)[:k]) / k for i in range(n)]
    r_tgt = [sum(sorted((C[i][j] for i in range(n)), reverse=True)[:k]) / k for j in range(m)]
    return torch.tensor(
        [[2 * C[i][j] - r_src[i] - r_tgt[j] for j in range(m)] for i in range(n)], dtype=torch.float64
    )


def orthogonal(d: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    return q


# --------------------------------------------------------------------------------------------------
# knn


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("searched", ["self", "other"])
@pytest.mark.parametrize("chunk_size", [None, 1, 6])
def test_knn_matches_full_topk(metric: str, searched: str, chunk_size: int | None) -> None:
    x = torch.randn(37, 5, dtype=torch.float64)
    y = None if searched == "self" else torch.randn(29, 5, dtype=torch.float64)
    k = 4
    full = scores64(x, x if y is None else y, metric)
    if y is None:
        full.fill_diagonal_(-math.inf)
    ref = full.topk(k, dim=1)
    got = AF.knn(x, k, y=y, metric=metric, chunk_size=chunk_size, backend="torch")
    assert torch.equal(got.indices, ref.indices)
    expected = -ref.values if metric == "euclidean" else ref.values
    torch.testing.assert_close(got.values, expected, rtol=1e-12, atol=1e-12)
    # and the index sets agree with a sort done in Python
    assert got.indices.tolist() == neighbour_lists(full, k, exclude_self=False)


def test_knn_exclude_self_options() -> None:
    x = torch.randn(20, 4, dtype=torch.float64)
    y = x + 0.01 * torch.randn(20, 4, dtype=torch.float64)
    with_self = AF.knn(x, 3, exclude_self=False)
    assert torch.equal(with_self.indices[:, 0], torch.arange(20))  # each row is its own nearest
    torch.testing.assert_close(with_self.values[:, 0], torch.ones(20, dtype=torch.float64))
    # y given: nothing excluded by default; exclude_self=True drops column i (the same sample)
    assert torch.equal(AF.knn(x, 1, y=y).indices[:, 0], torch.arange(20))
    got = AF.knn(x, 3, y=y, exclude_self=True, metric="euclidean")
    full = scores64(x, y, "euclidean").fill_diagonal_(-math.inf)
    assert got.indices.tolist() == neighbour_lists(full, 3, exclude_self=False)
    # more queries than searched rows: rows i ≥ M have no self to exclude
    z = torch.randn(5, 4, dtype=torch.float64)
    got = AF.knn(x, 4, y=z, exclude_self=True)
    full = cos64(x, z)
    full[torch.arange(5), torch.arange(5)] = -math.inf
    assert got.indices.tolist() == neighbour_lists(full, 4, exclude_self=False)


def test_knn_euclidean_is_exact_with_offset() -> None:
    """Centring keeps float32 selection and distances right for features far from the origin."""
    x = torch.randn(300, 16, dtype=torch.float64) + 1000.0
    got = AF.knn(x.float(), 5, metric="euclidean", chunk_size=64)
    full = scores64(x, x, "euclidean").fill_diagonal_(-math.inf)
    ref = full.topk(5, dim=1)
    assert (got.indices == ref.indices).float().mean() > 0.99  # float32 near-ties may swap
    torch.testing.assert_close(got.values.double(), -ref.values, rtol=1e-5, atol=1e-4)
    assert bool((got.values[:, 1:] >= got.values[:, :-1]).all())


def test_knn_chunked_equals_unchunked_and_default_block(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = torch.randn(203, 24), torch.randn(150, 24)
    for metric in ("cosine", "euclidean"):
        whole = AF.knn(x, 7, y=y, metric=metric, chunk_size=10_000)
        for chunk in (1, 13, 64):
            part = AF.knn(x, 7, y=y, metric=metric, chunk_size=chunk)
            assert torch.equal(part.indices, whole.indices)
            torch.testing.assert_close(part.values, whole.values, rtol=1e-6, atol=1e-6)
    # chunk_size=None: (rows × tile columns) tiles of about _TILE_BYTES on the CPU, never below 1 row
    for m in (1_000, 100_000, 1_000_000):
        cols = neighbors._tile_cols(m, torch.device("cpu"))
        assert cols <= neighbors._TILE_COLS + 63 and (cols == m or cols % 64 == 0)
        rows = neighbors._tile_rows(m, torch.float32, torch.device("cpu"))
        assert neighbors._TILE_BYTES // 2 <= rows * cols * 4 <= neighbors._TILE_BYTES
    assert neighbors._default_block(10**9, torch.float32) == 1
    # the default really blocks: shrink the budget to 7 rows of 150 columns and watch the calls
    monkeypatch.setattr(neighbors, "_TILE_BYTES", 7 * 150 * 4)
    seen = []
    original = neighbors._blocked_topk

    def spy(a, b, k, block, **kw):
        seen.append(block)
        return original(a, b, k, block, **kw)

    monkeypatch.setattr(neighbors, "_blocked_topk", spy)
    blocked = AF.knn(x, 7, y=y, backend="torch")
    assert seen == [neighbors._balanced(203, 7, align=16)] and seen[0] < 203
    assert torch.equal(blocked.indices, AF.knn(x, 7, y=y, chunk_size=10_000).indices)


class _FakeIndex:
    """numpy brute force with faiss's IndexFlatIP / IndexFlatL2 interface (squared L2 distances)."""

    def __init__(self, d: int, kind: str) -> None:
        self.d, self.kind, self.base = d, kind, None

    def add(self, base: np.ndarray) -> None:
        assert base.dtype == np.float32 and base.flags["C_CONTIGUOUS"] and base.shape[1] == self.d
        self.base = base

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert query.dtype == np.float32 and query.flags["C_CONTIGUOUS"]
        q, b = query.astype(np.float64), self.base.astype(np.float64)
        if self.kind == "ip":
            s = q @ b.T
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        else:
            s = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
            order = np.argsort(s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, order, 1).astype(np.float32), order.astype(np.int64)


def _fake_faiss(calls: list[str]) -> types.SimpleNamespace:
    def flat(kind: str):
        def make(d: int) -> _FakeIndex:
            calls.append(kind)
            return _FakeIndex(d, kind)

        return make

    return types.SimpleNamespace(IndexFlatIP=flat("ip"), IndexFlatL2=flat("l2"))


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_knn_faiss_branch_with_fake_module(monkeypatch: pytest.MonkeyPatch, metric: str) -> None:
    calls: list[str] = []
    monkeypatch.setattr(neighbors, "_faiss", lambda: _fake_faiss(calls))
    x, y = torch.randn(40, 6), torch.randn(31, 6)
    for other, exclude in ((None, None), (y, False), (y, True)):
        calls.clear()
        got = AF.knn(x, 5, y=other, metric=metric, exclude_self=exclude)  # auto + CPU + float32 → faiss
        symmetric = other is None and metric != "euclidean"  # the half-work torch self-search instead
        assert calls == ([] if symmetric else ["l2" if metric == "euclidean" else "ip"])
        ref = AF.knn(x, 5, y=other, metric=metric, exclude_self=exclude, backend="torch")
        assert torch.equal(got.indices, ref.indices)
        torch.testing.assert_close(got.values, ref.values, rtol=1e-4, atol=1e-4)
        assert got.values.dtype == torch.float32 and got.indices.dtype == torch.int64
    calls.clear()
    AF.knn(x.double(), 5, metric=metric)  # float64 stays exact in torch under "auto"
    AF.knn(x, 5, metric=metric, backend="torch")
    assert calls == []
    forced = AF.knn(x.double(), 5, metric=metric, backend="faiss")
    assert calls and forced.values.dtype == torch.float64


def test_knn_faiss_self_dropped_with_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(neighbors, "_faiss", lambda: _fake_faiss(calls))
    base = torch.randn(4, 3)
    x = base.repeat(5, 1)  # every row has 4 exact duplicates: self is not always searched first
    got = AF.knn(x, 4, metric="euclidean")
    assert calls == ["l2"]
    assert not bool((got.indices == torch.arange(20)[:, None]).any())
    assert bool((got.indices % 4 == torch.arange(20)[:, None] % 4).all())  # the duplicates
    torch.testing.assert_close(got.values, torch.zeros(20, 4), atol=1e-3, rtol=0)


def test_knn_real_faiss_matches_torch() -> None:
    pytest.importorskip("faiss")
    x, y = torch.randn(300, 32), torch.randn(250, 32)
    for metric in ("cosine", "dot", "euclidean"):
        for other in (None, y):
            a = AF.knn(x, 10, y=other, metric=metric, backend="faiss")
            b = AF.knn(x, 10, y=other, metric=metric, backend="torch")
            assert (a.indices == b.indices).float().mean() > 0.99
            torch.testing.assert_close(a.values, b.values, rtol=1e-3, atol=1e-3)


def test_knn_zero_vectors_half_precision_and_small_batches() -> None:
    x = torch.randn(12, 8)
    x[3] = 0
    got = AF.knn(x, 3)
    assert torch.isfinite(got.values).all()
    torch.testing.assert_close(got.values[3], torch.zeros(3))  # a zero row has cosine 0 with all
    for metric in ("cosine", "dot", "euclidean"):
        ref = AF.knn(x, 3, metric=metric)
        for dtype in (torch.float16, torch.bfloat16):
            half = AF.knn(x.to(dtype), 3, metric=metric)
            assert half.values.dtype == dtype and torch.isfinite(half.values).all()
            # compare the half result's own neighbours against the float32 scores of those pairs
            torch.testing.assert_close(half.values.float(), ref.values, rtol=0.05, atol=0.05)
    two = torch.randn(2, 3)
    assert AF.knn(two, 1).indices.tolist() == [[1], [0]]
    one = AF.knn(torch.randn(1, 3), 1, y=two)
    assert one.indices.shape == (1, 1)


def test_knn_bad_input() -> None:
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 9\]"):
        AF.knn(x, 10)  # k ≥ N with self excluded
    with pytest.raises(ValueError, match="k must be"):
        AF.knn(x, 0)
    with pytest.raises(ValueError, match="k must be"):
        AF.knn(x, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        AF.knn(x, 11, y=x)
    with pytest.raises(ValueError, match="metric must be one of"):
        AF.knn(x, 2, metric="manhattan")
    with pytest.raises(ValueError, match="backend must be one of"):
        AF.knn(x, 2, backend="annoy")
    with pytest.raises(ValueError, match=r"x and y must have the same feature width d.*\(10, 4\).*\(5, 3\)"):
        AF.knn(x, 2, y=torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\)"):
        AF.knn(torch.randn(10), 2)
    with pytest.raises(ValueError, match=r"x has 4 non-finite value\(s\)"):
        AF.knn(torch.cat([x, torch.full((1, 4), math.nan)]), 2)
    with pytest.raises(ValueError, match="chunk_size must be"):
        AF.knn(x, 2, chunk_size=0)
    with pytest.raises(ValueError, match="x must have at least 2 row"):
        AF.knn(torch.randn(1, 4), 1)
    with pytest.raises(ValueError, match="y must have at least 2 row"):
        AF.knn(x, 1, y=torch.randn(1, 4), exclude_self=True)
    if neighbors._faiss() is None:
        with pytest.raises(ValueError, match="backend='faiss' needs faiss-cpu"):
            AF.knn(x, 2, backend="faiss")


# --------------------------------------------------------------------------------------------------
# mutual_knn


@pytest.mark.parametrize("k", [1, 3, 7])
def test_mutual_knn_matches_loop(k: int) -> None:
    x = torch.randn(30, 6, dtype=torch.float64)
    y = x @ torch.randn(6, 9, dtype=torch.float64) + 0.8 * torch.randn(30, 9, dtype=torch.float64)
    nx = neighbour_lists(cos64(x), k, exclude_self=True)
    ny = neighbour_lists(cos64(y), k, exclude_self=True)
    ref = sum(len(set(a) & set(b)) / k for a, b in zip(nx, ny, strict=True)) / 30
    assert 0 < ref < 1
    got = AF.mutual_knn(x, y, k=k)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert float(got) == pytest.approx(ref, abs=1e-12)
    assert float(AF.mutual_knn(x, y, k=k, chunk_size=4)) == pytest.approx(ref, abs=1e-12)
    for metric in ("dot", "euclidean"):
        nx = neighbour_lists(scores64(x, x, metric), k, exclude_self=True)
        ny = neighbour_lists(scores64(y, y, metric), k, exclude_self=True)
        ref = sum(len(set(a) & set(b)) / k for a, b in zip(nx, ny, strict=True)) / 30
        assert float(AF.mutual_knn(x, y, k=k, metric=metric)) == pytest.approx(ref, abs=1e-12)


def test_mutual_knn_identical_rotated_and_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(300, 16, dtype=torch.float64)
    assert float(AF.mutual_knn(x, x, k=10)) == 1.0
    scaled = (x @ orthogonal(16)) * torch.rand(300, 1, dtype=torch.float64).add(0.5)  # cosine-invariant
    assert float(AF.mutual_knn(x, scaled, k=10)) == pytest.approx(1.0)
    independent = float(AF.mutual_knn(x, torch.randn(300, 16, dtype=torch.float64), k=10))
    assert independent == pytest.approx(10 / 299, abs=0.012)
    # the overlap count is blocked over rows; force small blocks
    monkeypatch.setattr(neighbors, "_OVERLAP_ELEMENTS", 3 * 100)
    assert float(AF.mutual_knn(x, scaled, k=10)) == pytest.approx(1.0)


def test_mutual_knn_small_zero_half_and_bad_input() -> None:
    assert float(AF.mutual_knn(torch.randn(2, 3), torch.randn(2, 5), k=1)) == 1.0
    x, y = torch.randn(20, 4), torch.randn(20, 6)
    x[0] = 0
    assert torch.isfinite(AF.mutual_knn(x, y, k=3))
    half = AF.mutual_knn(x.half(), y.half(), k=3)
    assert half.dtype == torch.float16
    assert float(half) == pytest.approx(float(AF.mutual_knn(x, y, k=3)), abs=0.05)
    with pytest.raises(ValueError, match="x and y must have the same number of rows"):
        AF.mutual_knn(x, torch.randn(19, 6))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 19\]"):
        AF.mutual_knn(x, y, k=20)
    with pytest.raises(ValueError, match="x must have at least 2 row"):
        AF.mutual_knn(torch.randn(1, 3), torch.randn(1, 3), k=1)
    with pytest.raises(ValueError, match=r"y must be a torch\.Tensor"):
        AF.mutual_knn(x, y.numpy(), k=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# cknna


@pytest.mark.parametrize(
    ("unbiased", "k"), [(True, 1), (True, 4), (True, 9), (True, 23), (False, 1), (False, 5)]
)
def test_cknna_matches_definition(unbiased: bool, k: int) -> None:
    x = torch.randn(24, 5, dtype=torch.float64)
    y = x @ torch.randn(5, 7, dtype=torch.float64) + torch.randn(24, 7, dtype=torch.float64)
    ref = cknna_ref(x, y, k, unbiased)
    got = AF.cknna(x, y, k=k, unbiased=unbiased)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert float(got) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert float(AF.cknna(x, y, k=k, unbiased=unbiased, chunk_size=5)) == pytest.approx(ref, rel=1e-9)


def test_cknna_full_neighbourhood_is_unbiased_cka_of_normalised_features() -> None:
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)
    y = y + x[:, :3]
    K, L = cos64(x), cos64(y)
    n = 40

    def hsic_u(A: torch.Tensor, B: torch.Tensor) -> float:
        A, B = A.clone().fill_diagonal_(0), B.clone().fill_diagonal_(0)
        value = (A * B.T).sum() + A.sum() * B.sum() / ((n - 1) * (n - 2)) - 2 * (A @ B).sum() / (n - 2)
        return float(value / (n * (n - 3)))

    ref = hsic_u(K, L) / math.sqrt(hsic_u(K, K) * hsic_u(L, L))
    assert float(AF.cknna(x, y, k=n - 1)) == pytest.approx(ref, rel=1e-10)


def test_cknna_identity_invariances_and_independence() -> None:
    x = torch.randn(200, 12, dtype=torch.float64)
    assert float(AF.cknna(x, x, k=10)) == pytest.approx(1.0, abs=1e-12)
    assert float(AF.cknna(x, x, k=10, unbiased=False)) == pytest.approx(1.0, abs=1e-12)
    y = x[:, :8] + 0.5 * torch.randn(200, 8, dtype=torch.float64)
    base = float(AF.cknna(x, y, k=10))
    moved = (x @ orthogonal(12)) * torch.rand(200, 1, dtype=torch.float64).add(0.5)
    assert float(AF.cknna(moved, y, k=10)) == pytest.approx(base, rel=1e-9)
    indep = float(AF.cknna(x, torch.randn(200, 8, dtype=torch.float64), k=10))
    assert abs(indep) < 0.25 < base


def test_cknna_zero_small_half_and_bad_input() -> None:
    x, y = torch.randn(30, 5), torch.randn(30, 4)
    x[2] = 0
    assert torch.isfinite(AF.cknna(x, y, k=5))
    assert float(AF.cknna(torch.zeros(30, 5), y, k=5)) == 0.0  # constant side: denominator 0
    four = AF.cknna(torch.randn(4, 3), torch.randn(4, 3), k=3)
    assert torch.isfinite(four)
    assert torch.isfinite(AF.cknna(torch.randn(2, 3), torch.randn(2, 3), k=2, unbiased=False))
    for dtype in (torch.float16, torch.bfloat16):
        half = AF.cknna(x.to(dtype), y.to(dtype), k=5)
        assert half.dtype == dtype
        assert float(half) == pytest.approx(float(AF.cknna(x, y, k=5)), abs=0.05)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 29\]"):
        AF.cknna(x, y, k=30)
    assert torch.isfinite(AF.cknna(x, y, k=30, unbiased=False))
    with pytest.raises(ValueError, match="x must have at least 4 row"):
        AF.cknna(torch.randn(3, 2), torch.randn(3, 2), k=1)
    with pytest.raises(ValueError, match="x and y must have the same number of rows"):
        AF.cknna(x, torch.randn(31, 4))
    with pytest.raises(ValueError, match="unbiased must be a bool"):
        AF.cknna(x, y, unbiased="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# csls


def test_csls_matches_loop() -> None:
    x, y = torch.randn(13, 6, dtype=torch.float64), torch.randn(17, 6, dtype=torch.float64)
    for k in (1, 3, 13):
        got = AF.csls(x, y, k=k)
        assert got.shape == (13, 17) and got.dtype == torch.float64
        torch.testing.assert_close(got, csls_ref(x, y, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_csls_retrieve_matches_loop(chunk_size: int | None) -> None:
    x, y = torch.randn(19, 5, dtype=torch.float64), torch.randn(23, 5, dtype=torch.float64)
    ref = csls_ref(x, y, 4)
    for topk in (1, 5):
        got = AF.csls_retrieve(x, y, k=4, topk=topk, chunk_size=chunk_size)
        assert got.indices.tolist() == neighbour_lists(ref, topk, exclude_self=False)
        torch.testing.assert_close(got.values, ref.topk(topk, dim=1).values, rtol=1e-12, atol=1e-12)


def test_csls_reduces_hubness() -> None:
    """A hub (a target fairly near every source) wins plain NN retrieval, not CSLS retrieval."""
    u = torch.randn(100, 7, dtype=torch.float64)
    x = torch.cat([torch.full((100, 1), 3.0, dtype=torch.float64), u], 1)
    y = torch.cat(
        [torch.zeros(100, 1, dtype=torch.float64), u + 0.1 * torch.randn(100, 7, dtype=torch.float64)], 1
    )
    y = torch.cat([y, torch.eye(1, 8, dtype=torch.float64)])  # index 100: the hub, cos 0.75 to every x
    truth = torch.arange(100)
    plain = AF.knn(x, 1, y=y).indices[:, 0]
    fixed = AF.csls_retrieve(x, y, k=10).indices[:, 0]
    assert (plain == 100).float().mean() > 0.6 > 0.4 > (fixed == 100).float().mean()
    assert (fixed == truth).float().mean() > 0.6 > 0.4 > (plain == truth).float().mean()


def test_csls_zero_half_and_bad_input() -> None:
    x, y = torch.randn(6, 4), torch.randn(5, 4)
    x[0] = 0
    assert torch.isfinite(AF.csls(x, y, k=2)).all()
    half = AF.csls(x.half(), y.half(), k=2)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), AF.csls(x, y, k=2), rtol=0.02, atol=0.02)
    r = AF.csls_retrieve(x.bfloat16(), y.bfloat16(), k=2, topk=2)
    assert r.values.dtype == torch.bfloat16 and torch.isfinite(r.values.float()).all()
    one = AF.csls(torch.randn(1, 4), y, k=1)
    assert one.shape == (1, 5)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
        AF.csls(x, y, k=6)
    with pytest.raises(ValueError, match=r"topk must be an integer in \[1, 5\]"):
        AF.csls_retrieve(x, y, k=2, topk=6)
    with pytest.raises(ValueError, match="x and y must have the same feature width"):
        AF.csls(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"y has 4 non-finite"):
        AF.csls_retrieve(x, torch.cat([y, torch.full((1, 4), math.inf)]))


@pytest.mark.parametrize("cols", [64, 100, 1024])
def test_blocked_topk_tiles_equal_full_search(monkeypatch: pytest.MonkeyPatch, cols: int) -> None:
    """Column tiles (shifted last tile, running top-k merge) give the exact full top-k, self excluded."""
    monkeypatch.setattr(neighbors, "_TILE_COLS", cols)
    x = torch.randn(333, 16, dtype=torch.float64)
    ref = (x @ x.T).fill_diagonal_(-math.inf).topk(12, dim=1)
    for chunk in (None, 50, 333):
        got = AF.knn(x, 12, metric="dot", chunk_size=chunk, backend="torch")
        assert torch.equal(got.indices, ref.indices)
        torch.testing.assert_close(got.values, ref.values, rtol=1e-12, atol=1e-12)  # GEMM shapes differ
    # k = M − 1 with self excluded: every other row, best first
    full = AF.knn(x[:130], 129, metric="dot", backend="torch")
    assert torch.equal(full.indices.sort(1).values[0], torch.arange(1, 130))
    assert bool((full.values[:, 1:] <= full.values[:, :-1]).all())


def test_blocked_topk_equal_vectors_tie_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal rows of y score bit-identically in every tile (all tiles have one shape)."""
    monkeypatch.setattr(neighbors, "_TILE_COLS", 256)
    x, y = torch.randn(70, 48), torch.randn(1000, 48)
    y[::37] = y[5]
    _, idx = neighbors._blocked_topk(x, y, 1000, 70)
    vals, _ = neighbors._blocked_topk(x, y, 1000, 70)
    scores = torch.empty(70, 1000).scatter_(1, idx, vals)
    dup = scores[:, ::37]
    assert bool((dup == dup[:, :1]).all())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("metric", ["dot", "euclidean"])
def test_blocked_topk_candidates_exact_with_ties_and_workers(
    monkeypatch: pytest.MonkeyPatch, threads: int, metric: str
) -> None:
    """The CPU engine (group maxima, running k-th-best bound, one top-k per row block, row blocks on
    worker threads) equals the float64 brute force: self excluded exactly, and with many exactly tied
    scores (duplicated rows) the returned values are the brute-force top-k values and every index
    scores its value."""
    monkeypatch.setattr(neighbors, "_TILE_COLS", 192)  # several column tiles, a shifted last one
    g = torch.Generator().manual_seed(7)
    x = torch.randn(500, 12, generator=g, dtype=torch.float64)
    x[::3] = x[1]  # 167 copies of one row: ties everywhere, also with self
    x[100:110] = x[50]
    k = 15
    full = scores64(x, x, metric)
    full.fill_diagonal_(-math.inf)
    ref = full.topk(k, dim=1)
    top = full.topk(k + 1, dim=1).values
    plain = (top[:, :-1] > top[:, 1:]).all(1)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaf = x.clone().requires_grad_()  # workers run without autograd whatever the caller's mode
        dot = AF.knn(leaf, 3, metric="dot", backend="torch", chunk_size=64)
        want = (x @ x.T).fill_diagonal_(-math.inf).topk(3, dim=1).values
        torch.testing.assert_close(dot.values, want, rtol=1e-12, atol=1e-12)
        for chunk in (None, 64, 7):
            got = AF.knn(x, k, metric=metric, chunk_size=chunk, backend="torch")
            assert torch.get_num_threads() == threads  # restored after the worker threads
            expected = -ref.values if metric == "euclidean" else ref.values
            torch.testing.assert_close(got.values, expected, rtol=1e-12, atol=1e-12)
            assert bool((got.indices != torch.arange(500)[:, None]).all())  # never self
            assert all(len(set(row)) == k for row in got.indices.tolist())
            picked = full.gather(1, got.indices)
            torch.testing.assert_close(picked, ref.values, rtol=1e-12, atol=1e-12)
            # rows whose k + 1 best scores are distinct give exactly the brute-force indices
            assert plain.sum() > 100
            assert torch.equal(got.indices[plain], ref.indices[plain])
    finally:
        torch.set_num_threads(saved)


def _total_order_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k largest scores with ties to the smaller column (numpy lexsort), best first."""
    s = scores.numpy()
    cols = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    order = np.stack([np.lexsort((c, -r)) for r, c in zip(s, cols, strict=True)])[:, :k]
    return torch.from_numpy(np.take_along_axis(s, order, 1)), torch.from_numpy(order)


@pytest.mark.parametrize("threads", [1, 2])
def test_symmetric_self_search_total_order(threads: int) -> None:
    """The symmetric self-search (upper-triangle tiles, each pair serving both rows, worker threads in
    no fixed order) returns exactly the top-k of the brute force under (value, then smaller index),
    for every tile size (overlapping last tile), with self excluded or included. Integer-valued
    features make every dot product exact, so ties are everywhere and exact."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (301, 4), generator=g).to(torch.float64)
    x[::5] = x[2]  # duplicated rows: ties with self as well
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for exclude in (True, False):
            full = x @ x.T
            if exclude:
                full.fill_diagonal_(-math.inf)
            for k in (1, 7, 60):
                ref_v, ref_i = _total_order_topk(full, k)
                for chunk in (None, 16, 64, 100, 301):
                    for dtype in (torch.float64, torch.float32):
                        got = AF.knn(x.to(dtype), k, metric="dot", exclude_self=exclude, chunk_size=chunk)
                        assert torch.equal(got.indices, ref_i), (exclude, k, chunk, dtype)
                        assert torch.equal(got.values.double(), ref_v)
    finally:
        torch.set_num_threads(saved)


def test_symmetric_self_search_half_the_work_and_no_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Self-search multiplies only the upper-triangle tiles (T(T+1)/2 of T² square tiles) and
    normalises rows a tile at a time, never the whole input; the cosine values equal the float64
    reference, also for huge, tiny and zero rows."""
    x = torch.randn(1000, 24)
    x[3] *= 1e30
    x[4] *= 1e-30
    x[5] = 0
    flops: list[int] = []
    mm = torch.mm

    def counting(a: torch.Tensor, b: torch.Tensor, **kw: object) -> torch.Tensor:
        flops.append(a.shape[0] * a.shape[1] * b.shape[1])
        return mm(a, b, **kw)

    def normalize(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
        raise AssertionError(f"a normalised copy of {tuple(z.shape)}")

    monkeypatch.setattr(torch, "mm", counting)
    monkeypatch.setattr(neighbors, "l2_normalize", normalize)
    got = AF.knn(x, 5, chunk_size=128)
    tiles = math.ceil(1000 / 128)  # of 125 rows (balanced: no overlapping last tile)
    assert sum(flops) == tiles * (tiles + 1) // 2 * 125 * 125 * 24  # not tiles² · 125² · 24
    flops.clear()
    AF.knn(x[:129], 5, chunk_size=128)  # N = chunk + 1: 3 tiles of 65 rows, not 3 of 128 (> N²)
    assert sum(flops) == 3 * 65 * 65 * 24
    monkeypatch.undo()
    z = x.double()
    unit = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)  # every finite magnitude, as l2_normalize
    full = (unit @ unit.T).fill_diagonal_(-math.inf)
    torch.testing.assert_close(got.values.double(), full.gather(1, got.indices), rtol=0, atol=1e-6)
    ref = full.topk(5, dim=1)
    torch.testing.assert_close(got.values.double(), ref.values, rtol=0, atol=1e-6)
    assert bool((got.values[5] == 0).all())  # a zero row has cosine 0 with every row


def test_symmetric_self_search_masked_columns_do_not_open_a_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shifted last block's diagonal tile masks the columns another block owns (−inf). When it is
    the first tile its row block sees (tiles come in no fixed order on the worker threads), the k sets
    that bound the k-th best are taken after the masked columns, so a set of −inf cannot let the whole
    tile through as candidates (it did: 4 int64 copies of the tile, +118 MiB now and then at N = 5,000)."""
    x = torch.randn(5000, 16, generator=torch.Generator().manual_seed(0))
    spans = neighbors._spans(5000, neighbors._self_tile(5000, torch.float32))
    assert spans[-1][2] > spans[-1][0]  # the last block is shifted back: columns masked
    on_workers = neighbors.on_workers
    kept = neighbors._kept
    counts: list[int] = []

    def reversed_order(fn, parts, device):  # type: ignore[no-untyped-def]
        return on_workers(fn, list(reversed(parts)), device)  # the last diagonal tile first

    def counting(vals: torch.Tensor, *args: object) -> tuple[torch.Tensor, ...]:
        out = kept(vals, *args)
        counts.append(out[0].numel())
        return out

    monkeypatch.setattr(neighbors, "on_workers", reversed_order)
    monkeypatch.setattr(neighbors, "_kept", counting)
    got = AF.knn(x, 10)
    t = spans[0][1] - spans[0][0]
    assert max(counts) < t * 100  # a few dozen per row, not the t² − t·skip of the whole tile
    monkeypatch.undo()
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    ref_v, ref_i = (unit @ unit.T).fill_diagonal_(-math.inf).topk(10, dim=1)  # float64 reference
    torch.testing.assert_close(got.values.double(), ref_v, rtol=0, atol=1e-6)
    assert float((got.indices == ref_i).double().mean()) > 0.999  # float32 may swap near ties
    assert torch.equal(got.indices, AF.knn(x, 10).indices)  # the tile order does not matter


@pytest.mark.parametrize("threads", [1, 4])
def test_symmetric_self_search_edge_shapes_exact_cosine(threads: int) -> None:
    """Tiny N (1 to 3 rows), N below, at and one above the tile, chunk_size 1, k above the tile and
    k = N − 1, self included (duplicates then tie with self, to the smaller index), zero rows
    (cosine 0 with every row, itself included), strided and half-precision input: exactly the
    total-order top-k of the float64 brute force. Rows of 0, 1 or 4 entries ±2^e have cosines exact
    in float32 (normalised entries ±1 or ±1/2), so every tie is exact."""
    g = torch.Generator().manual_seed(11)
    base = torch.zeros(37, 6, dtype=torch.float64)
    for i in range(37):
        m = (0, 1, 4)[i % 3]
        signs = torch.randint(0, 2, (m,), generator=g).double() * 2 - 1
        base[i, torch.randperm(6, generator=g)[:m]] = signs * 2.0 ** (i % 5 - 2)
    base[[7, 20, 34]] = base[4].clone()  # duplicates of row 4, also scaled copies
    base[25] = base[4] * 8
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shapes = ((1, None), (2, None), (3, 1), (3, 2), (12, 1), (16, 17), (16, 16), (17, 16), (37, 5))
        for n, chunk in shapes:  # (17, 16): two tiles of 9 rows, overlapping by one
            x = base[:n]
            unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
            for exclude in (False, True):
                full = unit @ unit.T
                if exclude:
                    full.fill_diagonal_(-math.inf)
                for k in sorted({1, min(9, n - exclude), n - exclude}) if n > exclude else ():
                    ref_v, ref_i = _total_order_topk(full, k)
                    strided = x.float().repeat_interleave(2, 1)[:, ::2]  # float32: searched in place
                    for z in (strided, x.T.contiguous().T.half(), x.bfloat16()):
                        got = AF.knn(z, k, exclude_self=exclude, chunk_size=chunk)
                        assert torch.equal(got.indices, ref_i), (n, chunk, exclude, k, z.dtype)
                        assert got.values.dtype == z.dtype
                        assert torch.equal(got.values.double(), ref_v)
    finally:
        torch.set_num_threads(saved)


def test_knn_dot_products_that_overflow_are_rejected() -> None:
    """Finite rows whose float32 dot products overflow (±inf, or NaN from inf − inf) have no ranking:
    the symmetric self-search kept no column for them (index N, out of range) and a NaN threshold
    dropped the row's finite neighbours too; the general engine returned self with self excluded. A
    ValueError instead, whenever ‖x_i‖·‖y_j‖ (which bounds every partial sum) could overflow; float64
    holds the same products, and rows just inside float32's range stay exact."""
    x = torch.tensor([[1e20, 1e20], [1e20, -1e20], [1.0, 1.0]])  # x0·x1 = inf − inf = NaN in float32
    for dtype in (torch.float32, torch.bfloat16):
        with pytest.raises(ValueError, match="overflow"):
            AF.knn(x.to(dtype), 2, metric="dot")
        with pytest.raises(ValueError, match="overflow"):
            AF.knn(x.to(dtype), 1, y=x[:, :1].to(dtype).expand(3, 2), metric="dot", backend="torch")
    assert torch.equal(AF.knn(x, 2).indices, torch.tensor([[2, 1], [0, 2], [0, 1]]))  # cosine is fine
    for z in (x.double(), torch.tensor([[1e19], [-1e19], [1.0]])):  # 1e19² = 1e38 < float32's max / 2
        full = (z.double() @ z.double().T).fill_diagonal_(-math.inf)
        ref_v, ref_i = _total_order_topk(full, 2)
        for chunk in (None, 1):
            got = AF.knn(z, 2, metric="dot", chunk_size=chunk)
            assert torch.equal(got.indices, ref_i)
            assert torch.equal(got.values, ref_v.to(z.dtype))  # one product each: correctly rounded


def test_l2_row_factors_give_l2_normalize_bitwise() -> None:
    """The factors the self-search normalises its tiles with reproduce l2_normalize exactly, at every
    magnitude, for zero rows and across row chunks."""
    from alignkit.functional._checks import l2_normalize, l2_row_factors

    x = torch.randn(1000, 33) * torch.logspace(-30, 30, 1000)[:, None]
    x[7] = 0
    for dtype in (torch.float32, torch.float64):
        z = x.to(dtype)
        scale, norm = l2_row_factors(z, rows=128)
        assert torch.equal((z / scale) / norm, l2_normalize(z))


def test_symmetric_self_search_scores_bitwise_like_the_general_engine() -> None:
    """Rows normalised tile by tile are bitwise l2_normalize's, so self-search gives the general
    engine's float32 values exactly (and its neighbours, without exact ties)."""
    x = torch.randn(3000, 40) * torch.logspace(-3, 3, 3000)[:, None]
    for metric in ("cosine", "dot"):
        sym = AF.knn(x, 8, metric=metric, backend="torch")
        general = AF.knn(x, 8, y=x, exclude_self=True, metric=metric, backend="torch")
        assert torch.equal(sym.values, general.values)
        assert torch.equal(sym.indices, general.indices)


def test_searches_hand_worker_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both CPU engines release the worker threads' freed heap (glibc arenas keep freed tiles
    resident otherwise; see ``_threads.release_memory``) once per search."""
    from alignkit.functional import _threads

    calls: list[int] = []
    monkeypatch.setattr(neighbors, "release_memory", lambda: calls.append(1))
    x = torch.randn(300, 8)
    AF.knn(x, 3, backend="torch")  # symmetric self-search
    AF.knn(x, 3, y=x[:200], backend="torch")  # general engine
    assert calls == [1, 1]
    monkeypatch.undo()
    _threads.release_memory()  # glibc's malloc_trim where there is one; a no-op elsewhere


@pytest.mark.parametrize("magnitude", [1e20, 1e-25, 1.0])
def test_euclidean_exact_at_huge_and_tiny_magnitudes(magnitude: float) -> None:
    """Euclidean neighbours of float32 rows of any finite magnitude equal the float64 brute force:
    the expanded score's squares would overflow (1e20) or underflow (1e-25) without the exact
    power-of-two scaling."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 8, generator=g) * magnitude
    y = torch.randn(200, 8, generator=g) * magnitude
    for other in (None, y):
        ref = scores64(x, x if other is None else other, "euclidean")
        if other is None:
            ref.fill_diagonal_(-math.inf)
        ref = ref.topk(5, dim=1)
        for backend in ("torch", "auto"):
            got = AF.knn(x, 5, y=other, metric="euclidean", backend=backend)
            assert torch.equal(got.indices, ref.indices), (backend, other is None)
            torch.testing.assert_close(got.values.double(), -ref.values, rtol=1e-5, atol=0)
    assert bool(torch.isfinite(x).all())  # the input is not modified in place
    torch.testing.assert_close(x, torch.randn(300, 8, generator=torch.Generator().manual_seed(5)) * magnitude)


def test_blocked_topk_small_tiles_and_large_k(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles narrower than k (no group maxima, every entry a candidate) and k = M − 1 stay exact."""
    monkeypatch.setattr(neighbors, "_TILE_COLS", 8)
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randn(29, 6, dtype=torch.float64)
    for k in (1, 9, 29):
        got = AF.knn(x, k, y=y, metric="dot", backend="torch", chunk_size=5)
        ref = (x @ y.T).topk(k, dim=1)
        assert torch.equal(got.indices, ref.indices)
        torch.testing.assert_close(got.values, ref.values, rtol=1e-12, atol=1e-12)
