"""Retrieval metrics, alignment/uniformity and the linear probe against slow float64 references written
here, pytorch-metric-learning's AccuracyCalculator and scikit-learn's LogisticRegression."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import alignkit.functional as AF
import alignkit.functional.neighbors as neighbors
import alignkit.functional.retrieval as retrieval

# --------------------------------------------------------------------------------------------------
# References (float64, loops)


def scores64(q: torch.Tensor, g: torch.Tensor, metric: str) -> list[list[float]]:
    q, g = q.double(), g.double()
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-8)
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return (q @ g.T).tolist()
    if metric == "dot":
        return (q @ g.T).tolist()
    return (-((q[:, None, :] - g[None, :, :]) ** 2).sum(-1).sqrt()).tolist()


def retrieval_ref(
    q: torch.Tensor, g: torch.Tensor, positives: list[list[int]], ks: tuple[int, ...], metric: str = "cosine"
) -> dict[str, float]:
    """Sort every row in Python, highest score first, negatives before positives on ties."""
    firsts, aps = [], []
    for row, pos in zip(scores64(q, g, metric), positives, strict=True):
        pos_set = set(pos)
        order = sorted(range(len(row)), key=lambda j, row=row: (-row[j], j in pos_set))
        ranks = [place + 1 for place, j in enumerate(order) if j in pos_set]
        firsts.append(ranks[0])
        aps.append(sum(r / rank for r, rank in enumerate(ranks, start=1)) / len(ranks))
    out = {f"recall@{k}": sum(f <= k for f in firsts) / len(firsts) for k in ks}
    out["median_rank"] = float(statistics.median(firsts))
    out["mean_rank"] = sum(firsts) / len(firsts)
    out["map"] = sum(aps) / len(aps)
    return out


def assert_same(got: dict[str, float], ref: dict[str, float], tol: float = 1e-12) -> None:
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(value, abs=tol), key


# --------------------------------------------------------------------------------------------------
# recall_at_k


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_recall_one_positive_matches_loop(metric: str, chunk_size: int | None) -> None:
    q = torch.randn(40, 6, dtype=torch.float64)
    g = q + 1.2 * torch.randn(40, 6, dtype=torch.float64)
    ref = retrieval_ref(q, g, [[i] for i in range(40)], (1, 5, 10), metric)
    assert 0 < ref["recall@1"] < ref["recall@10"] < 1  # a non-trivial case
    got = AF.recall_at_k(q, g, metric=metric, chunk_size=chunk_size)
    assert list(got) == ["recall@1", "recall@5", "recall@10", "median_rank", "mean_rank", "map"]
    assert_same(got, ref)


@pytest.mark.parametrize("chunk_size", [None, 1, 5])
def test_recall_several_positives_matches_loop(chunk_size: int | None) -> None:
    """Image→text style: 12 images, 3 captions each plus distractors; M ≠ N."""
    images = torch.randn(12, 8, dtype=torch.float64)
    captions = images.repeat_interleave(3, 0) + 0.9 * torch.randn(36, 8, dtype=torch.float64)
    captions = torch.cat([captions, torch.randn(6, 8, dtype=torch.float64)])  # 6 unmatched captions
    lists = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(12)]
    lists[4] = [13]  # one query with a single (wrong-ish) positive
    mask = torch.zeros(12, 42, dtype=torch.bool)
    for i, row in enumerate(lists):
        mask[i, row] = True
    for metric in ("cosine", "euclidean"):
        ref = retrieval_ref(images, captions, lists, (1, 3, 10), metric)
        assert 0 < ref["map"] < 1
        from_lists = AF.recall_at_k(images, captions, (1, 3, 10), lists, metric, chunk_size)
        from_mask = AF.recall_at_k(images, captions, (1, 3, 10), mask, metric, chunk_size)
        assert_same(from_lists, ref)
        assert_same(from_mask, ref)
        as_arrays = [np.array(row) for row in lists]  # numpy integer rows are accepted too
        assert_same(AF.recall_at_k(images, captions, (1, 3, 10), as_arrays, metric, chunk_size), ref)
    # text→image: one positive per caption given as an (N,) index tensor
    owner = torch.arange(36) // 3
    ref = retrieval_ref(captions[:36], images, [[int(i)] for i in owner], (1, 5))
    assert_same(AF.recall_at_k(captions[:36], images, (1, 5), owner, chunk_size=chunk_size), ref)


def test_recall_ties_count_against() -> None:
    """Integer features with metric="dot": scores are exact, so ties are real ties."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # query 0: scores [1, 1, 1, 0], positive 0 → tied with two negatives → rank 3
    # query 1: scores [0, 0, 0, 1], positive 3 → rank 1
    # query 2: scores [1, 1, 1, 1], positive 3 → rank 4 (a constant score gets the worst rank)
    out = AF.recall_at_k(q, g, k=(1, 3), positives=[[0], [3], [3]], metric="dot")
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert out["median_rank"] == 3.0 and out["mean_rank"] == pytest.approx(8 / 3)
    assert out["map"] == pytest.approx((1 / 3 + 1 + 1 / 4) / 3)
    # several positives tied with a negative: the negative goes first, positives at ranks 2 and 3
    multi = AF.recall_at_k(q, g, k=1, positives=[[0, 2], [3], [3]], metric="dot")
    assert multi["mean_rank"] == pytest.approx((2 + 1 + 4) / 3)
    assert multi["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 + 1 / 4) / 3)
    ref = retrieval_ref(q, g, [[0, 2], [3], [3]], (1,), "dot")
    assert_same(multi, ref)
    # an all-zero query under cosine: every score is 0, the positive ranks last
    zero = AF.recall_at_k(torch.zeros(1, 2), g[:3], k=1, positives=[[1]])
    assert zero["mean_rank"] == 3.0 and zero["recall@1"] == 0.0


def test_recall_ties_random_integer_features() -> None:
    q = torch.randint(-2, 3, (30, 3)).double()
    g = torch.randint(-2, 3, (25, 3)).double()
    lists = [sorted({int(torch.randint(0, 25, ()).item()) for _ in range(1 + i % 3)}) for i in range(30)]
    ref = retrieval_ref(q, g, lists, (1, 2, 5), "dot")
    assert_same(AF.recall_at_k(q, g, (1, 2, 5), lists, "dot", chunk_size=4), ref)
    singles = [[row[0]] for row in lists]
    ref = retrieval_ref(q, g, singles, (1, 2, 5), "dot")
    assert_same(AF.recall_at_k(q.float(), g.float(), (1, 2, 5), singles, "dot"), ref)


def test_recall_matches_pytorch_metric_learning() -> None:
    """PML's precision_at_1 is our recall@1 when the positives are the same-label gallery items, and
    its mean_average_precision over k = M retrieved items is our map (PML's default k is the largest
    label count; here every gallery item is retrieved, so AP runs over all positives)."""
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    centers = torch.randn(6, 16)
    q_labels, g_labels = torch.randint(0, 6, (80,)), torch.cat([torch.arange(6), torch.randint(0, 6, (64,))])
    q = centers[q_labels] + 1.5 * torch.randn(80, 16)
    g = centers[g_labels] + 1.5 * torch.randn(70, 16)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision"), k=70, knn_func=CustomKNN(CosineSimilarity())
    )
    peer = calculator.get_accuracy(q, q_labels, g, g_labels)
    ours = AF.recall_at_k(q, g, k=1, positives=q_labels[:, None] == g_labels[None, :])
    assert 0 < ours["map"] < 1
    assert ours["recall@1"] == pytest.approx(peer["precision_at_1"], abs=1e-9)
    assert ours["map"] == pytest.approx(peer["mean_average_precision"], abs=1e-6)


