"""Null baselines for similarity scores: permutation tests, bootstrap intervals and chance levels.

    import alignkit.functional as AF
    test = AF.permutation_test(lambda a, b: AF.cka(a, b), x, y, permutations=200, seed=0)
    test.value, test.null_mean, test.null_sd, test.p_value
    ci = AF.bootstrap_interval(lambda a, b: AF.cka(a, b), x, y, resamples=500, seed=0)
    ci.low, ci.high
    AF.chance_levels(n=1000, k=10)["mutual_knn"]              # k / (N − 1)

A similarity between two representations means little without its floor: biased linear CKA of two
*independent* 360 × 64 Gaussian matrices is about 0.15, and mutual k-NN overlap of unrelated
neighbourhoods is k/(N − 1), not 0. The **permutation null** breaks the row pairing (row ``i`` of ``x``
no longer describes the sample of row ``i`` of ``y``) while keeping each side's own geometry: the rows
of ``y`` are shuffled K times and the score recomputed; the p-value is the fraction of shuffles scoring
at least as high as the real pairing (Phipson & Smyth 2010)::

    p = (1 + #{k : s(x, y_{π_k}) ≥ s(x, y)}) / (1 + K)

(``alternative="less"`` for distances, where smaller means more aligned). The smallest attainable p is
1/(1 + K). Memory is bounded: one permuted copy of ``y`` exists at a time and the null is kept as K
numbers, never K copies of the data.

The **bootstrap interval** resamples the N rows (the same rows on both sides) with replacement and
reports the percentile interval (Efron & Tibshirani 1993). Duplicated rows make exact ties, so the
bootstrap is biased upward for neighbourhood metrics (mutual k-NN, CKNNA, retrieval); it suits
smooth statistics (CKA, CCA family, Procrustes).

Closed-form **chance levels** for metrics whose value under random pairing is known exactly are in
:func:`chance_levels`; for the others (biased CKA, CCA family, Procrustes) the null mean of the
permutation test is the chance level of the data at hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from alignkit.functional._checks import check_features, check_int, shape_str

__all__ = [
    "BootstrapInterval",
    "PermutationTest",
    "bootstrap_interval",
    "chance_levels",
    "permutation_test",
]

MetricFn = Callable[[Tensor, Tensor], "float | Tensor"]


@dataclass(frozen=True)
class PermutationTest:
    """Result of :func:`permutation_test`.

    Attributes:
        value: the score of the real pairing ``s(x, y)``.
        null_mean, null_sd: mean and (sample) standard deviation of the K permuted scores.
        p_value: ``(1 + #{null ≥ value}) / (1 + K)`` (``≤`` for ``alternative="less"``).
        permutations: K.
        seed: the seed of the permutations.
        alternative: ``"greater"`` or ``"less"``.
        null: the K permuted scores (float64, CPU).
    """

    value: float
    null_mean: float
    null_sd: float
    p_value: float
    permutations: int
    seed: int
    alternative: str
    null: Tensor

    def as_dict(self) -> dict[str, float]:
        """The scalar fields (no ``null`` tensor, no ``alternative``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("null", "alternative")}
        return {k: float(v) for k, v in out.items()}


@dataclass(frozen=True)
class BootstrapInterval:
    """Result of :func:`bootstrap_interval`: the score on all rows, the percentile interval
    ``[low, high]`` at ``level``, and the standard deviation of the ``resamples`` bootstrap scores."""

    value: float
    low: float
    high: float
    sd: float
    level: float
    resamples: int
    seed: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _pair(x: object, y: object) -> tuple[Tensor, Tensor]:
    check_features(x, "x", min_rows=2)
    check_features(y, "y", min_rows=2)
    assert isinstance(x, Tensor) and isinstance(y, Tensor)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same N samples row by row, got x {shape_str(x)} and y {shape_str(y)}"
        )
    if x.device != y.device:
        raise ValueError(f"x and y must be on one device, got {x.device} and {y.device}")
    return x, y


def _score(metric_fn: MetricFn, a: Tensor, b: Tensor) -> float:
    value = metric_fn(a, b)
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric_fn must return one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric_fn must return a number, got {type(value).__name__}") from None


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return seed


