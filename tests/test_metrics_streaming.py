"""alignkit.metrics in one process: streaming accumulators against slow float64 references.

References are written here with numpy and Python loops (Gram-form linear CKA; U-centred unbiased
HSIC of Song et al. 2012 / Székely & Rizzo 2014; Kornblith's RBF bandwidth; recall@K by counting),
never by calling the code under test. ``AF.cka`` / ``AF.recall_at_k`` on the concatenated data are
compared as well: the metrics promise to equal them.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import alignkit.functional as AF
from alignkit.metrics import Metric, MinibatchCKA, MultiLayerCKA, RetrievalMetric, StreamingLinearCKA

F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# References


def _ref_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA from the N×N Gram matrices: tr(KHLH) / sqrt(tr(KHKH)·tr(LHLH))."""
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    h = np.eye(n) - np.ones((n, n)) / n
    kc, lc = h @ k @ h, h @ l_ @ h
    hkl = sum(kc[i, j] * lc[i, j] for i in range(n) for j in range(n))
    hkk = sum(kc[i, j] ** 2 for i in range(n) for j in range(n))
    hll = sum(lc[i, j] ** 2 for i in range(n) for j in range(n))
    return 0.0 if hkk <= 0 or hll <= 0 else hkl / math.sqrt(hkk * hll)


def _u_centre(k: np.ndarray) -> np.ndarray:
    """U-centring (Székely & Rizzo 2014; Song et al. 2012's unbiased HSIC): zero diagonal, and
    k̃_ij = k_ij − r_i/(n−2) − c_j/(n−2) + s/((n−1)(n−2)) off the diagonal, sums over i ≠ j."""
    n = k.shape[0]
    rows = [sum(k[i, j] for j in range(n) if j != i) for i in range(n)]
    cols = [sum(k[i, j] for i in range(n) if i != j) for j in range(n)]
    total = sum(rows)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = k[i, j] - rows[i] / (n - 2) - cols[j] / (n - 2) + total / ((n - 1) * (n - 2))
    return out


def _ref_hsic_u(k: np.ndarray, l_: np.ndarray) -> float:
    n = k.shape[0]
    ku, lu = _u_centre(k), _u_centre(l_)
    return sum(ku[i, j] * lu[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 3))


def _ref_kernel(x: np.ndarray, kernel: str, threshold: float) -> np.ndarray:
    if kernel == "linear":
        return x @ x.T
    n = x.shape[0]
    d = np.array([[float(((x[i] - x[j]) ** 2).sum()) for j in range(n)] for i in range(n)])
    return np.exp(-d / (2 * threshold**2 * np.median(d)))


def _ref_hsics(x: torch.Tensor, y: torch.Tensor, kernel: str, threshold: float) -> tuple[float, ...]:
    k = _ref_kernel(x.double().numpy(), kernel, threshold)
    l_ = _ref_kernel(y.double().numpy(), kernel, threshold)
    return _ref_hsic_u(k, l_), _ref_hsic_u(k, k), _ref_hsic_u(l_, l_)


def _ref_recall(query: torch.Tensor, gallery: torch.Tensor, k: int) -> float:
    """Cosine recall@k, query i's positive gallery i, ties counted against."""
    q, g = query.double().numpy(), gallery.double().numpy()
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    hits = 0
    for i in range(q.shape[0]):
        scores = [float(q[i] @ g[j]) for j in range(g.shape[0])]
        rank = sum(1 for s in scores if s >= scores[i])
        hits += rank <= k
    return hits / q.shape[0]


def _pair(n: int, dx: int, dy: int, seed: int = 0, dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=F64)
    y = x[:, : min(dx, dy)] @ torch.randn(min(dx, dy), dy, generator=g, dtype=F64)
    y = y + torch.randn(n, dy, generator=g, dtype=F64)
    return x.to(dtype), y.to(dtype)


def _splits(n: int, seed: int) -> list[int]:
    """Random batch sizes summing to n, including batches of 1 and 2 rows."""
    rng = np.random.default_rng(seed)
    sizes = [1, 2]
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 25)))
    sizes[-1] -= sum(sizes) - n
    return [s for s in sizes if s > 0]


