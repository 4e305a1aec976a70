"""Point-to-point objectives (alignkit.functional.losses, alignkit.losses.micro).

Each loss is compared with a slow reference written here (Python floats, one pair / triplet at a
time) and, where pytorch-metric-learning implements the same loss, with it. PML conventions that
differ from ours are set or converted explicitly, and said so next to the comparison.
"""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_metric_learning.losses as pml_losses
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances, miners, reducers

import alignkit.functional as AF
from alignkit import losses

# --------------------------------------------------------------------------------------------------
# Slow references (Python floats; every formula written out pair by pair)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def _cos(u: list[float], v: list[float]) -> float:
    nu, nv = math.sqrt(_dot(u, u)), math.sqrt(_dot(v, v))
    return _dot(u, v) / (nu * nv) if nu > 0 and nv > 0 else 0.0


def _dist(u: list[float], v: list[float], metric: str) -> float:
    sq = sum((a - b) ** 2 for a, b in zip(u, v, strict=True))
    if metric == "euclidean":
        return math.sqrt(sq)
    if metric == "squared":
        return sq
    return 1.0 - _cos(u, v)


def _rows(t: torch.Tensor) -> list[list[float]]:
    return t.double().tolist()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _ref_soft_nn_kl(x: torch.Tensor, y: torch.Tensor, tau: float) -> list[float]:
    xs, ys = _rows(x), _rows(y)
    n = len(xs)
    s = [[_cos(xs[a], ys[b]) for b in range(n)] for a in range(n)]
    out = []
    for i in range(n):
        zp = sum(math.exp(s[i][j] / tau) for j in range(n))
        zq = sum(math.exp(s[j][i] / tau) for j in range(n))
        p = [math.exp(s[i][j] / tau) / zp for j in range(n)]
        q = [math.exp(s[j][i] / tau) / zq for j in range(n)]
        out.append(sum(p[j] * math.log(p[j] / q[j]) for j in range(n)))
    return out


def _ref_batch_triplet(
    e: torch.Tensor, labels: list[int], margin: float, metric: str, mining: str
) -> tuple[float, int, list[float]]:
    """(total loss, number of mined triplets, per-anchor sums), by enumerating every (a, p, n)."""
    rows = _rows(e)
    n = len(rows)
    d = [[_dist(rows[i], rows[j], metric) for j in range(n)] for i in range(n)]
    per_anchor = [0.0] * n
    count = 0
    for a in range(n):
        ps = [p for p in range(n) if p != a and labels[p] == labels[a]]
        ns = [k for k in range(n) if labels[k] != labels[a]]
        if not ps or not ns:
            continue
        if mining == "hard":
            per_anchor[a] = max(0.0, max(d[a][p] for p in ps) - min(d[a][k] for k in ns) + margin)
            count += 1
            continue
        for p in ps:
            for k in ns:
                if mining == "semi-hard" and not d[a][p] < d[a][k] < d[a][p] + margin:
                    continue
                per_anchor[a] += max(0.0, d[a][p] - d[a][k] + margin)
                count += 1
    return sum(per_anchor), count, per_anchor


def _labels(*counts: int) -> torch.Tensor:
    """Shuffled labels with the given number of rows per class."""
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    return labels[torch.randperm(len(labels))]


DISTANCES = ["euclidean", "squared", "cosine"]


def _pml_distance(metric: str) -> distances.BaseDistance:
    """PML's distance for ours. PML's LpDistance normalises embeddings by default: switched off.
    PML's CosineSimilarity is a similarity; its margins are the same as those of ``1 − cos``."""
    if metric == "euclidean":
        return distances.LpDistance(normalize_embeddings=False)
    if metric == "squared":
        return distances.LpDistance(normalize_embeddings=False, power=2)
    return distances.CosineSimilarity()


# --------------------------------------------------------------------------------------------------
# REPA, marginal cosine, BYOL


def test_repa_matches_loop_for_rows_and_tokens() -> None:
    x, y = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    per_token = [[-_cos(u, v) for u, v in zip(_rows(x[b]), _rows(y[b]), strict=True)] for b in range(2)]
    torch.testing.assert_close(
        AF.repa_loss(x, y, reduction="none"), torch.tensor(per_token, dtype=torch.float64)
    )
    every = [v for row in per_token for v in row]
    torch.testing.assert_close(AF.repa_loss(x, y), torch.tensor(_mean(every), dtype=torch.float64))
    flat = AF.repa_loss(x.reshape(10, 4), y.reshape(10, 4), reduction="sum")
    torch.testing.assert_close(flat, torch.tensor(sum(every), dtype=torch.float64))