def test_recall_default_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    q, g = torch.randn(50, 4), torch.randn(50, 4)
    whole = AF.recall_at_k(q, g, chunk_size=1000)
    monkeypatch.setattr(neighbors, "_TILE_BYTES", 50 * 4 * 16)  # tiles of 16 rows × 50 columns
    calls = []
    original = torch.Tensor.__matmul__

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(a.shape[0])
        return original(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    blocked = AF.recall_at_k(q, g)
    assert calls == [16] * 4  # the last block is shifted back to rows 34–49: every tile one shape
    assert blocked == whole


def test_recall_small_zero_and_half() -> None:
    assert AF.recall_at_k(torch.randn(1, 3), torch.randn(1, 3), k=1)["recall@1"] == 1.0
    two = AF.recall_at_k(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), k=1)
    assert two == {"recall@1": 0.0, "median_rank": 2.0, "mean_rank": 2.0, "map": 0.5}
    q = torch.randn(60, 16)
    g = q + 0.3 * torch.randn(60, 16)
    q[5] = 0
    ref = AF.recall_at_k(q, g, k=(1, 5))
    assert all(math.isfinite(v) for v in ref.values())
    for dtype in (torch.float16, torch.bfloat16):
        half = AF.recall_at_k(q.to(dtype), g.to(dtype), k=(1, 5))
        for key in ref:
            assert half[key] == pytest.approx(ref[key], rel=0.05, abs=0.05)