def _stream(metric: Metric, x: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> None:
    start = 0
    for size in sizes:
        metric.update(x[start : start + size], y[start : start + size])
        start += size


def _kornblith_notebook() -> tuple[torch.Tensor, torch.Tensor]:
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return torch.from_numpy(x), torch.from_numpy(y)


# --------------------------------------------------------------------------------------------------
# StreamingLinearCKA


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_linear_cka_equals_gram_reference_and_af_cka_over_random_splits(seed: int) -> None:
    x, y = _pair(60, 7, 4, seed=seed)
    x = x + 3.0  # column means must not matter
    metric = StreamingLinearCKA()
    _stream(metric, x, y, _splits(60, seed))
    value = metric.compute()
    assert value.dtype == F64 and value.shape == ()
    assert value.item() == pytest.approx(_ref_linear_cka(x.numpy(), y.numpy()), abs=1e-10)
    assert value.item() == pytest.approx(AF.cka(x, y).item(), abs=1e-10)


def test_streaming_linear_cka_large_n_float64_matches_af_cka() -> None:
    x, y = _pair(3000, 40, 24, seed=3)
    metric = StreamingLinearCKA()
    _stream(metric, x, y, [1, 999, 1000, 700, 300])
    assert metric.compute().item() == pytest.approx(AF.cka(x, y).item(), abs=1e-10)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_streaming_linear_cka_float32_within_1e5_of_float64(offset: float) -> None:
    x, y = _pair(4000, 48, 32, seed=4)
    exact = AF.cka(x, y).item()
    metric = StreamingLinearCKA()
    _stream(metric, (x + offset).float(), (y - offset).float(), [1000] * 4)
    assert metric.compute().item() == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_streaming_linear_cka_half_precision_is_finite_and_close_to_float32(dtype: torch.dtype) -> None:
    x, y = _pair(500, 16, 8, seed=5, dtype=torch.float32)
    full, half = StreamingLinearCKA(), StreamingLinearCKA()
    _stream(full, x, y, [250, 250])
    _stream(half, x.to(dtype), y.to(dtype), [250, 250])
    value = half.compute()
    assert torch.isfinite(value) and value.dtype == F64
    assert value.item() == pytest.approx(full.compute().item(), abs=1e-2)


def test_streaming_linear_cka_kornblith_notebook_value() -> None:
    x, y = _kornblith_notebook()
    metric = StreamingLinearCKA()
    _stream(metric, x, y, [7] * 14 + [2])
    assert metric.compute().item() == pytest.approx(0.55761, abs=5e-6)


def test_streaming_linear_cka_constant_and_zero_input_give_zero_not_nan() -> None:
    x, y = _pair(50, 5, 3)
    metric = StreamingLinearCKA()
    _stream(metric, torch.full((50, 5), 7.25, dtype=F64), y, [20, 30])
    assert metric.compute().item() == 0.0
    metric = StreamingLinearCKA()
    _stream(metric, x, torch.zeros(50, 3, dtype=torch.float32), [1, 49])  # mixed dtypes are fine
    assert metric.compute().item() == 0.0
    # A constant column among varying ones is ignored exactly, as in AF.cka.
    xc = torch.cat([x, torch.full((50, 1), 1e3, dtype=F64)], 1)
    metric = StreamingLinearCKA()
    _stream(metric, xc, y, [25, 25])
    assert metric.compute().item() == pytest.approx(_ref_linear_cka(x.numpy(), y.numpy()), abs=1e-12)


def test_streaming_linear_cka_constant_column_is_exactly_ignored_beside_tiny_variance() -> None:
    # float32 batch shifts leave a rounding residue in a constant column's centred product (~1e-10
    # here); beside columns of variance ~1e-14 that residue would change the answer (0.50 instead
    # of 0.57) unless constant columns are zeroed, as AF.cka does.
    g = torch.Generator().manual_seed(14)
    n = 30000
    varying = 1e-7 * torch.randn(n, 2, generator=g, dtype=F64)
    y = varying @ torch.randn(2, 3, generator=g, dtype=F64) + 1e-7 * torch.randn(n, 3, generator=g, dtype=F64)
    x = torch.cat([torch.full((n, 1), 7.7, dtype=F64), varying], 1)
    metric = StreamingLinearCKA()
    _stream(metric, x.float(), y.float(), [10007, 10007, n - 20014])
    assert metric.compute().item() == pytest.approx(AF.cka(varying, y).item(), abs=1e-5)


def test_streaming_linear_cka_reset_starts_over() -> None:
    x, y = _pair(80, 6, 6, seed=6)
    metric = StreamingLinearCKA()
    _stream(metric, x[:40], y[:40], [40])
    first = metric.compute().item()
    metric.reset()
    with pytest.raises(ValueError, match="at least one update"):
        metric.compute()
    _stream(metric, x[40:], y[40:], [10, 30])
    second = metric.compute().item()
    assert second == pytest.approx(_ref_linear_cka(x[40:].numpy(), y[40:].numpy()), abs=1e-10)
    assert abs(second - first) > 1e-3  # the halves differ, so a missed reset would show


def test_streaming_linear_cka_state_dict_round_trip_then_continue() -> None:
    x, y = _pair(90, 5, 7, seed=7)
    metric = StreamingLinearCKA()
    _stream(metric, x[:50], y[:50], [20, 30])
    buffer = io.BytesIO()
    torch.save(metric.state_dict(), buffer)
    buffer.seek(0)
    restored = StreamingLinearCKA()
    restored.load_state_dict(torch.load(buffer))
    assert restored.compute().item() == pytest.approx(metric.compute().item(), abs=1e-14)
    _stream(restored, x[50:], y[50:], [40])
    assert restored.compute().item() == pytest.approx(_ref_linear_cka(x.numpy(), y.numpy()), abs=1e-10)
    with pytest.raises(ValueError, match="missing"):
        restored.load_state_dict({"n": torch.tensor(3)})


def test_streaming_linear_cka_bad_input_names_the_argument() -> None:
    x, y = _pair(20, 5, 3)
    metric = StreamingLinearCKA()
    metric.update(x[:10], y[:10])
    with pytest.raises(ValueError, match=r"x must keep the width .* 5 columns, got shape \(10, 4\)"):
        metric.update(x[10:, :4], y[10:])
    with pytest.raises(ValueError, match=r"y must keep the width .* 3 columns"):
        metric.update(x[10:], y[10:, :2])
    with pytest.raises(ValueError, match=r"x and y must have the same number of rows"):
        metric.update(x[10:], y[11:])
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\), got \(20,\)"):
        metric.update(x[:, 0], y)
    with pytest.raises(ValueError, match=r"y must be a torch.Tensor"):
        metric.update(x, y.numpy())
    bad = y.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"y has 1 non-finite"):
        metric.update(x, bad)
    # nothing above was accumulated
    assert int(metric.n) == 10