def test_repa_is_minus_one_for_aligned_tokens_and_keeps_target_gradient() -> None:
    x = torch.randn(3, 7, 8)
    torch.testing.assert_close(AF.repa_loss(x, 2 * x), torch.tensor(-1.0))
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    AF.repa_loss(s, t).backward()
    assert s.grad is not None and t.grad is not None  # no stop-gradient inside (unlike BYOL)


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.5])
def test_marginal_cosine_matches_loop(margin: float) -> None:
    x, y = torch.randn(3, 6, 5, dtype=torch.float64), torch.randn(3, 6, 5, dtype=torch.float64)
    ref = [
        max(0.0, 1.0 - margin - _cos(u, v))
        for b in range(3)
        for u, v in zip(_rows(x[b]), _rows(y[b]), strict=True)
    ]
    got = AF.marginal_cosine_loss(x, y, margin=margin, reduction="none")
    assert got.shape == (3, 6)
    torch.testing.assert_close(got.flatten(), torch.tensor(ref, dtype=torch.float64))
    torch.testing.assert_close(
        AF.marginal_cosine_loss(x, y, margin=margin), torch.tensor(_mean(ref), dtype=torch.float64)
    )


def test_marginal_cosine_takes_a_flattened_feature_map_and_rejects_4d_with_a_hint() -> None:
    fmap_x, fmap_y = torch.randn(2, 8, 3, 4), torch.randn(2, 8, 3, 4)  # (B, C, H, W)
    tokens = AF.marginal_cosine_loss(
        fmap_x.flatten(2).transpose(1, 2), fmap_y.flatten(2).transpose(1, 2), margin=0.5, reduction="none"
    )
    assert tokens.shape == (2, 12)
    per_position = torch.relu(0.5 - torch.nn.functional.cosine_similarity(fmap_x, fmap_y, dim=1))
    torch.testing.assert_close(tokens, per_position.flatten(1))
    with pytest.raises(ValueError, match=r"x must have shape .* x\.flatten\(2\)\.transpose\(1, 2\)"):
        AF.marginal_cosine_loss(fmap_x, fmap_y)


def test_byol_matches_loop_and_detaches_target() -> None:
    p = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    ref = [2 - 2 * _cos(u, v) for u, v in zip(_rows(p), _rows(t), strict=True)]
    loss = AF.byol_loss(p, t)
    torch.testing.assert_close(loss, torch.tensor(_mean(ref), dtype=torch.float64))
    loss.backward()
    assert t.grad is None and p.grad is not None and torch.isfinite(p.grad).all()
    # 2 − 2cos is the squared distance of the normalised vectors (BYOL Eq. 2)
    pn, tn = torch.nn.functional.normalize(p, dim=1), torch.nn.functional.normalize(t, dim=1)
    torch.testing.assert_close(AF.byol_loss(p, t, reduction="none"), ((pn - tn) ** 2).sum(1).detach())


def test_cosine_losses_are_finite_for_zero_vectors() -> None:
    x, y = torch.zeros(4, 3, requires_grad=True), torch.randn(4, 3)
    for loss in (
        AF.repa_loss(x, y),
        AF.marginal_cosine_loss(x, y, margin=0.5),
        AF.byol_loss(x, y),
        AF.soft_nn_kl_loss(x, y),
    ):
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(grad).all()
    torch.testing.assert_close(AF.repa_loss(x, y), torch.tensor(0.0))  # cos with a zero vector is 0


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 8),
    d=st.integers(1, 6),
    a=st.floats(1e-3, 1e3),
    b=st.floats(1e-3, 1e3),
    margin=st.floats(0.0, 1.99),
)
def test_cosine_losses_bounds_and_scale_invariance(
    seed: int, n: int, d: int, a: float, b: float, margin: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64)
    repa = AF.repa_loss(x, y)
    mcos = AF.marginal_cosine_loss(x, y, margin=margin)
    byol = AF.byol_loss(x, y)
    kl = AF.soft_nn_kl_loss(x, y, temperature=0.5)
    assert -1 - 1e-12 <= repa <= 1 + 1e-12
    assert 0 <= mcos <= 2 - margin + 1e-12
    assert 0 <= byol <= 4 + 1e-12
    assert kl >= -1e-12
    torch.testing.assert_close(AF.repa_loss(a * x, b * y), repa)
    torch.testing.assert_close(AF.marginal_cosine_loss(a * x, b * y, margin=margin), mcos)
    torch.testing.assert_close(AF.byol_loss(a * x, b * y), byol)
    torch.testing.assert_close(AF.soft_nn_kl_loss(a * x, b * y, temperature=0.5), kl)


# --------------------------------------------------------------------------------------------------
# Soft nearest-neighbour KL


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_soft_nn_kl_matches_loop(tau: float) -> None:
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    ref = _ref_soft_nn_kl(x, y, tau)
    torch.testing.assert_close(
        AF.soft_nn_kl_loss(x, y, tau, reduction="none"), torch.tensor(ref, dtype=torch.float64)
    )
    torch.testing.assert_close(AF.soft_nn_kl_loss(x, y, tau), torch.tensor(_mean(ref), dtype=torch.float64))
    torch.testing.assert_close(
        AF.soft_nn_kl_loss(x, y, tau, reduction="sum"), torch.tensor(sum(ref), dtype=torch.float64)
    )


