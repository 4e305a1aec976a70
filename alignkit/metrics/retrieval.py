"""Streaming cross-modal retrieval: accumulate paired embeddings, score them all at the end.

>>> import torch
>>> from alignkit.metrics import RetrievalMetric
>>> metric = RetrievalMetric(k=(1, 5, 10))
>>> for _ in range(10):
...     img = torch.randn(100, 64); metric.update(img + 0.5 * torch.randn(100, 64), img)
>>> metric.compute()["recall@1"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import alignkit.functional as AF
from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_int,
    check_same_device,
    check_same_shape,
    shape_str,
)
from alignkit.metrics.base import Metric

__all__ = ["RetrievalMetric"]


class RetrievalMetric(Metric):
    """Recall@K, median / mean rank and mAP of paired embeddings accumulated over batches.

    Row i of ``query`` is paired with row i of ``gallery`` (e.g. a caption and its image); the rows
    of all updates — on every process, gathered in rank order, so global row i of the queries still
    pairs with global row i of the gallery — are concatenated and scored by
    :func:`alignkit.functional.recall_at_k` with ``positives=None``, i.e. each query must retrieve
    its own gallery item among all N::

        recall@K = (1/N) Σ_i [rank_i ≤ K],   rank_i = #{j : s(q_i, g_j) ≥ s(q_i, g_i)}

    (R@K of image–text retrieval, e.g. Karpathy & Fei-Fei 2015, "Deep Visual-Semantic Alignments for
    Generating Image Descriptions"). States (``"cat"``): ``query`` and ``gallery`` rows.

    Args:
        k: one K or several, each ≥ 1 (and ≤ N at compute time).
        metric: ``"cosine"`` | ``"dot"`` | ``"euclidean"``, as in ``recall_at_k``.
        chunk_size: queries per scoring block, as in ``recall_at_k`` (``None``: ~96 MiB of scores).
        sync_on_compute, process_group: see :class:`Metric`.

    Cost: updates O(n·d) memory per batch (rows are kept: O(N·d) in total, and after a sync every
    rank holds all world_size ranks' rows); compute O(N²·d) time, O(chunk_size·N) extra memory.
    """

    query: list[Tensor]
    gallery: list[Tensor]

    def __init__(
        self,
        k: int | Sequence[int] = (1, 5, 10),
        metric: str = "cosine",
        chunk_size: int | None = None,
        *,
        sync_on_compute: bool = True,
        process_group: Any | None = None,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute, process_group=process_group)
        ks = (k,) if isinstance(k, int) else tuple(k)
        if not ks:
            raise ValueError(
                "k must be an integer or a non-empty sequence of integers, got an empty sequence"
            )
        for value in ks:
            check_int(value, "k", 1)
        check_choice(metric, "metric", ("cosine", "dot", "euclidean"))
        if chunk_size is not None:
            check_int(chunk_size, "chunk_size", 1)
        self.k, self.metric, self.chunk_size = ks, metric, chunk_size
        self.add_state("query", [], "cat")
        self.add_state("gallery", [], "cat")

    def extra_repr(self) -> str:
        return f"k={self.k}, metric={self.metric!r}"

    @torch.no_grad()
    def update(self, query: Tensor, gallery: Tensor) -> None:
        """Add n pairs: query (n, d) and gallery (n, d), row i of one paired with row i of the other."""
        check_features(query, "query", finite=False)
        check_features(gallery, "gallery", finite=False)
        check_same_shape(query, gallery, "query", "gallery")
        check_same_device(("query", query), ("gallery", gallery))
        if self.query and self.query[0].shape[1] != query.shape[1]:
            raise ValueError(
                f"query must keep the width of the earlier updates, {self.query[0].shape[1]} columns, "
                f"got shape {shape_str(query)}"
            )
        check_features(query, "query")
        check_features(gallery, "gallery")
        self._place(("query", query), ("gallery", gallery))
        self.query.append(query.detach().clone())
        self.gallery.append(gallery.detach().clone())

    def _compute(self) -> dict[str, float]:
        if not self.query:
            raise ValueError("RetrievalMetric.compute() needs at least one update (no rows seen)")
        query, gallery = torch.cat(self.query), torch.cat(self.gallery)
        return AF.recall_at_k(query, gallery, k=self.k, metric=self.metric, chunk_size=self.chunk_size)

    def compute(self) -> dict[str, float]:
        """``{"recall@K": …, "median_rank": …, "mean_rank": …, "map": …}`` over all rows seen."""
        return super().compute()  # type: ignore[no-any-return]