def test_metric_device_mismatch_raises_after_first_update() -> None:
    x, y = _pair(10, 3, 3)
    metric = StreamingLinearCKA()
    metric.update(x, y)
    metric.to("meta")
    assert metric.device == torch.device("meta")
    with pytest.raises(ValueError, match=r"x is on cpu but StreamingLinearCKA's state is on meta"):
        metric.update(x, y)


# --------------------------------------------------------------------------------------------------
# MultiLayerCKA


def test_multilayer_cka_matrix_equals_reference_for_every_pair() -> None:
    g = torch.Generator().manual_seed(8)
    n = 45
    a = [torch.randn(n, d, generator=g, dtype=F64) for d in (3, 6)]
    b = [a[0] @ torch.randn(3, 4, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64), a[1]]
    metric = MultiLayerCKA(2, 3)
    start = 0
    for size in (1, 2, 20, 22):
        metric.update([t[start : start + size] for t in a], [t[start : start + size] for t in b])
        start += size
    matrix = metric.compute()
    assert matrix.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert matrix[i, j].item() == pytest.approx(
                _ref_linear_cka(a[i].numpy(), b[j].numpy()), abs=1e-10
            )
    assert matrix[1, 2].item() == pytest.approx(1.0, abs=1e-12)


def test_multilayer_cka_bad_input() -> None:
    with pytest.raises(ValueError, match="num_a"):
        MultiLayerCKA(0, 2)
    metric = MultiLayerCKA(1, 2)
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"features_b must hold 2 tensors"):
        metric.update([x], [x])
    with pytest.raises(ValueError, match=r"features_a must be a list"):
        metric.update(x, [x, x])  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"features_a\[0\] and features_b\[1\] must have the same number of rows"
    ):
        metric.update([x], [x, x[:4]])