def test_soft_nn_kl_is_zero_for_identical_sides_and_positive_otherwise() -> None:
    x = torch.randn(12, 5)
    torch.testing.assert_close(AF.soft_nn_kl_loss(x, x.clone()), torch.tensor(0.0))  # S symmetric: p_i = q_i
    assert AF.soft_nn_kl_loss(x, torch.randn(12, 5)) > 0.01
    assert AF.soft_nn_kl_loss(x[:1], torch.randn(1, 5)) == 0  # one row: both distributions are [1]


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_soft_nn_kl_blocks_match_one_block_values_and_gradients(chunk: int) -> None:
    x = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(10, dtype=torch.float64)
    full = AF.soft_nn_kl_loss(x, y, 0.2, reduction="none")
    gx, gy = torch.autograd.grad((full * w).sum(), (x, y))
    blocked = AF.soft_nn_kl_loss(x, y, 0.2, reduction="none", chunk_size=chunk)  # recomputed in backward
    bx, by = torch.autograd.grad((blocked * w).sum(), (x, y))
    torch.testing.assert_close(blocked, full)
    torch.testing.assert_close(bx, gx)
    torch.testing.assert_close(by, gy)
    with torch.no_grad():
        torch.testing.assert_close(AF.soft_nn_kl_loss(x, y, 0.2, reduction="none", chunk_size=chunk), full)


def test_soft_nn_kl_automatic_blocks_above_2048_rows() -> None:
    x, y = torch.randn(2100, 3), torch.randn(2100, 3)
    torch.testing.assert_close(AF.soft_nn_kl_loss(x, y), AF.soft_nn_kl_loss(x, y, chunk_size=2100))


def test_soft_nn_kl_gradcheck() -> None:
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: AF.soft_nn_kl_loss(a, b, 0.3, chunk_size=2), (x, y))


# --------------------------------------------------------------------------------------------------
# Pair contrastive (Hadsell et al.)


@pytest.mark.parametrize("metric", DISTANCES)
def test_pair_contrastive_matches_loop(metric: str) -> None:
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    is_pos = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    m = 1.5
    ref = []
    for u, v, lab in zip(_rows(x), _rows(y), is_pos.tolist(), strict=True):
        dd = _dist(u, v, metric)
        ref.append(lab * dd**2 + (1 - lab) * max(0.0, m - dd) ** 2)
    got = AF.pair_contrastive_loss(x, y, is_pos, margin=m, distance=metric, reduction="none")
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    for labels in (is_pos.bool(), is_pos.double()):  # bool, int and float labels agree
        torch.testing.assert_close(
            AF.pair_contrastive_loss(x, y, labels, margin=m, distance=metric),
            torch.tensor(_mean(ref), dtype=torch.float64),
        )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_pair_contrastive_matches_pml_contrastive_loss_squared(metric: str) -> None:
    """PML's ContrastiveLoss(pos_margin=0, neg_margin=m) gives per-pair ``D`` and ``max(0, m − D)``
    without the square of Hadsell et al.; we read its unreduced per-pair losses (DoNothingReducer)
    and square them. For cosine PML works on the similarity s = 1 − D, so its margins become
    pos_margin = 1 (``relu(1 − s) = D``) and neg_margin = 1 − m (``relu(s − (1 − m)) = relu(m − D)``)."""
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
    is_pos = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 1]).bool()
    m = 2.0 if metric == "euclidean" else 0.8
    margins = (
        {"pos_margin": 0.0, "neg_margin": m}
        if metric == "euclidean"
        else {"pos_margin": 1.0, "neg_margin": 1 - m}
    )
    pml = pml_losses.ContrastiveLoss(
        **margins, distance=_pml_distance(metric), reducer=reducers.DoNothingReducer()
    )
    pos_idx, neg_idx = torch.where(is_pos)[0], torch.where(~is_pos)[0]
    out = pml(x, indices_tuple=(pos_idx, pos_idx, neg_idx, neg_idx), ref_emb=y)
    expected = torch.zeros(10, dtype=torch.float64)
    expected[pos_idx] = out["pos_loss"]["losses"] ** 2
    expected[neg_idx] = out["neg_loss"]["losses"] ** 2
    ours = AF.pair_contrastive_loss(x, y, is_pos, margin=m, distance=metric, reduction="none")
    torch.testing.assert_close(ours, expected)


# --------------------------------------------------------------------------------------------------
# Triplet loss on explicit triplets


@pytest.mark.parametrize("metric", DISTANCES)
def test_triplet_matches_loop_and_pml(metric: str) -> None:
    a, p, n = (torch.randn(12, 5, dtype=torch.float64) for _ in range(3))
    m = 0.4
    ref = [
        max(0.0, _dist(u, v, metric) - _dist(u, w, metric) + m)
        for u, v, w in zip(_rows(a), _rows(p), _rows(n), strict=True)
    ]
    got = AF.triplet_loss(a, p, n, margin=m, distance=metric, reduction="none")
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    # PML with the triplets as explicit indices into cat(a, p, n); MeanReducer averages over every
    # triplet as we do (its default AvgNonZeroReducer would skip the zero-loss ones).
    pml = pml_losses.TripletMarginLoss(
        margin=m, distance=_pml_distance(metric), reducer=reducers.MeanReducer()
    )
    idx = torch.arange(12)
    expected = pml(torch.cat([a, p, n]), indices_tuple=(idx, idx + 12, idx + 24))
    torch.testing.assert_close(AF.triplet_loss(a, p, n, margin=m, distance=metric), expected)


