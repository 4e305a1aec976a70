"""Null baselines (alignkit.functional.nulls) and the calibration facts they rest on.

* permutation p-values are uniform-ish on independent inputs (a Kolmogorov–Smirnov distance over 60
  seeds) and at their floor 1/(K + 1) on aligned inputs;
* the null and the p-value equal a slow reference that replays the same permutations;
* bootstrap percentile intervals cover a known correlation at about their level;
* the closed-form chance levels equal the permutation null means;
* biased linear CKA of independent Gaussians shrinks as ~1/N (N·CKA roughly constant), unbiased CKA is
  ~0 at every N (Song et al. 2012; Kornblith et al. 2019 §3 notes the bias).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import alignkit.functional as AF

D64 = torch.float64


def _cka(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return AF.cka(a, b)


def _ks_uniform(p: list[float]) -> float:
    """Kolmogorov–Smirnov distance of the sample ``p`` to U(0, 1)."""
    s = np.sort(np.asarray(p))
    n = len(s)
    i = np.arange(1, n + 1)
    return float(max((i / n - s).max(), (s - (i - 1) / n).max()))


def test_permutation_p_values_are_uniform_on_independent_inputs() -> None:
    pvals = []
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(30, 4, generator=g, dtype=D64)
        y = torch.randn(30, 3, generator=g, dtype=D64)
        pvals.append(AF.permutation_test(_cka, x, y, permutations=39, seed=1000 + seed).p_value)
    # KS critical value at alpha = 0.01 for n = 60 is 1.63 / sqrt(60) = 0.21 (p is discrete on
    # {1/40, ..., 1}, which adds at most 1/40)
    assert _ks_uniform(pvals) < 0.21 + 1 / 40
    assert 0.3 < float(np.mean(pvals)) < 0.7
    # and not all at the floor: the test can tell aligned from independent
    assert sum(p <= 0.05 for p in pvals) <= 10


def test_permutation_aligned_inputs_reach_the_floor() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=g, dtype=D64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=D64))
    y = x @ q + 0.5 * torch.randn(60, 8, generator=g, dtype=D64)
    test = AF.permutation_test(_cka, x, y, permutations=199, seed=3)
    assert test.p_value == pytest.approx(1 / 200) and test.p_value < 0.01
    assert test.value > test.null_mean + 5 * test.null_sd
    # a distance: smaller is more aligned
    dist = AF.permutation_test(AF.procrustes_distance, x, y, permutations=99, seed=3, alternative="less")
    assert dist.p_value == pytest.approx(1 / 100)
    assert dist.value < dist.null_mean


def test_permutation_matches_slow_reference() -> None:
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, 3, generator=g, dtype=D64), torch.randn(12, 2, generator=g, dtype=D64)
    y = y + 0.3 * x[:, :2]
    test = AF.permutation_test(_cka, x, y, permutations=25, seed=9)
    replay = torch.Generator().manual_seed(9)
    ref_null = [float(_cka(x, y[torch.randperm(12, generator=replay)])) for _ in range(25)]
    obs = float(_cka(x, y))
    torch.testing.assert_close(test.null, torch.tensor(ref_null, dtype=D64))
    assert test.value == pytest.approx(obs)
    assert test.p_value == pytest.approx((1 + sum(v >= obs for v in ref_null)) / 26)
    assert test.null_mean == pytest.approx(float(np.mean(ref_null)))
    assert test.null_sd == pytest.approx(float(np.std(ref_null, ddof=1)))
    again = AF.permutation_test(_cka, x, y, permutations=25, seed=9)
    torch.testing.assert_close(again.null, test.null)
    assert set(test.as_dict()) == {"value", "null_mean", "null_sd", "p_value", "permutations", "seed"}


def test_permute_hook_on_neighbour_tables_equals_recomputing() -> None:
    """Permuting y's rows permutes its k-NN table: inv[idx[perm]] — the cheap null for mutual k-NN."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 5, generator=g), torch.randn(40, 6, generator=g)
    k = 4
    nx = AF.knn(x, k).indices
    ny = AF.knn(y, k).indices

    def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
        return sum(len(set(r) & set(s)) for r, s in zip(a.tolist(), b.tolist(), strict=True)) / (40 * k)

    def permute(table: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(len(perm))
        return inv[table[perm]]

    fast = AF.permutation_test(overlap, nx, ny, permutations=15, seed=2, permute=permute)
    slow = AF.permutation_test(lambda a, b: AF.mutual_knn(a, b, k=k), x, y, permutations=15, seed=2)
    torch.testing.assert_close(fast.null, slow.null)
    assert fast.value == pytest.approx(slow.value)


def test_mapping_metric_tests_every_key_on_the_same_permutations() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(30, 4, generator=g)
    y = x + 0.7 * torch.randn(30, 4, generator=g)
    sides = {"median_rank": "less", "mean_rank": "less"}
    both = AF.permutation_test(
        lambda a, b: AF.recall_at_k(a, b, k=(1, 5)), x, y, 20, seed=1, alternative=sides
    )
    assert set(both) == {"recall@1", "recall@5", "median_rank", "mean_rank", "map"}
    for key in ("recall@5", "mean_rank"):
        alone = AF.permutation_test(
            lambda a, b, key=key: AF.recall_at_k(a, b, k=(1, 5))[key], x, y, 20, seed=1,
            alternative=sides.get(key, "greater"),
        )
        torch.testing.assert_close(both[key].null, alone.null)
        assert both[key].p_value == alone.p_value
    assert both["mean_rank"].alternative == "less" and both["mean_rank"].p_value < 0.1
    with pytest.raises(ValueError, match="does not return"):
        AF.permutation_test(lambda a, b: {"s": 1.0}, x, y, 3, alternative={"t": "less"})


def test_chance_levels_equal_permutation_null_means() -> None:
    n, k = 50, 5
    levels = AF.chance_levels(n, k=k)
    assert levels["recall@1"] == 1 / n and levels["recall@10"] == 10 / n
    assert levels["mutual_knn"] == pytest.approx(k / (n - 1))
    assert levels["map"] == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n)
    assert levels["mean_rank"] == levels["median_rank"] == (n + 1) / 2
    assert "recall@10" not in AF.chance_levels(8, k=2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g)
    y = x + 0.8 * y  # aligned data: the null still sits at chance
    for key, fn in (
        ("mutual_knn", lambda a, b: AF.mutual_knn(a, b, k=k)),
        ("recall@5", lambda a, b: AF.recall_at_k(a, b, k=(5,))["recall@5"]),
        ("map", lambda a, b: AF.recall_at_k(a, b, k=(1,))["map"]),
    ):
        test = AF.permutation_test(fn, x, y, permutations=200, seed=4)
        se = test.null_sd / math.sqrt(200)
        assert abs(test.null_mean - levels[key]) < 4 * se + 1e-9, key


