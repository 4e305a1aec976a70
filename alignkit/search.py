"""Search a query set against an index: Recall@K, MRR, hubness, optional CSLS, top-k overlap.

    from alignkit.search import search
    result = search(queries, index, ids=truth, csls_k=10, overlap_index=native_index)
    result.metrics   # {"recall@1": …, "recall@10": …, "mrr": …, "hub_share": …, "k_skew": …, "overlap@10": …}
    result.indices   # (N, k) best-first index rows of every query

This is how a vector index is used, and how a migrated index is judged (``alignkit search``,
``alignkit fit``'s report, :func:`evaluate_migration`): *queries* of one space search an *index* of
possibly another size; ``ids[i]`` is the index row that is the right answer for query i.

Scores are cosine similarities. With ``csls_k > 0`` the ranking is cross-domain similarity local
scaling (Conneau et al. 2018, "Word Translation Without Parallel Data"):
``CSLS(q, g) = 2cos(q, g) − r_Q(g) − r_G(q)``, ``r_Q(g)`` the mean cosine of index row g to its
``csls_k`` nearest queries. ``r_G(q)`` is constant per query, so the ranking is that of
``2cos(q, g) − r_Q(g)``, which is an inner product of augmented rows ``[2q̂, −1]·[ĝ, r_Q(g)]``;
that is how the existing blocked engines (:func:`alignkit.functional.knn` for the top-k,
:func:`alignkit.functional.recall_at_k` for exact ranks) run it unchanged. The radii come from
the query set given (as MUSE computes them from the mapped source vocabulary); pass
``csls_reference`` to compute them from another sample of queries.

Everything is exact and blocked: no (N, M) matrix exists (memory O(block·M + N·k)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import alignkit.functional as AF
from alignkit.functional._checks import EPS, check_features, check_int, check_same_device, shape_str

__all__ = [
    "SearchResult",
    "csls_index",
    "csls_radii",
    "evaluate_migration",
    "format_migration_table",
    "search",
]


@dataclass
class SearchResult:
    """What :func:`search` found and measured.

    indices: (N, k) int64 best-first index rows of every query.
    scores: (N, k) their scores (cosine, or CSLS ``2cos − r_Q(g) − r_G(q)`` with ``csls_k > 0``).
    metrics: ``recall@K`` and ``mrr`` (with ids), ``hub_share``, ``k_skew``, ``k_occurrence_max``,
        ``antihub_share`` (always), ``overlap@k`` (with an overlap index), ``n_queries``, ``n_index``.
    """

    indices: Tensor
    scores: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _unit(x: Tensor) -> Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return F.normalize(x.to(dtype), dim=-1, eps=EPS)


def csls_radii(index: Tensor, reference: Tensor, k: int = 10, chunk_size: int | None = None) -> Tensor:
    """``r(g_j)``: the mean cosine of every index row to its ``k`` nearest rows of ``reference``.

    The hub penalty of CSLS (Conneau et al. 2018): rows close to many queries get a large radius.

    Args:
        index: (M, d) indexed rows.
        reference: (R, d) a sample of the queries the index will serve, 1 ≤ k ≤ R.
        k: neighbourhood size (MUSE uses 10).
        chunk_size: rows per block of the search.

    Returns:
        (M,) radii in the compute dtype (float64 for float64 input, else float32).

    Cost: O(M·R·d) time, O(block·R + M·k) memory (one blocked :func:`~alignkit.functional.knn`).
    """
    check_features(index, "index")
    check_features(reference, "reference")
    if index.shape[1] != reference.shape[1]:
        raise ValueError(
            f"index and reference must have the same width d, got {shape_str(index)} and "
            f"{shape_str(reference)}"
        )
    check_int(k, "k", 1, reference.shape[0], f" (reference has {reference.shape[0]} rows)")
    opts: dict[str, Any] = {"metric": "dot", "exclude_self": False, "chunk_size": chunk_size}
    found = AF.knn(_unit(index), k, y=_unit(reference), **opts)
    return found.values.mean(1)


def csls_index(index: Tensor, reference: Tensor, k: int = 10, chunk_size: int | None = None) -> Tensor:
    """Index rows that carry their CSLS hub penalty, for any inner-product vector store.

    Returns ``[ĝ_j, −r(g_j)/2]`` (M, d + 1): unit rows with one extra column, ``r`` from
    :func:`csls_radii` against ``reference`` (a sample of the queries the index will serve). A query
    ``q`` searches it as ``[q̂, 1]`` by inner product: ``q̂·ĝ_j − r(g_j)/2 = (CSLS(q, g_j) + r(q))/2``,
    the CSLS ranking (Conneau et al. 2018), with no change to the search engine. Searching with the
    plain ``[q̂, 0]`` gives back cosine.

    Cost: one blocked search of M rows against R reference rows, O(M·R·d); output O(M·d).
    """
    radius = csls_radii(index, reference, k, chunk_size)
    unit = _unit(index).to(radius.dtype)
    return torch.cat([unit, -0.5 * radius[:, None]], 1).to(torch.promote_types(index.dtype, radius.dtype))


def _check_ids(ids: object, n: int, m: int) -> Tensor:
    if isinstance(ids, Tensor):
        value = ids
    else:
        try:
            value = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"ids must be a sequence of {n} integer index rows, got {type(ids).__name__}"
            ) from err
    if value.dim() != 1 or value.shape[0] != n:
        raise ValueError(f"ids must have shape ({n},) (one index row per query), got {shape_str(value)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"ids must hold integer index rows, got {value.dtype}")
    value = value.long()
    if n and (int(value.min()) < 0 or int(value.max()) >= m):
        bad = int(value.min()) if int(value.min()) < 0 else int(value.max())
        raise ValueError(f"ids must lie in [0, {m - 1}] (the index has {m} rows), got {bad}")
    return value


def search(
    queries: Tensor,
    index: Tensor,
    *,
    ids: Tensor | Sequence[int] | None = None,
    k: int = 10,
    recall_ks: Sequence[int] = (1, 10),
    csls_k: int = 0,
    csls_reference: Tensor | None = None,
    overlap_index: Tensor | None = None,
    overlap_queries: Tensor | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """Exact top-k cosine (or CSLS) search of ``queries`` in ``index``, with retrieval and index measures.

    Args:
        queries: (N, d) query rows.
        index: (M, d) indexed rows; M may differ from N.
        ids: (N,) the right index row of every query; ``None`` with N == M means row i for query i,
            ``None`` with N ≠ M measures no recall (hubness and overlap only).
        k: neighbours kept per query (clipped to M), also the k of ``k_skew`` and ``overlap@k``.
        recall_ks: the K of ``recall@K`` (each clipped to M).
        csls_k: 0 for cosine; > 0 ranks by CSLS with this neighbourhood size.
        csls_reference: (R, d) queries from which the CSLS radii are computed (default ``queries``).
        overlap_index: (M, d') another index of the same M items in the same order (e.g. natively
            re-embedded): ``overlap@k`` is the mean share of the k neighbours both searches return.
        overlap_queries: (N, d') the queries to search ``overlap_index`` with (default ``queries``;
            needed when its width differs, e.g. old-model queries on an old-model index).
        chunk_size: rows per block (``None``: about 96 MiB of scores per block).

    Returns:
        :class:`SearchResult`. ``mrr`` is the mean of 1/rank of the right row (exact rank over all M,
        ties counted against the query, as :func:`~alignkit.functional.recall_at_k`).

    Cost: O(N·M·d) time per pass: one pass for the top-k, one for the exact ranks (with ids), one or
    two for the CSLS radii, one for the overlap search; O(block·M + N·k) memory.
    """
    check_features(queries, "queries")
    check_features(index, "index")
    check_same_device(("queries", queries), ("index", index))
    if queries.shape[1] != index.shape[1]:
        raise ValueError(
            f"queries and index must have the same width d, got {shape_str(queries)} and {shape_str(index)}; "
            "map one side first (alignkit transform)"
        )
    n, m = queries.shape[0], index.shape[0]
    check_int(k, "k", 1)
    check_int(csls_k, "csls_k", 0)
    kk = min(k, m)
    truth = None
    if ids is not None:
        truth = _check_ids(ids, n, m).to(queries.device)
    elif n == m:
        truth = torch.arange(n, device=queries.device)
    q, g = _unit(queries), _unit(index)
    dtype = torch.promote_types(q.dtype, g.dtype)
    q, g = q.to(dtype), g.to(dtype)
    if csls_k > 0:
        reference = queries if csls_reference is None else csls_reference
        if reference.shape[1] != index.shape[1]:
            raise ValueError(
                f"csls_reference must have the index's width {index.shape[1]}, got {shape_str(reference)}"
            )
        ck = min(csls_k, reference.shape[0])
        radius = csls_radii(index, reference, ck, chunk_size).to(dtype)
        r_query = csls_radii(queries, index, min(csls_k, m), chunk_size).to(dtype)
        qa = torch.cat([2 * q, -torch.ones(n, 1, dtype=dtype, device=q.device)], 1)
        ga = torch.cat([g, radius[:, None]], 1)
    else:
        qa, ga, r_query = q, g, None
    found = AF.knn(qa, kk, y=ga, metric="dot", exclude_self=False, chunk_size=chunk_size)
    scores = found.values if r_query is None else found.values - r_query[:, None]
    metrics: dict[str, float] = {"n_queries": float(n), "n_index": float(m)}
    if truth is not None:
        ks = sorted({min(int(v), m) for v in recall_ks})
        ranked = AF.recall_at_k(qa, ga, k=ks, positives=truth, metric="dot", chunk_size=chunk_size)
        for requested in recall_ks:
            metrics[f"recall@{requested}"] = ranked[f"recall@{min(int(requested), m)}"]
        metrics["mrr"] = ranked["map"]  # one positive per query: AP = 1 / rank
    stats = AF.hubness(found.indices, m)
    metrics.update(stats)
    if overlap_index is not None:
        other_queries = queries if overlap_queries is None else overlap_queries
        check_features(overlap_index, "overlap_index")
        check_features(other_queries, "overlap_queries")
        if overlap_index.shape[0] != m:
            raise ValueError(
                f"overlap_index must hold the same {m} items as index (same row order), "
                f"got {shape_str(overlap_index)}"
            )
        if other_queries.shape[0] != n or other_queries.shape[1] != overlap_index.shape[1]:
            raise ValueError(
                f"overlap_queries must have shape ({n}, {overlap_index.shape[1]}) to search overlap_index, "
                f"got {shape_str(other_queries)}"
            )
        other = AF.knn(
            _unit(other_queries),
            kk,
            y=_unit(overlap_index),
            metric="dot",
            exclude_self=False,
            chunk_size=chunk_size,
        )
        shared = AF.topk_overlap(found.indices, other.indices.to(found.indices.device))
        metrics[f"overlap@{k}"] = float(shared)
    return SearchResult(found.indices, scores, metrics)


def evaluate_migration(
    old_index: Tensor,
    new_index: Tensor,
    mapped_index: Tensor,
    *,
    new_queries: Tensor | None = None,
    old_queries: Tensor | None = None,
    ids: Tensor | Sequence[int] | None = None,
    k: int = 10,
    csls_k: int = 0,
    chunk_size: int | None = None,
) -> dict[str, dict[str, float] | None]:
    """Judge a migrated index the way it is used: native new-model queries search it.

    The M indexed items are embedded by the old model (``old_index``), the new model (``new_index``,
    what a full re-embedding would give) and mapped old → new (``mapped_index = f(old_index)``).
    Queries are ``new_queries`` (N, d_new) with right answers ``ids``; without them the new-model
    rows of the items themselves are the queries (``ids = arange(M)``: "does item i's new embedding
    find item i's migrated row?"). Four columns:

    * ``"after"`` — new queries search the migrated index (what the user will experience);
    * ``"before"`` — new queries search the old index unchanged (only when the widths agree);
    * ``"native"`` — new queries search the re-embedded index: the upper bound (trivially perfect
      recall when the queries are the items themselves);
    * ``"keep_old"`` — old-model queries search the old index (not migrating at all): needs
      ``old_queries`` (defaults to ``old_index`` when the queries are the items).

    Each column holds :func:`search`'s ``recall@1``, ``recall@10``, ``mrr``, ``overlap@k`` (share of
    the top-k shared with native retrieval), ``hub_share`` and ``k_skew``; a column that cannot be
    measured is ``None``.

    Cost: four searches, O(N·M·(d_old + d_new)) time, O(block·M + N·k) memory.
    """
    for name, value in (("old_index", old_index), ("new_index", new_index), ("mapped_index", mapped_index)):
        check_features(value, name)
    m = old_index.shape[0]
    if new_index.shape[0] != m or mapped_index.shape[0] != m:
        raise ValueError(
            f"old_index, new_index and mapped_index must hold the same items, got {shape_str(old_index)}, "
            f"{shape_str(new_index)} and {shape_str(mapped_index)}"
        )
    if mapped_index.shape[1] != new_index.shape[1]:
        raise ValueError(
            f"mapped_index must have the new model's width {new_index.shape[1]}, "
            f"got {shape_str(mapped_index)}"
        )
    self_queries = new_queries is None
    if self_queries:
        if ids is not None:
            raise ValueError("ids need new_queries: without queries the items' own new rows are the queries")
        new_queries = new_index
        old_queries = old_index if old_queries is None else old_queries
    assert new_queries is not None
    common: dict[str, Any] = {"ids": ids, "k": k, "chunk_size": chunk_size}
    columns: dict[str, dict[str, float] | None] = {}
    native = search(new_queries, new_index, **common)
    native.metrics[f"overlap@{k}"] = 1.0
    columns["keep_old"] = None
    if old_queries is not None:
        columns["keep_old"] = search(
            old_queries, old_index, overlap_index=new_index, overlap_queries=new_queries, **common
        ).metrics
    columns["before"] = None
    if old_index.shape[1] == new_index.shape[1]:
        columns["before"] = search(
            new_queries, old_index, csls_k=csls_k, overlap_index=new_index, **common
        ).metrics
    columns["after"] = search(
        new_queries, mapped_index, csls_k=csls_k, overlap_index=new_index, **common
    ).metrics
    columns["native"] = native.metrics
    return columns


def format_migration_table(columns: dict[str, dict[str, float] | None], k: int = 10) -> str:
    """The measures × {keep old, before, after, native} table of :func:`evaluate_migration`."""
    names = [("keep_old", "keep old"), ("before", "before"), ("after", "after"), ("native", "native")]
    labels = {
        "recall@1": "R@1",
        "recall@10": "R@10",
        "mrr": "MRR",
        f"overlap@{k}": f"top-{k} overlap with native",
        "hub_share": "hub share (top-1)",
        "k_skew": f"k-occurrence skew (k={k})",
    }
    width = max(len(v) for v in labels.values()) + 2
    lines = [f"{'':{width}}" + "".join(f"{title:>10}" for _, title in names)]
    for key, label in labels.items():
        cells = []
        for name, _ in names:
            column = columns.get(name)
            value = None if column is None else column.get(key)
            cells.append("n/a" if value is None or not math.isfinite(value) else f"{value:.3f}")
        lines.append(f"{label:{width}}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)