# --------------------------------------------------------------------------------------------------
# MinibatchCKA


@pytest.mark.parametrize(("kernel", "threshold"), [("linear", 1.0), ("rbf", 1.0), ("rbf", 0.5)])
def test_minibatch_cka_one_batch_equals_u_centred_reference(kernel: str, threshold: float) -> None:
    x, y = _pair(13, 4, 3, seed=9)
    metric = MinibatchCKA(kernel, threshold=threshold)
    metric.update(x, y)
    hxy, hxx, hyy = _ref_hsics(x, y, kernel, threshold)
    expected = hxy / math.sqrt(hxx * hyy)
    value = metric.compute()
    assert value.dtype == F64
    assert value.item() == pytest.approx(expected, abs=1e-10)
    assert value.item() == pytest.approx(
        AF.cka(x, y, kernel=kernel, unbiased=True, threshold=threshold).item(), abs=1e-10
    )


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_minibatch_cka_many_batches_equals_formula_by_hand(kernel: str) -> None:
    x, y = _pair(64, 5, 4, seed=10)
    sizes = [4, 7, 20, 33]  # unequal: the per-batch HSIC must be normalised, not just the ratio
    metric = MinibatchCKA(kernel)
    per_batch = []
    start = 0
    for size in sizes:
        metric.update(x[start : start + size], y[start : start + size])
        per_batch.append(_ref_hsics(x[start : start + size], y[start : start + size], kernel, 1.0))
        start += size
    m_xy, m_xx, m_yy = (float(np.mean([h[i] for h in per_batch])) for i in range(3))
    assert metric.compute().item() == pytest.approx(m_xy / math.sqrt(m_xx * m_yy), abs=1e-10)
    assert int(metric.count) == len(sizes)
    assert metric.hsic_xy.item() == pytest.approx(sum(h[0] for h in per_batch), rel=1e-10)


def test_minibatch_cka_kornblith_notebook_debiased_value() -> None:
    x, y = _kornblith_notebook()
    metric = MinibatchCKA()
    metric.update(x, y)
    assert metric.compute().item() == pytest.approx(0.51346, abs=5e-6)


def test_minibatch_cka_float32_and_half_input() -> None:
    x, y = _pair(40, 6, 5, seed=11)
    exact = MinibatchCKA()
    exact.update(x, y)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        metric = MinibatchCKA()
        metric.update(x.to(dtype), y.to(dtype))
        value = metric.compute()
        assert torch.isfinite(value) and value.dtype == F64
        assert value.item() == pytest.approx(exact.compute().item(), abs=tol)


def test_minibatch_cka_constant_side_gives_zero() -> None:
    metric = MinibatchCKA()
    metric.update(torch.zeros(8, 3), torch.randn(8, 2))
    assert metric.compute().item() == 0.0


def test_minibatch_cka_bad_input_and_reset() -> None:
    with pytest.raises(ValueError, match="kernel"):
        MinibatchCKA("cosine")
    with pytest.raises(ValueError, match="threshold"):
        MinibatchCKA("rbf", threshold=0.0)
    metric = MinibatchCKA()
    with pytest.raises(ValueError, match=r"x must have at least 4 rows .*minibatch.*got shape \(3, 2\)"):
        metric.update(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"x and y must have the same number of rows"):
        metric.update(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="at least one update"):
        metric.compute()
    x, y = _pair(20, 3, 3, seed=12)
    metric.update(x[:10], y[:10])
    state = metric.state_dict()
    metric.update(x[10:], y[10:])
    metric.reset()
    assert int(metric.count) == 0 and metric.hsic_xx.item() == 0.0
    metric.load_state_dict(state)
    one = MinibatchCKA()
    one.update(x[:10], y[:10])
    assert metric.compute().item() == pytest.approx(one.compute().item(), abs=1e-14)
    assert "kernel='linear'" in repr(metric)


# --------------------------------------------------------------------------------------------------
# RetrievalMetric


