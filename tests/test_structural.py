"""Structural objectives against slow float64 references written here (loops and explicit matrices)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import alignkit.functional as AF
import alignkit.functional.structural as structural
from alignkit import losses

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

# --------------------------------------------------------------------------------------------------
# References (float64, obviously correct)


def cos64(a: torch.Tensor) -> torch.Tensor:
    """Explicit N×N cosine matrix in float64; a zero row has cosine 0 with everything."""
    a = a.double()
    norms = a.norm(dim=-1).clamp_min(1e-8)
    return (a @ a.mT) / (norms[..., :, None] * norms[..., None, :])


def structure_ref(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = x.shape[-2]
    return ((cos64(x) - cos64(y)) ** 2).sum((-2, -1)).mean() / n**2


def mdms_ref(x: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    n = x.shape[-2]
    return F.relu((cos64(x) - cos64(y)).abs() - margin).sum((-2, -1)).mean() / n**2


def loop_cos(a: torch.Tensor, i: int, j: int) -> float:
    ai, aj = a[i].double(), a[j].double()
    den = max(float(ai.norm()), 1e-8) * max(float(aj.norm()), 1e-8)
    return float(sum(p * q for p, q in zip(ai.tolist(), aj.tolist(), strict=True))) / den


def laplacian_matrix(a: torch.Tensor, normalization: str | None) -> torch.Tensor:
    """Dense L in float64; isolated nodes get a zero row and column (scipy/networkx convention)."""
    a = a.double()
    deg = a.sum(1)
    lap = torch.diag(deg) - a
    if normalization is None:
        return lap
    iso = deg == 0
    if normalization == "sym":
        inv_sqrt = torch.where(iso, 0.0, deg.rsqrt())
        out = torch.eye(len(a), dtype=a.dtype) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    else:
        inv = torch.where(iso, 0.0, 1 / deg)
        out = torch.eye(len(a), dtype=a.dtype) - inv[:, None] * a
    out[iso, :] = 0
    out[:, iso] = 0
    return out


def random_graph(n: int, density: float = 0.3, isolated: tuple[int, ...] = (), symmetric: bool = True):
    g = torch.Generator().manual_seed(n)
    a = torch.rand(n, n, generator=g, dtype=torch.float64) * (torch.rand(n, n, generator=g) < density)
    if symmetric:
        a = torch.maximum(a, a.T)
    a.fill_diagonal_(0)
    for i in isolated:
        a[i, :] = 0
        a[:, i] = 0
    return a


def orthogonal(d: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    return q


# --------------------------------------------------------------------------------------------------
# structure_loss


@pytest.mark.parametrize(
    ("n", "dx", "dy"),
    [(6, 16, 8), (40, 20, 20), (64, 5, 3), (300, 7, 12), (3, 1, 4), (1, 3, 2), (2, 3, 3)],
)
def test_structure_matches_nxn_reference(n: int, dx: int, dy: int) -> None:
    x, y = torch.randn(n, dx), torch.randn(n, dy)
    torch.testing.assert_close(AF.structure_loss(x, y).double(), structure_ref(x, y), rtol=1e-5, atol=1e-7)
    x64, y64 = x.double(), y.double()
    torch.testing.assert_close(AF.structure_loss(x64, y64), structure_ref(x, y), rtol=1e-12, atol=1e-14)


def test_structure_double_loop() -> None:
    x, y = torch.randn(9, 4), torch.randn(9, 6)
    x[2] = 0  # zero row: cosine 0 with everything, itself included
    y[5] = 0
    total = 0.0
    for i, j in itertools.product(range(9), repeat=2):
        total += (loop_cos(x, i, j) - loop_cos(y, i, j)) ** 2
    assert AF.structure_loss(x.double(), y.double()).item() == pytest.approx(total / 81, rel=1e-12)
    # both code paths (N×N for small N, Gram for large N) on the same zero-row data
    xl, yl = torch.randn(200, 4, dtype=torch.float64), torch.randn(200, 6, dtype=torch.float64)
    xl[[0, 7]] = 0
    yl[[7, 9]] = 0
    torch.testing.assert_close(AF.structure_loss(xl, yl), structure_ref(xl, yl), rtol=1e-12, atol=1e-14)


def test_structure_batched_is_mean_of_items() -> None:
    x, y = torch.randn(3, 50, 4), torch.randn(3, 50, 9)
    per_item = torch.stack([structure_ref(x[b], y[b]) for b in range(3)]).mean()
    torch.testing.assert_close(AF.structure_loss(x, y).double(), per_item, rtol=1e-5, atol=1e-7)


def test_structure_gram_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = torch.randn(2, 100, 3, dtype=torch.float64), torch.randn(2, 100, 5, dtype=torch.float64)
    whole = AF.structure_loss(x, y)
    monkeypatch.setattr(structural, "_GRAM_CHUNK", 7)
    torch.testing.assert_close(AF.structure_loss(x, y), whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(whole, structure_ref(x, y), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [((30, 3), (30, 2)), ((4, 3), (4, 6)), ((2, 20, 3), (2, 20, 4))])
def test_structure_gradcheck(monkeypatch: pytest.MonkeyPatch, shape: tuple) -> None:
    monkeypatch.setattr(structural, "_GRAM_CHUNK", 8)  # several blocks on the Gram path
    x = torch.randn(*shape[0], dtype=torch.float64, requires_grad=True)
    y = torch.randn(*shape[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(AF.structure_loss, (x, y))


def test_structure_gradient_matches_reference() -> None:
    x = torch.randn(80, 6, dtype=torch.float64, requires_grad=True)  # Gram path
    y = torch.randn(80, 4, dtype=torch.float64, requires_grad=True)
    gx, gy = torch.autograd.grad(AF.structure_loss(x, y), (x, y))
    rx, ry = torch.autograd.grad(structure_ref(x, y), (x, y))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)
    # y frozen: only x gets a gradient
    y.requires_grad_(False)
    (gx_only,) = torch.autograd.grad(AF.structure_loss(x, y), (x,))
    torch.testing.assert_close(gx_only, rx)


def test_structure_float32_precision_cancellation() -> None:
    """float32 input, N = 8192, d = 256, nearly identical sides sharing a large offset: the three Gram
    terms are ≈ N² and cancel to a tiny loss. Reference: the same identity evaluated in float64 (its
    own rounding is ~1e-14 here; the N×N float64 form is checked against it at smaller N above)."""
    g = torch.Generator().manual_seed(1)
    n, d = 8192, 256
    x = torch.randn(n, d, generator=g) + 3
    cases = {
        "near-equal": (x, x + 0.1 * torch.randn(n, d, generator=g)),
        "rotated": (x, x @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]),
        "independent": (x, torch.randn(n, d // 2, generator=g) + 3),
    }
    for name, (a, b) in cases.items():
        a64, b64 = F.normalize(a.double(), dim=1), F.normalize(b.double(), dim=1)
        ref = (
            (a64.T @ a64).square().sum() + (b64.T @ b64).square().sum() - 2 * (a64.T @ b64).square().sum()
        ) / n**2
        got = AF.structure_loss(a, b)
        assert got.dtype == torch.float32
        # documented bound 1e-8 (measured ≤ 3.5e-9 here); combining the Grams in float32 instead
        # gives 4e-8 and 1.6e-7 on the first and last case, so this bound is not vacuous
        assert abs(float(got) - float(ref)) < 2.5e-8, name


# --------------------------------------------------------------------------------------------------
# mdms_loss


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.25])
def test_mdms_double_loop(margin: float) -> None:
    x, y = torch.randn(10, 3), torch.randn(10, 5)
    x[4] = 0
    total = 0.0
    for i, j in itertools.product(range(10), repeat=2):
        total += max(abs(loop_cos(x, i, j) - loop_cos(y, i, j)) - margin, 0.0)
    assert AF.mdms_loss(x.double(), y.double(), margin).item() == pytest.approx(total / 100, rel=1e-12)
    assert AF.mdms_loss(x, y, margin).item() == pytest.approx(total / 100, rel=1e-5)
    chunked = AF.mdms_loss(x.double(), y.double(), margin, chunk_size=3)
    assert chunked.item() == pytest.approx(total / 100, rel=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 49, 50, 1000])
def test_mdms_chunked_equals_unchunked(chunk_size: int) -> None:
    x = torch.randn(2, 50, 6, requires_grad=True)
    y = torch.randn(2, 50, 9, requires_grad=True)
    whole = AF.mdms_loss(x, y, margin=0.1)
    gx, gy = torch.autograd.grad(whole, (x, y))
    part = AF.mdms_loss(x, y, margin=0.1, chunk_size=chunk_size)
    px, py = torch.autograd.grad(part, (x, y))
    torch.testing.assert_close(part, whole, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(px, gx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(py, gy, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(whole.double(), mdms_ref(x.detach(), y.detach(), 0.1), rtol=1e-5, atol=1e-7)


def test_mdms_gradient_matches_reference() -> None:
    x = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(30, 7, dtype=torch.float64, requires_grad=True)
    ref = torch.autograd.grad(mdms_ref(x, y, 0.2), (x, y))
    for chunk in (None, 4):
        got = torch.autograd.grad(AF.mdms_loss(x, y, 0.2, chunk_size=chunk), (x, y))
        torch.testing.assert_close(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1])
    y.requires_grad_(False)
    (gx,) = torch.autograd.grad(AF.mdms_loss(x, y, 0.2, chunk_size=4), (x,))
    torch.testing.assert_close(gx, ref[0])


def test_mdms_gradcheck() -> None:
    x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 12, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: AF.mdms_loss(a, b, 0.1, chunk_size=5), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: AF.mdms_loss(a, b, 0.1), (x, y))


def test_mdms_default_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = torch.randn(60, 5, requires_grad=True), torch.randn(60, 3)
    calls: list[tuple] = []
    original = structural._BlockMDMS.apply
    monkeypatch.setattr(structural._BlockMDMS, "apply", lambda *a: calls.append(a[3:]) or original(*a))
    whole = AF.mdms_loss(x, y)
    (g_whole,) = torch.autograd.grad(whole, (x,))
    monkeypatch.setattr(structural, "_MDMS_BLOCK_PAIRS", 600)  # → blocks of 10 rows
    part = AF.mdms_loss(x, y)
    (g_part,) = torch.autograd.grad(part, (x,))
    assert calls == [(60, True, False), (10, True, False)]  # y needs no gradient: none computed
    torch.testing.assert_close(part, whole)
    torch.testing.assert_close(g_part, g_whole, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(whole.double(), mdms_ref(x.detach(), y, 0.0), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        AF.mdms_loss(x, y)
    assert calls[-1] == (10, False, False)  # no gradient work under no_grad


def test_mdms_default_is_one_block_up_to_2048(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(structural._BlockMDMS, "apply", lambda *a: calls.append(a[3]) or torch.zeros(1))
    AF.mdms_loss(torch.randn(2048, 2), torch.randn(2048, 2))
    AF.mdms_loss(torch.randn(2049, 2), torch.randn(2049, 2))
    AF.mdms_loss(torch.randn(4, 1024, 2), torch.randn(4, 1024, 2))
    assert calls == [2048, 2047, 1024]


def test_mdms_margin() -> None:
    x, y = torch.randn(20, 3), torch.randn(20, 3)
    assert AF.mdms_loss(x, y, margin=2.0).item() == 0.0
    assert AF.mdms_loss(x, y, margin=0.0) > AF.mdms_loss(x, y, margin=0.25) > 0
    with pytest.raises(ValueError, match="margin"):
        AF.mdms_loss(x, y, margin=-0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        AF.mdms_loss(x, y, chunk_size=0)


# --------------------------------------------------------------------------------------------------
# Invariances of structure and mdms


@pytest.mark.parametrize("loss", ["structure", "mdms"])
def test_rotation_and_row_scaling_invariance(loss: str) -> None:
    fn = AF.structure_loss if loss == "structure" else (lambda a, b: AF.mdms_loss(a, b, margin=0.05))
    x, y = torch.randn(100, 8, dtype=torch.float64), torch.randn(100, 5, dtype=torch.float64)
    base = fn(x, y)
    assert base > 0
    scale = torch.rand(100, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(fn(x @ orthogonal(8), y), base)
    torch.testing.assert_close(fn(x, y @ orthogonal(5)), base)
    torch.testing.assert_close(fn(x * scale, y), base)
    torch.testing.assert_close(fn(x, y * scale.flip(0)), base)
    torch.testing.assert_close(fn(y, x), base)  # symmetric in its arguments
    assert fn(x, x @ orthogonal(8)).abs() < 1e-12  # same structure → 0
    # not invariant to a general linear map
    assert (fn(x @ torch.randn(8, 8, dtype=torch.float64), y) - base).abs() > 1e-4


# --------------------------------------------------------------------------------------------------
# laplacian_loss


@pytest.mark.parametrize("normalization", [None, "sym", "rw"])
@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_laplacian_matches_explicit_matrix(normalization: str | None, layout: str) -> None:
    n = 15
    a = random_graph(n, isolated=(3, 11))
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    lap = laplacian_matrix(a, normalization)
    ref_per_node = (x * (lap @ x)).sum(1)
    ref = torch.trace(x.T @ lap @ x)
    adj = {"dense": a, "coo": a.to_sparse(), "csr": a.to_sparse_csr()}[layout]
    got = AF.laplacian_loss(x, adj, normalization)
    torch.testing.assert_close(got, ref / n)
    torch.testing.assert_close(AF.laplacian_loss(x, adj, normalization, reduction="sum"), ref)
    torch.testing.assert_close(AF.laplacian_loss(x, adj, normalization, reduction="none"), ref_per_node)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref / n, x)[0])


def test_laplacian_pairwise_forms() -> None:
    n = 12
    a = random_graph(n, isolated=(0,))
    x = torch.randn(n, 3, dtype=torch.float64)
    deg = a.sum(1)
    plain = sym = 0.0
    for i, j in itertools.product(range(n), repeat=2):
        if a[i, j] > 0:
            plain += 0.5 * float(a[i, j]) * float((x[i] - x[j]).square().sum())
            sym += 0.5 * float(a[i, j]) * float((x[i] / deg[i].sqrt() - x[j] / deg[j].sqrt()).square().sum())
    assert AF.laplacian_loss(x, a, reduction="sum").item() == pytest.approx(plain, rel=1e-12)
    assert AF.laplacian_loss(x, a, "sym", reduction="sum").item() == pytest.approx(sym, rel=1e-12)


@pytest.mark.parametrize("normalization", [None, "sym"])
def test_laplacian_matches_scipy(normalization: str | None) -> None:
    csgraph = pytest.importorskip("scipy.sparse.csgraph")
    a = random_graph(20, isolated=(5,))
    x = torch.randn(20, 3, dtype=torch.float64)
    lap = torch.from_numpy(csgraph.laplacian(a.numpy(), normed=normalization == "sym"))
    torch.testing.assert_close(
        AF.laplacian_loss(x, a, normalization, reduction="sum"), torch.trace(x.T @ lap @ x)
    )


def test_laplacian_isolated_nodes_and_empty_graph() -> None:
    x = torch.randn(6, 3, requires_grad=True)
    for normalization in (None, "sym", "rw"):
        for adj in (torch.zeros(6, 6), torch.zeros(6, 6).to_sparse()):
            loss = AF.laplacian_loss(x, adj, normalization)
            (grad,) = torch.autograd.grad(loss, x)
            assert loss.item() == 0.0
            assert torch.isfinite(grad).all() and (grad == 0).all()
    a = random_graph(6, isolated=(2,)).float()
    loss = AF.laplacian_loss(x, a, "sym")
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert (grad[2] == 0).all()  # an isolated node is unconstrained


def test_laplacian_directed_rw_and_symmetry_check() -> None:
    a = random_graph(10, symmetric=False)
    x = torch.randn(10, 3, dtype=torch.float64)
    ref = torch.trace(x.T @ laplacian_matrix(a, "rw") @ x) / 10
    torch.testing.assert_close(AF.laplacian_loss(x, a, "rw"), ref)
    for normalization in (None, "sym"):
        with pytest.raises(ValueError, match="adjacency must be symmetric"):
            AF.laplacian_loss(x, a, normalization)
    # a single asymmetric edge is caught, a rounding-level asymmetry is accepted
    b = random_graph(10)
    one = b.clone()
    one[2, 7] += 0.5
    with pytest.raises(ValueError, match="adjacency must be symmetric"):
        AF.laplacian_loss(x, one)
    AF.laplacian_loss(x, b + 1e-9 * torch.triu(torch.ones(10, 10, dtype=torch.float64), 1))
    dense = torch.rand(300, 300)  # dense weights: the float32 probe must not raise falsely
    AF.laplacian_loss(torch.randn(300, 3), (dense + dense.T) / 2)


def test_laplacian_offset_and_coalescing() -> None:
    a = random_graph(30)
    x = torch.randn(30, 5, dtype=torch.float64)
    base = AF.laplacian_loss(x, a)
    # shift invariance of D − A, also in float32 where a large offset would cancel badly
    got32 = AF.laplacian_loss((x + 1000).float(), a.float())
    assert got32.item() == pytest.approx(base.item(), rel=1e-4)
    # uncoalesced COO: duplicate entries add up
    coo = a.to_sparse()
    idx, val = coo.indices(), coo.values()
    dup = torch.sparse_coo_tensor(
        torch.cat([idx, idx], 1), torch.cat([val, val]) / 2, a.shape, check_invariants=True
    )
    torch.testing.assert_close(AF.laplacian_loss(x, dup), base)
    # integer / boolean adjacency
    binary = (a > 0).to(torch.int64)
    torch.testing.assert_close(AF.laplacian_loss(x, binary), AF.laplacian_loss(x, binary.double()))
    torch.testing.assert_close(AF.laplacian_loss(x, binary.bool()), AF.laplacian_loss(x, binary.double()))


def test_laplacian_bad_input() -> None:
    x = torch.randn(5, 3)
    a = random_graph(5).float()
    with pytest.raises(ValueError, match="adjacency must have shape"):
        AF.laplacian_loss(x, torch.ones(4, 4))
    with pytest.raises(ValueError, match="adjacency"):
        AF.laplacian_loss(x, [[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        AF.laplacian_loss(x, -a)
    with pytest.raises(ValueError, match="non-negative"):
        AF.laplacian_loss(x, (-a).to_sparse())
    bad = a.clone()
    bad[0, 1] = bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="adjacency"):
        AF.laplacian_loss(x, bad)
    with pytest.raises(ValueError, match="normalization"):
        AF.laplacian_loss(x, a, normalization="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        AF.laplacian_loss(x, a, reduction="max")
    with pytest.raises(ValueError, match="x"):
        AF.laplacian_loss(torch.randn(5), a)


# --------------------------------------------------------------------------------------------------
# knn_graph


def knn_ref(z: torch.Tensor, k: int, metric: str) -> tuple[list[list[int]], torch.Tensor]:
    """Brute-force loop: each row's k nearest others (float64) and the full distance matrix."""
    z = z.double()
    n = len(z)
    dist = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            if metric == "cosine":
                dist[i, j] = 1 - loop_cos(z, i, j)
            else:
                dist[i, j] = (z[i] - z[j]).norm()
    neighbours = []
    for i in range(n):
        order = [j for j in sorted(range(n), key=lambda j: float(dist[i, j])) if j != i]
        neighbours.append(order[:k])
    return neighbours, dist


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4])
def test_knn_graph_matches_brute_force(metric: str, k: int) -> None:
    z = torch.randn(40, 6)
    neighbours, dist = knn_ref(z, k, metric)
    directed = AF.knn_graph(z, k=k, metric=metric, symmetric=False, chunk_size=7).to_dense()
    expected = torch.zeros(40, 40)
    for i, row in enumerate(neighbours):
        expected[i, row] = 1
    assert torch.equal(directed, expected)
    assert (directed.sum(1) == k).all() and (directed.diagonal() == 0).all()
    sym = AF.knn_graph(z, k=k, metric=metric).to_dense()
    assert torch.equal(sym, torch.maximum(expected, expected.T))
    heat = AF.knn_graph(z, k=k, metric=metric, weighting="heat").to_dense().double()
    sigma = torch.stack([dist[i, row] for i, row in enumerate(neighbours)]).median()
    weights = torch.exp(-((dist / sigma) ** 2)) * torch.maximum(expected, expected.T).double()
    torch.testing.assert_close(heat, weights, rtol=1e-5, atol=1e-6)
    assert torch.equal(heat, heat.T)


