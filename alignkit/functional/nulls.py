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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from alignkit.functional._checks import check_features, check_int, one_device, shape_str

__all__ = [
    "BootstrapInterval",
    "PermutationTest",
    "bootstrap_interval",
    "chance_levels",
    "permutation_test",
    "seed_interval",
]

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


def _number(value: object) -> float:
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


def _scores(metric_fn: Callable[[Tensor, Tensor], object], a: Tensor, b: Tensor) -> dict[str, float] | float:
    value = metric_fn(a, b)
    if isinstance(value, Mapping):
        return {str(key): _number(v) for key, v in value.items()}
    return _number(value)


@one_device
def permutation_test(
    metric_fn: Callable[[Tensor, Tensor], object],
    x: Tensor,
    y: Tensor,
    permutations: int = 100,
    seed: int = 0,
    *,
    alternative: str | Mapping[str, str] = "greater",
    permute: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> PermutationTest | dict[str, PermutationTest]:
    """Permutation null of a paired similarity score: shuffle the rows of ``y`` K times.

    With ``s = metric_fn`` and permutations ``π_1 … π_K`` drawn from ``torch.Generator(seed)``::

        p = (1 + #{k : s(x, y[π_k]) ≥ s(x, y)}) / (1 + K)        alternative="greater"
        p = (1 + #{k : s(x, y[π_k]) ≤ s(x, y)}) / (1 + K)        alternative="less" (distances)

    The "+1" counts the real pairing as one draw of the null, so p is never 0 and the test is exact
    (valid at every level) for any K (Phipson & Smyth 2010, "Permutation P-values Should Never Be
    Zero"). Under independence of x and y, p is uniform on {1/(K+1), …, 1}.

    Args:
        metric_fn: ``metric_fn(x, y)`` → a number or one-element tensor (e.g. ``AF.cka``), or a mapping
            ``{key: number}`` (e.g. ``AF.recall_at_k``): then every key is tested on the same
            permutations and a dict of results is returned.
        x: (N, d_x) rows, kept fixed (or any tensor with N rows when ``permute`` is given).
        y: (N, d_y) rows paired with x row by row; its rows are permuted.
        permutations: K ≥ 1.
        seed: seed of the permutations (the same seed gives the same null).
        alternative: ``"greater"`` (similarities) or ``"less"`` (distances); for a mapping-valued
            ``metric_fn`` also a mapping ``{key: "greater" | "less"}`` (missing keys: "greater").
        permute: ``permute(y, perm) → permuted y``; default ``y[perm]``. Lets a caller permute a cheaper
            stand-in, e.g. a k-NN index table ``inv[idx[perm]]`` instead of recomputing neighbours.

    Returns:
        :class:`PermutationTest` (value, null mean / sd, p-value, the K null scores), or
        ``{key: PermutationTest}`` for a mapping-valued ``metric_fn``.

    Time: K + 1 calls of ``metric_fn``. Memory: one permuted copy of ``y`` at a time plus K floats
    per key.
    """
    if not callable(metric_fn):
        raise ValueError(f"metric_fn must be callable, got {type(metric_fn).__name__}")
    if permute is None:
        x, y = _pair(x, y)
    elif not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0]:
        raise ValueError("x and y must be tensors with the same number of rows")
    check_int(permutations, "permutations", 1)
    seed = _check_seed(seed)
    shuffle = permute if permute is not None else (lambda t, p: t[p])
    first = _scores(metric_fn, x, y)
    scalar = not isinstance(first, dict)
    observed: dict[str, float] = {"": first} if scalar else first  # type: ignore[dict-item,assignment]
    sides = _alternatives(alternative, observed, scalar)
    for key, value in observed.items():
        if not math.isfinite(value):
            where = f" for {key!r}" if key else ""
            raise ValueError(f"metric_fn returned {value} on the real pairing{where}")
    g = torch.Generator().manual_seed(seed)
    n = y.shape[0]
    null = torch.empty(len(observed), permutations, dtype=torch.float64)
    for i in range(permutations):
        perm = torch.randperm(n, generator=g).to(y.device)
        got = _scores(metric_fn, x, shuffle(y, perm))
        values = {"": got} if scalar else got
        if not isinstance(values, dict) or set(values) != set(observed):
            raise ValueError("metric_fn must return the same keys for every permutation")
        null[:, i] = torch.tensor([values[key] for key in observed], dtype=torch.float64)
    results = {}
    for row, (key, value) in enumerate(observed.items()):
        # a relative tolerance so that a permuted score equal to the observed one up to rounding counts
        tol = 1e-12 * max(1.0, abs(value))
        hits = (null[row] >= value - tol) if sides[key] == "greater" else (null[row] <= value + tol)
        p = (1 + int(hits.sum())) / (1 + permutations)
        sd = float(null[row].std()) if permutations > 1 else 0.0
        results[key] = PermutationTest(
            value, float(null[row].mean()), sd, p, permutations, seed, sides[key], null[row].clone()
        )
    return results[""] if scalar else results


def _alternatives(
    alternative: str | Mapping[str, str], observed: Mapping[str, float], scalar: bool
) -> dict[str, str]:
    if isinstance(alternative, str):
        sides = dict.fromkeys(observed, alternative)
    elif isinstance(alternative, Mapping) and not scalar:
        unknown = sorted(set(alternative) - set(observed))
        if unknown:
            raise ValueError(f"alternative names keys {unknown} that metric_fn does not return")
        sides = {key: alternative.get(key, "greater") for key in observed}
    else:
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    for side in sides.values():
        if side not in ("greater", "less"):
            raise ValueError(f"alternative must be 'greater' or 'less', got {side!r}")
    return sides


@one_device
def bootstrap_interval(
    metric_fn: Callable[[Tensor, Tensor], object],
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
    value = _number(metric_fn(x, y))
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    scores = torch.empty(resamples, dtype=torch.float64)
    for i in range(resamples):
        idx = torch.randint(0, n, (n,), generator=g).to(x.device)
        scores[i] = _number(metric_fn(x[idx], y[idx]))
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


def seed_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and a Student-t interval of a metric over independent runs.

    ``mean ± t_{(1+level)/2, n−1} · sd / √n`` with ``sd`` the unbiased (n − 1) standard deviation:
    the interval for the expected value of the metric over training seeds. With one run the
    standard deviation and the interval are NaN (nothing is known about the spread).

    Args:
        values: the metric of each run (finite numbers; non-finite ones are dropped).
        level: coverage of the interval, in (0, 1).

    Returns:
        ``{"mean", "sd", "low", "high", "n"}``.

    Cost: O(n).
    """
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        raise ValueError("values must hold at least one finite number")
    mean = sum(finite) / n
    if n == 1:
        return {"mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": n}