@pytest.mark.parametrize("metric_name", ["cosine", "dot", "euclidean"])
def test_retrieval_metric_equals_recall_at_k_on_concatenated_rows(metric_name: str) -> None:
    g = torch.Generator().manual_seed(13)
    gallery = torch.randn(57, 8, generator=g)
    query = gallery + 0.8 * torch.randn(57, 8, generator=g)
    metric = RetrievalMetric(k=(1, 5, 10), metric=metric_name)
    _stream(metric, query, gallery, [1, 2, 30, 24])
    got = metric.compute()
    assert got == AF.recall_at_k(query, gallery, k=(1, 5, 10), metric=metric_name)
    if metric_name == "cosine":
        for k in (1, 5, 10):
            assert got[f"recall@{k}"] == pytest.approx(_ref_recall(query, gallery, k), abs=1e-12)
        assert 0.0 < got["recall@1"] < got["recall@10"] < 1.0  # a non-trivial case


def test_retrieval_metric_bad_input_reset_and_state_dict() -> None:
    with pytest.raises(ValueError, match="k must be an integer"):
        RetrievalMetric(k=0)
    with pytest.raises(ValueError, match="k must be an integer or a non-empty"):
        RetrievalMetric(k=())
    with pytest.raises(ValueError, match="metric"):
        RetrievalMetric(metric="manhattan")
    metric = RetrievalMetric(k=2)
    q = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"query and gallery must have the same shape"):
        metric.update(q, q[:5])
    metric.update(q, q)
    with pytest.raises(ValueError, match=r"query must keep the width .* 4 columns"):
        metric.update(q[:, :3], q[:, :3])
    state = metric.state_dict()
    metric.reset()
    with pytest.raises(ValueError, match="at least one update"):
        metric.compute()
    metric.load_state_dict(state)
    assert metric.compute()["recall@2"] == 1.0
    small = RetrievalMetric(k=10)
    small.update(q, q)
    with pytest.raises(ValueError, match="k must be an integer in"):
        small.compute()


# --------------------------------------------------------------------------------------------------
# Metric base


class _Probe(Metric):
    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), "sum")
        self.add_state("rows", [], "cat")

    def update(self, x: torch.Tensor) -> None:
        self.total = self.total + x.sum()
        self.rows.append(x)

    def _compute(self) -> tuple[float, int]:
        return float(self.total), int(torch.cat(self.rows).shape[0])


def test_metric_add_state_validation_and_single_process_sync_is_a_no_op() -> None:
    probe = _Probe()
    with pytest.raises(ValueError, match="reduction must be one of"):
        probe.add_state("other", torch.tensor(0.0), "mean")
    with pytest.raises(ValueError, match="empty list"):
        probe.add_state("other", torch.tensor(0.0), "cat")
    with pytest.raises(ValueError, match="must be a tensor"):
        probe.add_state("other", [], "sum")
    with pytest.raises(ValueError, match="already"):
        probe.add_state("total", torch.tensor(0.0), "sum")
    probe.update(torch.ones(2, 3))
    probe.update(torch.ones(1, 3))
    probe.sync()  # no process group: nothing to merge
    assert probe.compute() == (9.0, 3)
    assert [t.shape[0] for t in probe.rows] == [2, 1]
    with pytest.raises(TypeError, match="abstract"):  # update and _compute must be defined
        Metric()


def test_streaming_linear_cka_is_exact_when_means_dwarf_the_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Column means 10⁶× the spread: raw sums S − N·μμᵀ would lose ~1e-4; grouped scatter does not.
    The reference is the CKA of the same data before the offset was added (CKA ignores offsets)."""
    import alignkit.metrics.cka as cka_module

    g = torch.Generator().manual_seed(0)
    base_x = torch.randn(640, 5, generator=g, dtype=torch.float64)
    base_y = torch.randn(640, 3, generator=g, dtype=torch.float64) + 0.3 * base_x[:, :3]
    expected = float(AF.cka(base_x, base_y))
    x, y = base_x + 1e6, base_y - 3e6
    values = []
    for max_groups, kept in ((1, 1), (10, 2), (10_000, 92)):  # merged each batch / every 10 / never
        monkeypatch.setattr(cka_module, "_MAX_GROUPS", max_groups)
        metric = StreamingLinearCKA()
        for a, b in zip(x.split(7), y.split(7), strict=True):  # 92 batches
            metric.update(a, b)
        assert len(metric.group_counts) == kept
        values.append(float(metric.compute()))
    for value in values:
        assert value == pytest.approx(expected, rel=1e-8)