def test_recall_bad_input() -> None:
    q, g = torch.randn(10, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"positives=None pairs query i with gallery i.*N = 10 and M = 8"):
        AF.recall_at_k(q, g, k=1)
    with pytest.raises(ValueError, match=r"positives must have shape \(10, 8\)"):
        AF.recall_at_k(q, g, k=1, positives=torch.zeros(10, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"positives as an .* must be a bool tensor"):
        AF.recall_at_k(q, g, k=1, positives=torch.zeros(10, 8))
    with pytest.raises(ValueError, match="positives must give every query at least one positive; query 0"):
        AF.recall_at_k(q, g, k=1, positives=torch.zeros(10, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"positives must hold one index list per query \(10\)"):
        AF.recall_at_k(q, g, k=1, positives=[[0]] * 9)
    with pytest.raises(ValueError, match=r"positives must index the gallery.*\[0, 7\], got index 8"):
        AF.recall_at_k(q, g, k=1, positives=[[8]] * 10)
    with pytest.raises(ValueError, match=r"positives\[2\] must be a list of integer"):
        AF.recall_at_k(q, g, k=1, positives=[[0], [1], [0.5]] + [[0]] * 7)
    with pytest.raises(ValueError, match="query 3"):
        AF.recall_at_k(q, g, k=1, positives=[[0], [1], [2], []] + [[0]] * 6)
    with pytest.raises(ValueError, match=r"positives as an .* must hold integer gallery indices"):
        AF.recall_at_k(q, g, k=1, positives=torch.zeros(10))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 8\]"):
        AF.recall_at_k(q, g, k=(1, 9), positives=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be"):
        AF.recall_at_k(q, g, k=0, positives=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be an integer or a non-empty sequence"):
        AF.recall_at_k(q, g, k=(), positives=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="metric must be one of"):
        AF.recall_at_k(q, q, metric="hamming")
    with pytest.raises(ValueError, match="query and gallery must have the same feature width"):
        AF.recall_at_k(q, torch.randn(10, 5))
    with pytest.raises(ValueError, match=r"query must have shape \(N, d\)"):
        AF.recall_at_k(torch.randn(10), g)
    with pytest.raises(ValueError, match="gallery has 1 non-finite"):
        AF.recall_at_k(q, torch.cat([q[:-1], torch.tensor([[math.nan, 0, 0, 0]])]))


# --------------------------------------------------------------------------------------------------
# alignment_uniformity


def wang_isola(x: torch.Tensor, y: torch.Tensor, alpha: float, t: float) -> dict[str, torch.Tensor]:
    """The paper's align_loss / uniform_loss on normalised rows, via torch.pdist."""
    xh, yh = F.normalize(x.double(), dim=1, eps=1e-8), F.normalize(y.double(), dim=1, eps=1e-8)
    ux = torch.pdist(xh, p=2).pow(2).mul(-t).exp().mean().log()
    uy = torch.pdist(yh, p=2).pow(2).mul(-t).exp().mean().log()
    return {
        "alignment": (xh - yh).norm(p=2, dim=1).pow(alpha).mean(),
        "uniformity_x": ux,
        "uniformity_y": uy,
        "uniformity": (ux + uy) / 2,
    }


@pytest.mark.parametrize(("alpha", "t"), [(2.0, 2.0), (1.0, 0.5), (3.0, 5.0)])
@pytest.mark.parametrize("chunk_size", [None, 1, 6])
def test_alignment_uniformity_matches_pdist(alpha: float, t: float, chunk_size: int | None) -> None:
    x = torch.randn(23, 5, dtype=torch.float64)
    y = x + 0.5 * torch.randn(23, 5, dtype=torch.float64)
    got = AF.alignment_uniformity(x, y, alpha=alpha, t=t, chunk_size=chunk_size)
    ref = wang_isola(x, y, alpha, t)
    assert list(got) == ["alignment", "uniformity_x", "uniformity_y", "uniformity"]
    for key in ref:
        assert got[key].dtype == torch.float64 and got[key].dim() == 0
        torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=1e-12)


def test_uniformity_double_loop() -> None:
    x = torch.randn(9, 3, dtype=torch.float64)
    rows = [[v / math.sqrt(sum(c * c for c in r)) for v in r] for r in x.tolist()]
    pairs = [
        math.exp(-2 * sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True)))
        for i in range(9)
        for j in range(i + 1, 9)
    ]
    ref = math.log(sum(pairs) / len(pairs))
    assert float(AF.alignment_uniformity(x, x, chunk_size=2)["uniformity_x"]) == pytest.approx(ref, abs=1e-12)