def test_knn_graph_matches_sklearn() -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    z = torch.randn(300, 10)
    ref = neighbors.kneighbors_graph(z.numpy(), 5, mode="distance").toarray()
    got = AF.knn_graph(
        z, k=5, metric="euclidean", symmetric=False, weighting="heat", sigma=1e6, chunk_size=64
    )
    assert torch.equal(got.to_dense() > 0, torch.from_numpy(ref > 0))
    ref_cos = neighbors.kneighbors_graph(z.numpy(), 5, metric="cosine", mode="connectivity").toarray()
    assert torch.equal(AF.knn_graph(z, k=5, symmetric=False).to_dense(), torch.from_numpy(ref_cos).float())


def test_knn_graph_options_and_chunks() -> None:
    z = torch.randn(50, 4, requires_grad=True)
    a = AF.knn_graph(z, k=3, weighting="heat", sigma=0.5)
    assert a.layout == torch.sparse_coo and a.is_coalesced() and not a.requires_grad
    assert a.dtype == torch.float32 and a.shape == (50, 50)
    for chunk in (1, 13, 50, 4096):
        other = AF.knn_graph(z, k=3, weighting="heat", sigma=0.5, chunk_size=chunk)
        assert torch.equal(other.indices(), a.indices())
        torch.testing.assert_close(other.values(), a.values())
    # explicit sigma: exp(−d²/σ²) on the cosine distance
    zn = F.normalize(z.detach().double(), dim=1)
    dense = a.to_dense().double()
    i, j = dense.nonzero()[0]
    assert dense[i, j].item() == pytest.approx(
        torch.exp(-(((1 - zn[i] @ zn[j]) / 0.5) ** 2)).item(), rel=1e-5
    )
    # graph from the other side, as documented
    x = torch.randn(50, 8, requires_grad=True)
    AF.laplacian_loss(x, a).backward()
    assert x.grad is not None and z.grad is None