def permutation_test(
    metric_fn: MetricFn,
    x: Tensor,
    y: Tensor,
    permutations: int = 100,
    seed: int = 0,
    *,
    alternative: str = "greater",
    permute: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> PermutationTest:
    """Permutation null of a paired similarity score: shuffle the rows of ``y`` K times.

    With ``s = metric_fn`` and permutations ``π_1 … π_K`` drawn from ``torch.Generator(seed)``::

        p = (1 + #{k : s(x, y[π_k]) ≥ s(x, y)}) / (1 + K)        alternative="greater"
        p = (1 + #{k : s(x, y[π_k]) ≤ s(x, y)}) / (1 + K)        alternative="less" (distances)

    The "+1" counts the real pairing as one draw of the null, so p is never 0 and the test is exact
    (valid at every level) for any K (Phipson & Smyth 2010, "Permutation P-values Should Never Be
    Zero"). Under independence of x and y, p is uniform on {1/(K+1), …, 1}.

    Args:
        metric_fn: ``metric_fn(x, y) → float`` or a one-element tensor (e.g. ``AF.cka``).
        x: (N, d_x) rows, kept fixed (or any tensor with N rows when ``permute`` is given).
        y: (N, d_y) rows paired with x row by row; its rows are permuted.
        permutations: K ≥ 1.
        seed: seed of the permutations (the same seed gives the same null).
        alternative: ``"greater"`` (similarities) or ``"less"`` (distances).
        permute: ``permute(y, perm) → permuted y``; default ``y[perm]``. Lets a caller permute a cheaper
            stand-in, e.g. a k-NN index table ``inv[idx[perm]]`` instead of recomputing neighbours.

    Returns:
        :class:`PermutationTest` (value, null mean / sd, p-value, the K null scores).

    Time: K + 1 calls of ``metric_fn``. Memory: one permuted copy of ``y`` at a time plus K floats.
    """
    if not callable(metric_fn):
        raise ValueError(f"metric_fn must be callable, got {type(metric_fn).__name__}")
    if permute is None:
        x, y = _pair(x, y)
    elif not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0]:
        raise ValueError("x and y must be tensors with the same number of rows")
    check_int(permutations, "permutations", 1)
    seed = _check_seed(seed)
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    shuffle = permute if permute is not None else (lambda t, p: t[p])
    observed = _score(metric_fn, x, y)
    if not math.isfinite(observed):
        raise ValueError(f"metric_fn returned {observed} on the real pairing")
    g = torch.Generator().manual_seed(seed)
    n = y.shape[0]
    null = torch.empty(permutations, dtype=torch.float64)
    for i in range(permutations):
        perm = torch.randperm(n, generator=g).to(y.device)
        null[i] = _score(metric_fn, x, shuffle(y, perm))
    # a relative tolerance so that a permuted score equal to the observed one up to rounding counts
    tol = 1e-12 * max(1.0, abs(observed))
    hits = (null >= observed - tol) if alternative == "greater" else (null <= observed + tol)
    p = (1 + int(hits.sum())) / (1 + permutations)
    sd = float(null.std()) if permutations > 1 else 0.0
    return PermutationTest(observed, float(null.mean()), sd, p, permutations, seed, alternative, null)


def bootstrap_interval(
    metric_fn: MetricFn,
    x: Tensor,
    y: Tensor,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapInterval:
    """Percentile bootstrap interval of a paired score over rows (Efron & Tibshirani 1993, §13.3).

    Each resample draws N row indices with replacement and scores ``metric_fn(x[idx], y[idx])`` (the
    pairing is kept); the interval is the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the
    resampled scores. Rows repeated by the resampling are exact duplicates, which favours
    neighbourhood metrics (see the module docstring).

    Args:
        metric_fn: ``metric_fn(x, y) → float`` or a one-element tensor.
        x: (N, d_x); y: (N, d_y), paired row by row.
        resamples: B ≥ 2.
        seed: seed of the resampling.
        level: the interval's coverage, in (0, 1).

    Returns:
        :class:`BootstrapInterval`.

    Time: B + 1 calls of ``metric_fn``. Memory: one resampled copy of x and y at a time plus B floats.
    """
    if not callable(metric_fn):
        raise ValueError(f"metric_fn must be callable, got {type(metric_fn).__name__}")
    x, y = _pair(x, y)
    check_int(resamples, "resamples", 2)
    seed = _check_seed(seed)
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    value = _score(metric_fn, x, y)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    scores = torch.empty(resamples, dtype=torch.float64)
    for i in range(resamples):
        idx = torch.randint(0, n, (n,), generator=g).to(x.device)
        scores[i] = _score(metric_fn, x[idx], y[idx])
    lo_q, hi_q = (1.0 - float(level)) / 2.0, (1.0 + float(level)) / 2.0
    low, high = torch.quantile(scores, torch.tensor([lo_q, hi_q], dtype=torch.float64)).tolist()
    return BootstrapInterval(value, low, high, float(scores.std()), float(level), resamples, seed)


def chance_levels(n: int, k: int = 10, recall_ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected value of each score under random pairing, where a closed form exists.

    For N paired rows with the pairing shuffled uniformly at random:

    ==================  =====================  ==============================================
    ``recall@K``        K / N                  the own row lands in the top K by chance
    ``median_rank``     (N + 1) / 2            rank uniform on 1…N (median of its law)
    ``mean_rank``       (N + 1) / 2
    ``map``             H_N / N                mean of 1/rank, H_N the N-th harmonic number
    ``mutual_knn``      k / (N − 1)            |A ∩ B| / k for two k-subsets of N − 1 candidates
    ``unbiased_cka``    0                      HSIC_1 (Song et al. 2012) is unbiased; 0 under independence
    ==================  =====================  ==============================================

    Biased linear and RBF CKA, CKNNA, SVCCA, PWCCA and Procrustes have no data-free chance level
    (biased CKA of independent data shrinks roughly as 1/N but depends on the spectra); use the null
    mean of :func:`permutation_test`.

    Args:
        n: N ≥ 2 rows.
        k: neighbourhood size of mutual k-NN (1 ≤ k ≤ N − 1).
        recall_ks: the K of ``recall@K`` (those > N are skipped, as :func:`recall_at_k` does).

    Returns:
        ``{key: float}`` with the keys above.
    """
    check_int(n, "n", 2)
    check_int(k, "k", 1, n - 1, f" (N = {n})")
    out: dict[str, float] = {}
    for kk in recall_ks:
        check_int(kk, "recall_ks", 1)
        if kk <= n:
            out[f"recall@{kk}"] = kk / n
    harmonic = math.fsum(1.0 / r for r in range(1, n + 1))
    out.update(
        {
            "median_rank": (n + 1) / 2,
            "mean_rank": (n + 1) / 2,
            "map": harmonic / n,
            "mutual_knn": k / (n - 1),
            "unbiased_cka": 0.0,
        }
    )
    return out