def test_bootstrap_interval_covers_a_known_correlation() -> None:
    def corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.corrcoef(torch.stack([a[:, 0], b[:, 0]]))[0, 1]

    rho, covered, runs = 0.6, 0, 40
    for seed in range(runs):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(80, 2, generator=g, dtype=D64)
        x = z[:, :1]
        y = rho * z[:, :1] + math.sqrt(1 - rho**2) * z[:, 1:]
        ci = AF.bootstrap_interval(corr, x, y, resamples=200, seed=seed, level=0.9)
        assert ci.low <= ci.value <= ci.high
        covered += ci.low <= rho <= ci.high
    assert covered >= 30  # nominal 36 of 40; percentile intervals undercover a little at N = 80


def test_bootstrap_interval_matches_reference() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 3, generator=g, dtype=D64), torch.randn(20, 3, generator=g, dtype=D64)
    ci = AF.bootstrap_interval(_cka, x, y, resamples=50, seed=7, level=0.8)
    replay = torch.Generator().manual_seed(7)
    scores = []
    for _ in range(50):
        idx = torch.randint(0, 20, (20,), generator=replay)
        scores.append(float(_cka(x[idx], y[idx])))
    lo, hi = np.quantile(scores, [0.1, 0.9])
    assert (ci.low, ci.high) == pytest.approx((lo, hi))
    assert ci.sd == pytest.approx(float(np.std(scores, ddof=1)))
    assert ci.value == pytest.approx(float(_cka(x, y)))