# --------------------------------------------------------------------------------------------------
# In-batch triplet mining


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("metric", DISTANCES)
def test_batch_triplet_matches_loop_values_and_gradients(mining: str, metric: str) -> None:
    e = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    labels = _labels(4, 3, 2, 1, 1)
    m = {"euclidean": 1.0, "squared": 2.0, "cosine": 0.5}[metric]

    total, count, per_anchor = _ref_batch_triplet(e.detach(), labels.tolist(), m, metric, mining)
    assert count > 0
    got = AF.batch_triplet_loss(e, labels, margin=m, distance=metric, mining=mining)
    torch.testing.assert_close(got, torch.tensor(total / count, dtype=torch.float64))
    none = AF.batch_triplet_loss(e, labels, margin=m, distance=metric, mining=mining, reduction="none")
    torch.testing.assert_close(none, torch.tensor(per_anchor, dtype=torch.float64))
    torch.testing.assert_close(
        AF.batch_triplet_loss(e, labels, margin=m, distance=metric, mining=mining, reduction="sum"),
        torch.tensor(total, dtype=torch.float64),
    )

    # Gradient of an explicit, differentiable enumeration of the same mined triplets.
    (grad,) = torch.autograd.grad(got, e)
    dist = torch.stack([torch.stack([_torch_dist(e[i], e[j], metric) for j in range(11)]) for i in range(11)])
    terms = []
    lab = labels.tolist()
    for a in range(11):
        ps = [p for p in range(11) if p != a and lab[p] == lab[a]]
        ns = [k for k in range(11) if lab[k] != lab[a]]
        if not ps or not ns:
            continue
        if mining == "hard":
            hp = max(ps, key=lambda p, a=a: float(dist[a, p].detach()))
            hn = min(ns, key=lambda k, a=a: float(dist[a, k].detach()))
            terms.append(torch.relu(dist[a, hp] - dist[a, hn] + m))
            continue
        for p in ps:
            for k in ns:
                if mining == "semi-hard" and not dist[a, p] < dist[a, k] < dist[a, p] + m:
                    continue
                terms.append(torch.relu(dist[a, p] - dist[a, k] + m))
    (ref_grad,) = torch.autograd.grad(torch.stack(terms).mean(), e)
    torch.testing.assert_close(grad, ref_grad)