def test_uniformity_gradcheck_and_gradient() -> None:
    z = F.normalize(torch.randn(7, 3, dtype=torch.float64), dim=1).requires_grad_()
    for block in (1, 3, 7):
        assert torch.autograd.gradcheck(
            lambda a, b=block: retrieval._StreamingUniformity.apply(a, 1.5, b), (z,)
        )
    x = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    for alpha in (2.0, 1.0):
        got = AF.alignment_uniformity(x, y, alpha=alpha, chunk_size=3)
        grads = torch.autograd.grad(got["alignment"] + got["uniformity"], (x, y))
        ref = wang_isola(x, y, alpha, 2.0)
        refs = torch.autograd.grad(ref["alignment"] + ref["uniformity"], (x, y))
        for a, b in zip(grads, refs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b: (
            AF.alignment_uniformity(a, b, alpha=3.0, t=1.0, chunk_size=4)["uniformity"]
            + AF.alignment_uniformity(a, b, alpha=3.0)["alignment"]
        ),
        (x[:8].detach().requires_grad_(), y[:8].detach().requires_grad_()),
    )


def test_alignment_uniformity_zero_small_half() -> None:
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    got = AF.alignment_uniformity(x, y, t=3.0)
    xh = F.normalize(x, dim=1)
    assert float(got["uniformity_x"]) == pytest.approx(-3.0 * float((xh[0] - xh[1]).square().sum()))
    z = torch.randn(6, 4, requires_grad=True)
    w = z.detach().clone()
    w[0] = 0
    for alpha in (2.0, 0.5):  # x̂_i = ŷ_i for rows 1.. and a zero row: finite values and gradients
        out = AF.alignment_uniformity(z, w, alpha=alpha)
        total = sum(out.values())
        assert torch.isfinite(total)
        (grad,) = torch.autograd.grad(total, z)
        assert torch.isfinite(grad).all()
    x, y = torch.randn(30, 8), torch.randn(30, 8)
    ref = AF.alignment_uniformity(x, y)
    for dtype in (torch.float16, torch.bfloat16):
        half = AF.alignment_uniformity(x.to(dtype), y.to(dtype), chunk_size=7)
        for key in ref:
            assert half[key].dtype == dtype and torch.isfinite(half[key])
            torch.testing.assert_close(half[key].float(), ref[key], rtol=0.02, atol=0.02)


