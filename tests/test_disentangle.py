from __future__ import annotations

import math

import pytest
import torch

import alignkit.functional as AF
from alignkit import losses


def _normalise(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _ref_symmetric_infonce(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """Loop form of symmetric InfoNCE on cosine similarities (float64 Python floats)."""
    n = a.shape[0]
    an = [_normalise(r) for r in a.tolist()]
    bn = [_normalise(r) for r in b.tolist()]
    s = [[sum(x * y for x, y in zip(an[i], bn[j], strict=True)) / tau for j in range(n)] for i in range(n)]
    rows = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)) / n
    cols = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(n))) for j in range(n)) / n
    return (rows + cols) / 2


def _ref_supcon_two_views(a: torch.Tensor, b: torch.Tensor, labels: list[int], tau: float) -> float:
    feats = [_normalise(r) for r in a.tolist()] + [_normalise(r) for r in b.tolist()]
    labs = labels + labels
    total, count = 0.0, 0
    for i in range(len(feats)):
        sims = {
            j: sum(x * y for x, y in zip(feats[i], feats[j], strict=True)) / tau for j in range(len(feats))
        }
        log_denominator = math.log(sum(math.exp(v) for j, v in sims.items() if j != i))
        positives = [j for j in range(len(feats)) if j != i and labs[j] == labs[i]]
        total += -sum(sims[p] - log_denominator for p in positives) / len(positives)
        count += 1
    return total / count


def _ref_cross_correlation(z: torch.Tensor, widths: list[int], standardise: bool) -> float:
    n, d = z.shape
    cols = [[z[r][c].item() for r in range(n)] for c in range(d)]
    stats = []
    for col in cols:
        mean = sum(col) / n
        centred = [x - mean for x in col]
        std = math.sqrt(sum(x * x for x in centred) / n) if standardise else 1.0
        stats.append([x / std for x in centred])
    owner = [i for i, w in enumerate(widths) for _ in range(w)]
    values = [
        (sum(x * y for x, y in zip(stats[p], stats[q], strict=True)) / n) ** 2
        for p in range(d)
        for q in range(d)
        if owner[p] != owner[q]
    ]
    return sum(values) / len(values)


def test_subspace_contrastive_without_factors_matches_loop_reference() -> None:
    z1, z2 = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    got = AF.subspace_contrastive_loss(z1, z2, num_subspaces=2, temperature=0.5)
    want = (
        _ref_symmetric_infonce(z1[:, :4], z2[:, :4], 0.5) + _ref_symmetric_infonce(z1[:, 4:], z2[:, 4:], 0.5)
    ) / 2
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_subspace_contrastive_with_factors_uses_factor_positives_per_subspace() -> None:
    z1, z2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    factors = torch.tensor([[0, 1], [0, 0], [1, 1], [1, 0], [2, 1], [0, 0]])
    got = AF.subspace_contrastive_loss(z1, z2, num_subspaces=[2, 3], temperature=0.3, factors=factors)
    want = (
        _ref_supcon_two_views(z1[:, :2], z2[:, :2], factors[:, 0].tolist(), 0.3)
        + _ref_supcon_two_views(z1[:, 2:], z2[:, 2:], factors[:, 1].tolist(), 0.3)
    ) / 2
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("penalty", ["correlation", "covariance"])
def test_decorrelation_matches_loop_reference(penalty: str) -> None:
    z = torch.randn(7, 5, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    got = AF.decorrelation_loss(z, [2, 3], penalty=penalty)
    assert got.item() == pytest.approx(_ref_cross_correlation(z, [2, 3], penalty == "correlation"), rel=1e-8)


def test_decorrelation_separates_independent_from_shared_subspaces() -> None:
    a = torch.randn(4000, 3, dtype=torch.float64)
    independent = AF.decorrelation_loss(torch.cat([a, torch.randn(4000, 3, dtype=torch.float64)], 1), 2)
    shared = AF.decorrelation_loss(torch.cat([a, 2 * a + 1], 1), 2)
    assert independent.item() < 1e-3  # ≈ 1/N for independent Gaussians
    # a copy correlates 1 with its own column and ≈ 0 (sampling noise ~1/N) with the other two:
    # mean of squares ≈ 3/9
    assert shared.item() == pytest.approx(1 / 3, abs=1e-3)


def test_decorrelation_correlation_penalty_is_scale_free_and_grad_finite() -> None:
    z = torch.randn(16, 6, dtype=torch.float64)
    scaled = z * torch.tensor([10.0, 1, 0.1, 5, 2, 1], dtype=torch.float64)
    assert AF.decorrelation_loss(z, 3).item() == pytest.approx(AF.decorrelation_loss(scaled, 3).item())
    z = torch.zeros(8, 4, requires_grad=True)  # constant columns: zero variance
    loss = AF.decorrelation_loss(z, 2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_half_precision_is_computed_in_float32() -> None:
    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
    for dtype in (torch.float16, torch.bfloat16):
        got = AF.decorrelation_loss(z1.to(dtype), 2)
        assert got.dtype == dtype
        assert got.float().item() == pytest.approx(AF.decorrelation_loss(z1, 2).item(), rel=2e-2, abs=1e-3)
        sub = AF.subspace_contrastive_loss(z1.to(dtype), z2.to(dtype), 2)
        assert sub.dtype == dtype and torch.isfinite(sub)


def test_bad_input_is_a_clear_value_error() -> None:
    z = torch.randn(4, 6)
    with pytest.raises(ValueError, match="num_subspaces must be a positive divisor"):
        AF.decorrelation_loss(z, 4)
    with pytest.raises(ValueError, match="sum to"):
        AF.decorrelation_loss(z, [2, 3])
    with pytest.raises(ValueError, match="at least 2 sub-spaces"):
        AF.decorrelation_loss(z, 1)
    with pytest.raises(ValueError, match="penalty"):
        AF.decorrelation_loss(z, 2, penalty="hsic")
    with pytest.raises(ValueError, match="z must have at least 2 row"):
        AF.decorrelation_loss(z[:1], 2)
    with pytest.raises(ValueError, match="factors must have shape"):
        AF.subspace_contrastive_loss(z, z, 2, factors=torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="factors must hold integer"):
        AF.subspace_contrastive_loss(z, z, 2, factors=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="z1 and z2 must have the same shape"):
        AF.subspace_contrastive_loss(z, z[:, :4], 2)


def test_modules_equal_functionals_and_build_by_name() -> None:
    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
    sub = losses.build("subspace_contrastive", num_subspaces=3, temperature=0.2)
    assert sub(z1, z2).item() == pytest.approx(AF.subspace_contrastive_loss(z1, z2, 3, 0.2).item())
    dec = losses.build("decorrelation", num_subspaces=2)
    want = (AF.decorrelation_loss(z1, 2) + AF.decorrelation_loss(z2, 2)) / 2
    assert dec(z1, z2).item() == pytest.approx(want.item())
    assert dec(z1).item() == pytest.approx(AF.decorrelation_loss(z1, 2).item())
    with pytest.raises(ValueError, match="temperature"):
        losses.SubspaceContrastiveLoss(2, temperature=0.0)
    with pytest.raises(ValueError, match="num_subspaces"):
        losses.DecorrelationLoss(0)