def _torch_dist(u: torch.Tensor, v: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return 1 - torch.dot(u, v) / (u.norm() * v.norm())
    sq = ((u - v) ** 2).sum()
    return sq if metric == "squared" else sq.clamp_min(1e-300).sqrt()


@pytest.mark.parametrize("mining", ["all", "semi-hard", "hard"])
def test_batch_triplet_with_ties_matches_loop(mining: str) -> None:
    """Integer embeddings with duplicated rows: integer squared distances, so many ties, at the margin too."""
    e = torch.randint(-2, 3, (14, 2)).double()
    e[5] = e[2]
    labels = _labels(5, 5, 4)
    total, count, _ = _ref_batch_triplet(e, labels.tolist(), 2.0, "squared", mining)
    got = AF.batch_triplet_loss(e, labels, margin=2.0, distance="squared", mining=mining)
    assert count > 0
    torch.testing.assert_close(got, torch.tensor(total / count, dtype=torch.float64))


@pytest.mark.parametrize("metric", DISTANCES)
def test_batch_triplet_all_matches_pml(metric: str) -> None:
    e = torch.randn(16, 4, dtype=torch.float64)
    labels = _labels(5, 4, 4, 3)
    m = 0.3
    ours = AF.batch_triplet_loss(e, labels, margin=m, distance=metric, mining="all")
    # Without a miner PML takes every valid triplet; MeanReducer averages over all of them, as we do.
    pml_mean = pml_losses.TripletMarginLoss(
        margin=m, distance=_pml_distance(metric), reducer=reducers.MeanReducer()
    )
    torch.testing.assert_close(ours, pml_mean(e, labels))
    # PML's default AvgNonZeroReducer averages over the triplets with non-zero loss only.
    pml_default = pml_losses.TripletMarginLoss(margin=m, distance=_pml_distance(metric))
    total, _, _ = _ref_batch_triplet(e, labels.tolist(), m, metric, "all")
    rows = _rows(e)
    lab = labels.tolist()
    nonzero = sum(
        1
        for a in range(16)
        for p in range(16)
        for k in range(16)
        if p != a and lab[p] == lab[a] and lab[k] != lab[a]
        and _dist(rows[a], rows[p], metric) - _dist(rows[a], rows[k], metric) + m > 0
    )  # fmt: skip
    summed = AF.batch_triplet_loss(e, labels, margin=m, distance=metric, mining="all", reduction="sum")
    torch.testing.assert_close(summed / nonzero, pml_default(e, labels))
    torch.testing.assert_close(summed, torch.tensor(total, dtype=torch.float64))


@pytest.mark.parametrize("metric", DISTANCES)
def test_batch_triplet_hard_matches_pml_batch_hard_miner(metric: str) -> None:
    """Batch-hard is PML's BatchHardMiner (not TripletMarginMiner("hard"), which keeps every triplet
    whose negative is closer than its positive)."""
    e = torch.randn(16, 4, dtype=torch.float64)
    labels = _labels(5, 4, 4, 2, 1)
    m = 0.3
    pml = pml_losses.TripletMarginLoss(
        margin=m, distance=_pml_distance(metric), reducer=reducers.MeanReducer()
    )
    triplets = miners.BatchHardMiner(distance=_pml_distance(metric))(e, labels)
    assert len(triplets[0]) == 15  # the singleton class has no positive
    ours = AF.batch_triplet_loss(e, labels, margin=m, distance=metric, mining="hard")
    torch.testing.assert_close(ours, pml(e, labels, triplets))


@pytest.mark.parametrize("metric", DISTANCES)
def test_batch_triplet_semi_hard_matches_pml_triplet_margin_miner(metric: str) -> None:
    """PML's TripletMarginMiner("semihard") keeps 0 < D_an − D_ap ≤ m; we keep < m. The two differ only
    at exact equality, which random data never hits."""
    e = torch.randn(20, 3, dtype=torch.float64)
    labels = _labels(6, 6, 5, 3)
    m = {"euclidean": 0.8, "squared": 1.5, "cosine": 0.4}[metric]
    triplets = miners.TripletMarginMiner(
        margin=m, type_of_triplets="semihard", distance=_pml_distance(metric)
    )(e, labels)
    assert len(triplets[0]) > 5
    pml = pml_losses.TripletMarginLoss(
        margin=m, distance=_pml_distance(metric), reducer=reducers.MeanReducer()
    )
    ours = AF.batch_triplet_loss(e, labels, margin=m, distance=metric, mining="semi-hard")
    torch.testing.assert_close(ours, pml(e, labels, triplets))


def test_batch_triplet_gradcheck() -> None:
    e = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = _labels(3, 3, 2)
    for mining in ("all", "semi-hard", "hard"):
        fn = lambda x, mining=mining: AF.batch_triplet_loss(x, labels, margin=0.5, mining=mining)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (e,))


def test_batch_triplet_without_valid_triplets_warns_and_returns_graph_zero() -> None:
    e = torch.randn(5, 3, requires_grad=True)
    for labels in (torch.arange(5), torch.zeros(5, dtype=torch.long)):
        for mining in ("all", "hard", "semi-hard"):
            with pytest.warns(UserWarning, match="no valid triplet"):
                loss = AF.batch_triplet_loss(e, labels, mining=mining)
            assert loss == 0 and loss.requires_grad
            (grad,) = torch.autograd.grad(loss, e)
            assert torch.equal(grad, torch.zeros_like(e))
    with pytest.warns(UserWarning, match="no valid triplet"):
        none = AF.batch_triplet_loss(e, torch.arange(5), reduction="none")
    assert none.shape == (5,) and not none.any()
    with pytest.warns(UserWarning):  # a batch of 1
        assert AF.batch_triplet_loss(e[:1], torch.zeros(1, dtype=torch.long)) == 0


def test_batch_triplet_semi_hard_with_only_easy_triplets_is_zero_without_warning() -> None:
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    e = (centres[labels] + 0.01 * torch.randn(6, 2)).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = AF.batch_triplet_loss(e, labels, margin=1.0, mining="semi-hard")
    assert loss == 0
    loss.backward()
    assert torch.isfinite(e.grad).all()


def test_batch_triplet_with_coincident_points_has_finite_gradients() -> None:
    e = torch.zeros(6, 4, requires_grad=True)  # collapsed embeddings: every distance is 0
    labels = _labels(3, 3)
    for mining in ("all", "hard", "semi-hard"):
        loss = AF.batch_triplet_loss(e, labels, margin=0.2, mining=mining)
        (grad,) = torch.autograd.grad(loss, e)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(AF.batch_triplet_loss(e, labels, margin=0.2), torch.tensor(0.2))


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(8, 14),
    classes=st.integers(2, 4),
    margin=st.floats(0.0, 2.0),
)
def test_batch_triplet_properties(seed: int, n: int, classes: int, margin: float) -> None:
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 3, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % classes  # every class has ≥ 2 rows
    per_anchor = {
        mining: AF.batch_triplet_loss(e, labels, margin=margin, mining=mining, reduction="none")
        for mining in ("all", "hard", "semi-hard")
    }
    for mining, values in per_anchor.items():
        assert (values >= 0).all(), mining
    # per anchor, its hardest triplet bounds the mean over all its triplets
    class_size = torch.bincount(labels)[labels]
    triplets_per_anchor = (class_size - 1) * (n - class_size)
    assert (per_anchor["hard"] >= per_anchor["all"] / triplets_per_anchor - 1e-12).all()
    # the semi-hard triplets are a subset of all triplets
    assert (per_anchor["semi-hard"] <= per_anchor["all"] + 1e-12).all()
    # margin 0 with semi-hard: D_ap < D_an < D_ap is empty
    assert AF.batch_triplet_loss(e, labels, margin=0.0, mining="semi-hard") == 0