def test_alignment_uniformity_bad_input() -> None:
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="x must have at least 2 row"):
        AF.alignment_uniformity(x[:1], x[:1])
    with pytest.raises(ValueError, match=r"x and y must have the same shape, got \(5, 3\) and \(5, 4\)"):
        AF.alignment_uniformity(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        AF.alignment_uniformity(x, x, alpha=0)
    with pytest.raises(ValueError, match="t must be a finite number > 0"):
        AF.alignment_uniformity(x, x, t=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be"):
        AF.alignment_uniformity(x, x, chunk_size=0)
    with pytest.raises(ValueError, match="y has 1 non-finite"):
        AF.alignment_uniformity(x, torch.cat([x[:4], torch.tensor([[math.inf, 0, 0]])]))


# --------------------------------------------------------------------------------------------------
# linear_probe


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float64)
    y = torch.tensor(data.target, dtype=torch.long)
    return x[:1200], y[:1200], x[1200:], y[1200:]


def test_linear_probe_matches_sklearn_on_digits() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    train_x, train_y, test_x, test_y = _digits()
    decay = 1e-3
    ours = AF.linear_probe(train_x, train_y, test_x, test_y, weight_decay=decay)

    scaler = StandardScaler().fit(train_x.numpy())
    clf = LogisticRegression(C=1 / (decay * len(train_x)), max_iter=10_000, tol=1e-10)
    with threadpool_limits(1):  # BLAS threads oversubscribe the 2 shared CI cores
        clf.fit(scaler.transform(train_x.numpy()), train_y.numpy())
    theirs = clf.score(scaler.transform(test_x.numpy()), test_y.numpy())
    assert 0.85 < ours < 1.0
    assert ours == pytest.approx(theirs, abs=1.5 / len(test_y))  # at most one test sample apart
    # the fitted model itself: same convex problem, same optimum
    standard = torch.tensor(scaler.transform(train_x.numpy()))
    weight, bias = retrieval._fit_logistic(standard, train_y, 10, decay, 1000)
    coef = torch.tensor(clf.coef_)
    torch.testing.assert_close(weight.T, coef, rtol=0, atol=2e-3 * float(coef.abs().max()))
    intercept = torch.tensor(clf.intercept_)
    torch.testing.assert_close(bias - bias.mean(), intercept - intercept.mean(), rtol=0, atol=2e-3)


def test_linear_probe_deterministic_labels_and_dtypes() -> None:
    train_x, train_y, test_x, test_y = _digits()
    opts = {"weight_decay": 1e-2, "max_iter": 200}
    a = AF.linear_probe(train_x, train_y, test_x, test_y, **opts)
    assert 0.85 < a < 1
    assert a == AF.linear_probe(train_x, train_y, test_x, test_y, **opts)
    assert a == AF.linear_probe(train_x, train_y * 3 + 7, test_x, test_y * 3 + 7, **opts)  # any label values
    single = AF.linear_probe(train_x.float(), train_y, test_x.float(), test_y, **opts)
    assert single == pytest.approx(a, abs=0.01)
    # a test label never seen in training is always wrong
    shifted = test_y.clone()
    shifted[:10] = 99
    assert AF.linear_probe(train_x, train_y, test_x, shifted, **opts) <= a - 0.9 * 10 / len(test_y) + 1e-12
    # separable toy data, no standardisation
    x = torch.cat([torch.randn(20, 2) + 5, torch.randn(20, 2) - 5])
    y = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    assert AF.linear_probe(x, y, x, y, standardize=False) == 1.0
    assert AF.linear_probe(x[[0, 39]], y[[0, 39]], x, y, standardize=False) == 1.0  # batch of 2


def test_linear_probe_bad_input() -> None:
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    y[0], y[1] = 0, 1
    with pytest.raises(ValueError, match="train_y must hold integer class labels"):
        AF.linear_probe(x, y.float(), x, y)
    with pytest.raises(ValueError, match=r"test_y must have shape \(10,\)"):
        AF.linear_probe(x, y, x, y[:9])
    with pytest.raises(ValueError, match="train_y must contain at least 2 classes"):
        AF.linear_probe(x, torch.zeros(10, dtype=torch.long), x, y)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        AF.linear_probe(x, y, x, y, weight_decay=-1.0)
    with pytest.raises(ValueError, match="max_iter must be"):
        AF.linear_probe(x, y, x, y, max_iter=0)
    with pytest.raises(ValueError, match="train_x and test_x must have the same feature width"):
        AF.linear_probe(x, y, torch.randn(10, 4), y)
    with pytest.raises(ValueError, match=r"train_y must be a torch\.Tensor"):
        AF.linear_probe(x, y.tolist(), x, y)  # type: ignore[arg-type]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_recall_tiled_ranks_match_full_form(monkeypatch: pytest.MonkeyPatch, metric: str) -> None:
    """Column tiles (kept positive tiles, shifted last tile) and the full-width fallback for scattered
    positives rank exactly as the slow reference."""
    monkeypatch.setattr(neighbors, "_TILE_COLS", 64)
    q, g = torch.randn(150, 8, dtype=torch.float64), torch.randn(300, 8, dtype=torch.float64)
    diagonal_like = torch.arange(150) * 2  # positives of a block fall in one or two tiles
    scattered = torch.randperm(300)[:150]  # positives in every tile: full-width fallback
    for positives in (diagonal_like, scattered):
        for chunk in (None, 7, 150):
            got = AF.recall_at_k(q, g, k=(1, 5), positives=positives, metric=metric, chunk_size=chunk)
            assert_same(got, retrieval_ref(q, g, [[int(p)] for p in positives], (1, 5), metric))


def test_recall_equal_gallery_rows_tie_across_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies of the positive anywhere in the gallery tie with it exactly and count against it."""
    monkeypatch.setattr(neighbors, "_TILE_COLS", 128)
    q, g = torch.randn(1, 32, dtype=torch.float64), torch.randn(1000, 32, dtype=torch.float64)
    g[1::97] = g[0]  # 11 copies of query 0's positive, in several tiles
    better = int((g @ q[0] > g[0] @ q[0]).sum())
    for positive in (0, 1 + 97 * 9):  # the positive in the first tile, or a copy in the last one
        got = AF.recall_at_k(q, g, k=1, positives=torch.tensor([positive]), metric="dot")
        assert got["mean_rank"] == better + 12  # itself and its 11 copies count against it