def test_nulls_bad_input() -> None:
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    with pytest.raises(ValueError, match="permutations"):
        AF.permutation_test(_cka, x, y, permutations=0)
    with pytest.raises(ValueError, match="same N"):
        AF.permutation_test(_cka, x, y[:9])
    with pytest.raises(ValueError, match="alternative"):
        AF.permutation_test(_cka, x, y, alternative="two-sided")
    with pytest.raises(ValueError, match="seed"):
        AF.permutation_test(_cka, x, y, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one number"):
        AF.permutation_test(lambda a, b: a[:2, 0], x, y)
    with pytest.raises(ValueError, match="level"):
        AF.bootstrap_interval(_cka, x, y, level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        AF.bootstrap_interval(_cka, x, y, resamples=1)
    with pytest.raises(ValueError, match="k must"):
        AF.chance_levels(10, k=10)
    with pytest.raises(ValueError, match="n must"):
        AF.chance_levels(1)


# ------------------------------------------------------------------------------------------------
# calibration: biased vs unbiased linear CKA on independent Gaussians


def test_biased_cka_shrinks_as_one_over_n_and_unbiased_is_centred() -> None:
    """Independent X (N×d) and Y (N×d), d = 4, 40 draws per N (seeded).

    Kornblith et al.'s biased estimator concentrates at about d/(N + d) for isotropic Gaussians
    (‖YᵀX‖² ≈ N·d², ‖XᵀX‖ ≈ √(N²d + Nd²)), i.e. ~1/N: N·CKA stays in a band around d while N grows
    8×. The unbiased estimator (HSIC_1) has mean 0 at every N.
    """
    d, draws = 4, 40
    biased, unbiased = {}, {}
    for n in (32, 64, 128, 256):
        g = torch.Generator().manual_seed(n)
        b, u = [], []
        for _ in range(draws):
            x = torch.randn(n, d, generator=g, dtype=D64)
            y = torch.randn(n, d, generator=g, dtype=D64)
            b.append(float(AF.cka(x, y)))
            u.append(float(AF.cka(x, y, unbiased=True)))
        biased[n], unbiased[n] = float(np.mean(b)), (float(np.mean(u)), float(np.std(u, ddof=1)))
    ns = sorted(biased)
    # monotone, and the log-log slope of mean biased CKA against N is about −1
    assert all(biased[a] > biased[b] for a, b in itertools.pairwise(ns))
    slope = np.polyfit(np.log(ns), np.log([biased[n] for n in ns]), 1)[0]
    assert -1.15 < slope < -0.8
    for n in ns:
        assert 0.6 * d < n * biased[n] < 1.4 * d, (n, n * biased[n])
        mean, sd = unbiased[n]
        assert abs(mean) < 4 * sd / math.sqrt(draws) + 1e-3, (n, mean, sd)
        assert abs(mean) < 0.25 * biased[n]  # far below the biased floor at the same N


def test_joint_space_nulls_are_json_ready_and_agree_with_null_baselines() -> None:
    """alignkit.recipes.evaluate.joint_space_nulls: the metrics.json block of value / chance / null, with
    non-finite entries (no closed-form chance level for CKA, CKNNA, Procrustes) as None, like every
    other metrics.json writer (alignkit.io.json_safe); the finite ones are null_baselines' and measure's."""
    import json

    from alignkit.measure import measure, null_baselines
    from alignkit.recipes.evaluate import NULL_KEYS, joint_space_nulls

    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 5, generator=g)
    y = x + 0.3 * torch.randn(20, 5, generator=g)
    out = joint_space_nulls(x, y, knn=3, permutations=6, seed=2)
    json.dumps(out, allow_nan=False)  # no NaN anywhere
    names = ["cka", "unbiased_cka", "mutual_knn", "cknna", "procrustes", "retrieval"]
    values = measure(x, y, names, 3)
    nulls = null_baselines(x, y, names, k=3, permutations=6, seed=2)
    assert set(out) == {key for key, source in NULL_KEYS.items() if source in nulls}
    assert out["cka_linear"]["chance"] is None and out["procrustes"]["chance"] is None
    for key, row in out.items():
        source = NULL_KEYS[key]
        expected = {"value": float(values[source]), **{k: float(v) for k, v in nulls[source].items()}}
        assert set(row) == set(expected)
        for name, value in row.items():
            if math.isfinite(expected[name]):
                assert value == expected[name]
            else:
                assert value is None