# --------------------------------------------------------------------------------------------------
# Binary NCE


def _ref_nce(
    q: torch.Tensor,
    pos: torch.Tensor,
    negs: torch.Tensor,
    log_pn: list[list[float]] | None,
    tau: float,
    kind: str = "dot",
    a: torch.Tensor | None = None,
) -> list[float]:
    """The MISSION form: p(C=1 | q, k) = p_model / (p_model + M·p_noise), p_model = exp(s(q, k) / τ)."""

    def s(u: list[float], v: list[float]) -> float:
        if kind == "dot":
            return _dot(u, v)
        if kind == "cosine":
            return _cos(u, v)
        if kind == "l1":
            return -sum(abs(x - y) for x, y in zip(u, v, strict=True))
        if kind == "l2":
            return -_dist(u, v, "euclidean")
        assert a is not None
        al = a.tolist()
        return sum(u[i] * al[i][j] * v[j] for i in range(len(u)) for j in range(len(v)))

    qs, ps = _rows(q), _rows(pos)
    n = len(qs)
    ns = [_rows(negs[i]) for i in range(n)] if negs.dim() == 3 else [_rows(negs)] * n
    m = len(ns[0])
    out = []
    for i in range(n):
        keys = [ps[i], *ns[i]]
        total = 0.0
        for j, key in enumerate(keys):
            p_model = math.exp(s(qs[i], key) / tau)
            # noise_log_prob=None drops the correction log(M p_n): equivalent to M·p_n = 1
            m_pn = 1.0 if log_pn is None else m * math.exp(log_pn[i][j])
            posterior = p_model / (p_model + m_pn)
            total -= math.log(posterior) if j == 0 else math.log(1.0 - posterior)
        out.append(total)
    return out


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("noise", ["none", "float", "tensor"])
def test_nce_matches_the_posterior_formula(shared: bool, noise: str) -> None:
    n, m, d = 5, 4, 3
    q, pos = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    negs = torch.randn(m, d, dtype=torch.float64) if shared else torch.randn(n, m, d, dtype=torch.float64)
    if noise == "none":
        arg, table = None, None
    elif noise == "float":
        arg, table = -1.7, [[-1.7] * (1 + m)] * n
    else:
        arg = -torch.rand(n, 1 + m, dtype=torch.float64) * 3
        table = arg.tolist()
    ref = _ref_nce(q, pos, negs, table, tau=0.5)
    got = AF.nce_loss(q, pos, negs, noise_log_prob=arg, temperature=0.5, reduction="none")
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    torch.testing.assert_close(
        AF.nce_loss(q, pos, negs, arg, temperature=0.5), torch.tensor(_mean(ref), dtype=torch.float64)
    )


def test_nce_shared_negatives_equal_expanded_ones_and_broadcast_noise() -> None:
    q, pos, negs = torch.randn(6, 4), torch.randn(6, 4), torch.randn(3, 4)
    log_pn = -torch.rand(4) * 2  # (1 + M,): one value per key column
    for kind in ("dot", "cosine", "l1", "l2"):
        shared = AF.nce_loss(q, pos, negs, log_pn, score_kind=kind)
        expanded = AF.nce_loss(q, pos, negs.expand(6, 3, 4), log_pn.expand(6, 4), score_kind=kind)
        torch.testing.assert_close(shared, expanded)


@pytest.mark.parametrize("kind", ["cosine", "l1", "l2", "bilinear"])
def test_nce_score_kinds_match_loop(kind: str) -> None:
    q, pos = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    negs = torch.randn(4, 5, 3, dtype=torch.float64)
    a = torch.randn(3, 3, dtype=torch.float64) if kind == "bilinear" else None
    ref = _ref_nce(q, pos, negs, [[-2.0] * 6] * 4, tau=0.7, kind=kind, a=a)
    got = AF.nce_loss(q, pos, negs, -2.0, temperature=0.7, reduction="none", score_kind=kind, weight=a)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    got_shared = AF.nce_loss(
        q, pos, negs[0], -2.0, temperature=0.7, reduction="none", score_kind=kind, weight=a
    )
    ref_shared = _ref_nce(q, pos, negs[0], [[-2.0] * 6] * 4, tau=0.7, kind=kind, a=a)
    torch.testing.assert_close(got_shared, torch.tensor(ref_shared, dtype=torch.float64))