def test_knn_graph_duplicates_and_bad_input() -> None:
    z = torch.zeros(6, 3)  # all distances 0: median σ would be 0
    a = AF.knn_graph(z, k=2, metric="euclidean", weighting="heat")
    assert torch.isfinite(a.values()).all() and (a.values() == 1).all()
    with pytest.raises(ValueError, match="k must be"):
        AF.knn_graph(torch.randn(5, 2), k=5)
    with pytest.raises(ValueError, match="k must be"):
        AF.knn_graph(torch.randn(5, 2), k=0)
    with pytest.raises(ValueError, match="metric"):
        AF.knn_graph(torch.randn(5, 2), k=2, metric="manhattan")
    with pytest.raises(ValueError, match="weighting"):
        AF.knn_graph(torch.randn(5, 2), k=2, weighting="gauss")
    with pytest.raises(ValueError, match="sigma"):
        AF.knn_graph(torch.randn(5, 2), k=2, weighting="heat", sigma=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        AF.knn_graph(torch.randn(5, 2), k=2, chunk_size=0)
    with pytest.raises(ValueError, match="z"):
        AF.knn_graph(torch.randn(1, 2), k=1)


# --------------------------------------------------------------------------------------------------
# Conventions shared by structure and mdms


@pytest.mark.parametrize("name", ["structure", "mdms"])
def test_bad_input(name: str) -> None:
    fn = getattr(AF, f"{name}_loss")
    with pytest.raises(ValueError, match="x"):
        fn(torch.randn(5), torch.randn(5, 2))
    with pytest.raises(ValueError, match="x and y"):
        fn(torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="x and y"):
        fn(torch.randn(2, 5, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="y"):
        fn(torch.randn(5, 3), torch.ones(5, 3, dtype=torch.long))
    bad = torch.randn(5, 3)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="y"):
        fn(torch.randn(5, 3), bad)


@pytest.mark.parametrize("name", ["structure", "mdms"])
def test_zero_vectors_small_batches_and_half(name: str) -> None:
    fn = getattr(AF, f"{name}_loss")
    x = torch.zeros(4, 3, requires_grad=True)
    loss = fn(x, torch.randn(4, 5))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert fn(torch.randn(1, 3), torch.randn(1, 2)).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(fn(torch.randn(2, 3), torch.randn(2, 2)))
    x32, y32 = torch.randn(64, 16), torch.randn(64, 8)
    full = fn(x32, y32)
    for dtype in (torch.float16, torch.bfloat16):
        got = fn(x32.to(dtype), y32.to(dtype))
        assert got.dtype == dtype and torch.isfinite(got)
        assert got.float().item() == pytest.approx(full.item(), rel=0.05, abs=1e-3)
    assert fn(x32.double(), y32).dtype == torch.float64


def test_laplacian_and_knn_half_precision() -> None:
    x, y = torch.randn(40, 6), torch.randn(40, 4)
    a = AF.knn_graph(y, k=4, weighting="heat")
    full = AF.laplacian_loss(x, a, "sym")
    for dtype in (torch.float16, torch.bfloat16):
        got = AF.laplacian_loss(x.to(dtype), a, "sym")
        assert got.dtype == dtype and got.float().item() == pytest.approx(full.item(), rel=0.02)
        assert AF.knn_graph(y.to(dtype), k=4).dtype == dtype


# --------------------------------------------------------------------------------------------------
# Modules


def test_modules_registry_and_values() -> None:
    x, y = torch.randn(30, 5), torch.randn(30, 7)
    assert isinstance(losses.build("structure"), losses.StructureLoss)
    assert isinstance(losses.build("manifold"), losses.StructureLoss)
    torch.testing.assert_close(losses.build("structure")(x, y), AF.structure_loss(x, y))
    mdms = losses.build("mdms", margin=0.25, chunk_size=8)
    torch.testing.assert_close(mdms(x, y), AF.mdms_loss(x, y, 0.25))
    assert "margin=0.25" in repr(mdms)
    lap = losses.build("laplacian", k=4, normalization="sym", weighting="heat")
    torch.testing.assert_close(
        lap(x, y), AF.laplacian_loss(x, AF.knn_graph(y, k=4, weighting="heat"), normalization="sym")
    )
    assert "k=4" in repr(lap)
    a = random_graph(30).float()
    given = losses.LaplacianLoss(graph="adjacency", normalization="rw", reduction="sum")
    torch.testing.assert_close(given(x, a), AF.laplacian_loss(x, a, "rw", reduction="sum"))


def test_laplacian_module_gradient_only_to_x() -> None:
    x = torch.randn(30, 5, requires_grad=True)
    y = torch.randn(30, 7, requires_grad=True)
    losses.LaplacianLoss(k=3)(x, y).backward()
    assert x.grad is not None and y.grad is None


def test_modules_joint_and_bad_arguments() -> None:
    joint = losses.JointLoss({"structure": {"weight": 0.5}, "mdms": {"margin": 0.1}, "laplacian": {"k": 3}})
    x, y = torch.randn(20, 4, requires_grad=True), torch.randn(20, 6)
    total, parts = joint(x, y, return_parts=True)
    torch.testing.assert_close(total, 0.5 * parts["structure"] + parts["mdms"] + parts["laplacian"])
    for kwargs, match in [
        ({"graph": "full"}, "graph"),
        ({"k": 0}, "k"),
        ({"normalization": "lap"}, "normalization"),
        ({"metric": "l1"}, "metric"),
        ({"weighting": "x"}, "weighting"),
        ({"sigma": -1.0}, "sigma"),
        ({"reduction": "max"}, "reduction"),
        ({"symmetric": False}, "symmetric"),
        ({"chunk_size": 0}, "chunk_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            losses.LaplacianLoss(**kwargs)
    losses.LaplacianLoss(symmetric=False, normalization="rw")
    with pytest.raises(ValueError, match="margin"):
        losses.MDMSLoss(margin=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        losses.MDMSLoss(chunk_size=0)