def test_nce_is_stable_for_extreme_scores() -> None:
    q = torch.randn(4, 8, requires_grad=True)
    pos = -1e3 * q.detach()  # s⁺ ≈ −1e3·‖q‖²: log σ would underflow without logsigmoid
    negs = 1e3 * q.detach().unsqueeze(1).expand(4, 3, 8).clone()
    loss = AF.nce_loss(q, pos, negs, temperature=0.01)
    (grad,) = torch.autograd.grad(loss, q)
    assert torch.isfinite(loss) and loss > 1e4 and torch.isfinite(grad).all()


def test_nce_bad_arguments() -> None:
    q, pos, negs = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match=r"noise_log_prob .*did you pass a probability"):
        AF.nce_loss(q, pos, negs, noise_log_prob=0.3)
    with pytest.raises(ValueError, match=r"noise_log_prob has value\(s\) > 0"):
        AF.nce_loss(q, pos, negs, noise_log_prob=torch.full((3, 3), 0.5))
    with pytest.raises(ValueError, match=r"noise_log_prob must broadcast to \(N, 1 \+ M\) = \(3, 3\)"):
        AF.nce_loss(q, pos, negs, noise_log_prob=-torch.ones(3, 2))
    with pytest.raises(ValueError, match="M ≥ 1"):
        AF.nce_loss(q, pos, torch.randn(3, 0, 4))
    with pytest.raises(ValueError, match=r"per-query negatives .* N = 3"):
        AF.nce_loss(q, pos, torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="negatives must have positive's feature size 4"):
        AF.nce_loss(q, pos, torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="temperature"):
        AF.nce_loss(q, pos, negs, temperature=0.0)
    with pytest.raises(ValueError, match="score_kind"):
        AF.nce_loss(q, pos, negs, score_kind="cos")
    with pytest.raises(ValueError, match="needs weight"):
        AF.nce_loss(q, pos, negs, score_kind="bilinear")


# --------------------------------------------------------------------------------------------------
# Validation, dtypes, small batches (every function)


def _calls(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    n = x.shape[0]
    labels = torch.arange(n) % 2
    return {
        "repa": AF.repa_loss(x, y),
        "mcos": AF.marginal_cosine_loss(x, y, margin=0.5),
        "soft_nn_kl": AF.soft_nn_kl_loss(x, y),
        "pair_contrastive": AF.pair_contrastive_loss(x, y, labels),
        "triplet": AF.triplet_loss(x, y, y.flip(0)),
        "batch_triplet": AF.batch_triplet_loss(torch.cat([x, y]), torch.cat([labels, labels])),
        "nce": AF.nce_loss(x, y, y.flip(0)),
        "byol": AF.byol_loss(x, y),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_returns_input_dtype_close_to_float32(dtype: torch.dtype) -> None:
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    ref = _calls(x, y)
    got = _calls(x.to(dtype), y.to(dtype))
    for name, value in got.items():
        assert value.dtype == dtype, name
        assert torch.isfinite(value), name
        torch.testing.assert_close(value.float(), ref[name], atol=0.05, rtol=0.02, msg=name)


@pytest.mark.parametrize("n", [1, 2])
def test_batches_of_one_and_two_are_finite(n: int) -> None:
    x, y = torch.randn(n, 4), torch.randn(n, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # batch_triplet with N = 1 has no triplet
        for name, value in _calls(x, y).items():
            assert torch.isfinite(value), name


def test_bad_inputs_raise_value_errors_naming_the_argument() -> None:
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"source and target must have the same shape"):
        AF.repa_loss(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"source must have shape \(N, d\) or \(B, T, d\)"):
        AF.repa_loss(x[0], y[0])
    with pytest.raises(ValueError, match="reduction"):
        AF.repa_loss(x, y, reduction="avg")
    with pytest.raises(ValueError, match=r"margin must be in \[0, 2\)"):
        AF.marginal_cosine_loss(x, y, margin=2.0)
    with pytest.raises(ValueError, match="margin"):
        AF.marginal_cosine_loss(x, y, margin=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        AF.soft_nn_kl_loss(x, y, temperature=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        AF.soft_nn_kl_loss(x, y, chunk_size=0)
    with pytest.raises(ValueError, match=r"x and y must have the same shape"):
        AF.soft_nn_kl_loss(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"is_positive must be a \(4,\) tensor"):
        AF.pair_contrastive_loss(x, y, torch.ones(3))
    with pytest.raises(ValueError, match="is_positive must hold only 0 and 1"):
        AF.pair_contrastive_loss(x, y, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="margin"):
        AF.pair_contrastive_loss(x, y, torch.ones(4), margin=0.0)
    with pytest.raises(ValueError, match="distance"):
        AF.pair_contrastive_loss(x, y, torch.ones(4), distance="dot")
    with pytest.raises(ValueError, match="anchor and negative must have the same shape"):
        AF.triplet_loss(x, y, torch.randn(4, 2))
    with pytest.raises(ValueError, match="distance"):
        AF.triplet_loss(x, y, y, distance="l1")
    with pytest.raises(ValueError, match=r"labels must be a \(4,\) integer tensor"):
        AF.batch_triplet_loss(x, torch.arange(3))
    with pytest.raises(ValueError, match="labels must be an integer or bool tensor"):
        AF.batch_triplet_loss(x, torch.zeros(4))
    with pytest.raises(ValueError, match="mining"):
        AF.batch_triplet_loss(x, torch.arange(4), mining="semihard")
    with pytest.raises(ValueError, match="prediction has 1 non-finite"):
        AF.byol_loss(torch.tensor([[float("inf"), 0.0, 1.0]]), y[:1])


# --------------------------------------------------------------------------------------------------
# Modules and registry


def test_modules_are_registered_and_equal_the_functional() -> None:
    x, y, z = torch.randn(10, 4), torch.randn(10, 4), torch.randn(10, 4)
    labels = torch.arange(10) % 3
    is_pos = labels == 0
    tokens_x, tokens_y = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    cases = [
        ("repa", {}, (tokens_x, tokens_y), AF.repa_loss(tokens_x, tokens_y)),
        ("mcos", {"margin": 0.5}, (tokens_x, tokens_y), AF.marginal_cosine_loss(tokens_x, tokens_y, 0.5)),
        ("marginal_cosine", {"reduction": "sum"}, (x, y), AF.marginal_cosine_loss(x, y, reduction="sum")),
        ("soft_nn_kl", {"temperature": 0.3, "chunk_size": 3}, (x, y), AF.soft_nn_kl_loss(x, y, 0.3)),
        ("pair_contrastive", {"margin": 2.0}, (x, y, is_pos), AF.pair_contrastive_loss(x, y, is_pos, 2.0)),
        ("triplet", {"distance": "cosine"}, (x, y, z), AF.triplet_loss(x, y, z, distance="cosine")),
        ("batch_triplet", {"mining": "hard"}, (x, labels), AF.batch_triplet_loss(x, labels, mining="hard")),
        ("nce", {"temperature": 0.5, "noise_log_prob": -3.0}, (x, y, z), AF.nce_loss(x, y, z, -3.0, 0.5)),
        ("byol", {"reduction": "none"}, (x, y), AF.byol_loss(x, y, reduction="none")),
    ]
    for name, kwargs, inputs, expected in cases:
        module = losses.build(name, **kwargs)
        torch.testing.assert_close(module(*inputs), expected, msg=name)
        assert repr(module).startswith(type(module).__name__)
    assert type(losses.build("mcos")) is losses.MarginalCosineLoss


def test_nce_module_forward_noise_overrides_and_bilinear_weight_learns() -> None:
    q, k, negs = torch.randn(5, 3), torch.randn(5, 4), torch.randn(5, 2, 4)
    module = losses.NCELoss(noise_log_prob=-1.0, score_kind="bilinear", dim=(3, 4))
    assert module.weight is not None and module.weight.shape == (3, 4)
    per_call = -torch.rand(5, 3)
    torch.testing.assert_close(
        module(q, k, negs, per_call),
        AF.nce_loss(q, k, negs, per_call, score_kind="bilinear", weight=module.weight),
    )
    module(q, k, negs).backward()
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_module_constructors_validate_hyper_parameters() -> None:
    with pytest.raises(ValueError, match="margin"):
        losses.build("mcos", margin=2.5)
    with pytest.raises(ValueError, match="temperature"):
        losses.build("soft_nn_kl", temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        losses.build("soft_nn_kl", chunk_size=-2)
    with pytest.raises(ValueError, match="distance"):
        losses.build("triplet", distance="dot")
    with pytest.raises(ValueError, match="mining"):
        losses.build("batch_triplet", mining="easy")
    with pytest.raises(ValueError, match="reduction"):
        losses.build("byol", reduction="max")
    with pytest.raises(ValueError, match="needs dim"):
        losses.build("nce", score_kind="bilinear")
    with pytest.raises(ValueError, match="dim is only used"):
        losses.build("nce", dim=3)
    with pytest.raises(ValueError, match="noise_log_prob"):
        losses.build("nce", noise_log_prob=0.5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_batch_hard_mined_in_blocks_matches_loop(monkeypatch: pytest.MonkeyPatch, metric: str) -> None:
    """Batch-hard mining in blocks of 3 anchors (no gradient), then the chosen distances with gradient:
    the loop's value and gradient."""
    import alignkit.functional.losses as micro

    monkeypatch.setattr(micro, "_MINING_BLOCK_BYTES", 3 * 4 * 23)
    e = torch.randn(23, 5, dtype=torch.float64, requires_grad=True)
    labels = _labels(6, 6, 5, 4, 2)
    total, count, _ = _ref_batch_triplet(e.detach(), labels.tolist(), 0.5, metric, "hard")
    got = AF.batch_triplet_loss(e, labels, margin=0.5, distance=metric, mining="hard")
    torch.testing.assert_close(got, torch.tensor(total / count, dtype=torch.float64))
    torch.autograd.gradcheck(
        lambda z: AF.batch_triplet_loss(z, labels, margin=0.5, distance=metric, mining="hard"), (e,)
    )
