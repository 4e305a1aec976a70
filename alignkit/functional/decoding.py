"""The two tricks that let a decoder trained on text alone caption images from a joint space.

* :func:`noise_injection` — CapDec (Nukrai et al. 2022, "Text-Only Training for Image Captioning
  using Noise-Injected CLIP"): train on ``normalize(t) + ε``, ``ε ~ N(0, σ²I)``, so the decoder
  tolerates the gap between a caption's embedding and its image's.
* :func:`memory_projection` — DeCap (Li et al. 2023, "DeCap: Decoding CLIP Latents for Zero-Shot
  Captioning via Text-Only Training"): at inference replace an image embedding by a softmax-weighted
  mixture of a memory of text embeddings, which lies in the region the decoder was trained on.
* :func:`nearest_candidates` — iterative decoding's selection: among candidate texts, the one whose
  embedding is nearest (cosine) to the query.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignkit.functional._checks import (
    check_features,
    check_positive,
    check_same_device,
    compute_dtype,
    l2_normalize,
    one_device,
    shape_str,
)
from alignkit.functional.neighbors import knn
from alignkit.functional.similarity import _BLOCK_ELEMENTS  # scores held at once (16 MiB in float32)

__all__ = ["memory_projection", "nearest_candidates", "noise_injection"]


def _rows_per_block(memory_rows: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(memory_rows, 1))


@one_device
def noise_injection(
    x: Tensor, variance: float = 0.016, generator: torch.Generator | None = None, normalize: bool = True
) -> Tensor:
    """CapDec's training input: ``normalize(x) + ε`` with ``ε ~ N(0, variance·I)``.

    Args:
        x: (N, d) text embeddings in the joint space.
        variance: σ², the per-coordinate noise variance (CapDec's default 0.016, i.e. σ ≈ 0.126;
            the expected noise norm is σ·√d, about 1 at d = 64). 0 gives ``normalize(x)``.
        generator: a :class:`torch.Generator` for reproducible noise.
        normalize: L2-normalise ``x`` first (CapDec's setting; the decoder is then fed normalised
            image embeddings at inference).

    Returns:
        (N, d) in ``x``'s dtype. Gradients flow into ``x``; the noise is a constant.

    Cost: O(N·d).
    """
    check_features(x, "x")
    check_positive(variance, "variance", allow_zero=True)
    dtype = compute_dtype(x)
    base = l2_normalize(x.to(dtype)) if normalize else x.to(dtype)
    if variance == 0:
        return base.to(x.dtype)
    device = base.device if generator is None else generator.device
    noise = torch.randn(base.shape, generator=generator, dtype=dtype, device=device)
    return (base + math.sqrt(variance) * noise.to(base.device)).to(x.dtype)


@one_device
def memory_projection(query: Tensor, memory: Tensor, temperature: float = 0.01) -> Tensor:
    """DeCap's projection of ``query`` onto the span of a text memory.

    ``w = softmax(cos(q, m_j) / τ)_j``, ``p = normalize(Σ_j w_j · normalize(m_j))``: each query is
    replaced by a convex combination of the (normalised) memory embeddings, weighted towards the
    most similar ones; τ → 0 gives the nearest memory entry, τ → ∞ their mean.

    Args:
        query: (N, d) embeddings to project (image embeddings).
        memory: (M, d) text embeddings, M ≥ 1.
        temperature: τ > 0 (DeCap uses 0.01).

    Returns:
        (N, d) unit rows in ``query``'s dtype (computed in float32 or float64).

    Cost: O(N·M·d) time; the weights are built for blocks of queries, O(min(N, 2²²/M)·M) memory.
    """
    check_features(query, "query")
    check_features(memory, "memory")
    check_same_device(("query", query), ("memory", memory))
    if query.shape[1] != memory.shape[1]:
        raise ValueError(
            f"query and memory must have the same width d, got {shape_str(query)} and {shape_str(memory)}"
        )
    check_positive(temperature, "temperature")
    dtype = compute_dtype(query, memory)
    q = l2_normalize(query.to(dtype))
    m = l2_normalize(memory.to(dtype))
    parts = [
        torch.softmax(block @ m.T / temperature, dim=-1) @ m for block in q.split(_rows_per_block(m.shape[0]))
    ]
    return l2_normalize(torch.cat(parts)).to(query.dtype)


@one_device
def nearest_candidates(query: Tensor, candidates: Tensor, groups: Tensor | None = None) -> Tensor:
    """Iterative decoding's choice: for each query, the candidate of highest cosine similarity.

    Args:
        query: (N, d) embeddings (e.g. images in the joint space).
        candidates: (M, d) embeddings of candidate texts.
        groups: optional (M,) int64 query index of each candidate (e.g. the beams generated for query
            ``i``); a query chooses among its own candidates only. ``None``: every query chooses
            among all M candidates (a caption memory).

    Returns:
        (N,) int64 index into ``candidates``. With ``groups``, a query that owns no candidate raises
        ``ValueError``.

    Cost: without groups, :func:`alignkit.functional.knn` with k = 1 (cosine; blocks of queries,
    O(N·M·d) time, about 96 MiB of scores at a time); O(M·d) with groups.
    """
    check_features(query, "query")
    check_features(candidates, "candidates")
    check_same_device(("query", query), ("candidates", candidates))
    if query.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"query and candidates must have the same width d, got {shape_str(query)} and "
            f"{shape_str(candidates)}"
        )
    if groups is None:
        return knn(query, 1, candidates, metric="cosine", exclude_self=False, backend="torch").indices[:, 0]
    if not isinstance(groups, Tensor) or groups.shape != (candidates.shape[0],) or groups.dtype != torch.long:
        raise ValueError(
            f"groups must be an int64 tensor of shape ({candidates.shape[0]},), got {shape_str(groups)}"
            if isinstance(groups, Tensor)
            else f"groups must be an int64 tensor or None, got {type(groups).__name__}"
        )
    n = query.shape[0]
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= n):
        raise ValueError(f"groups must hold query indices in [0, {n})")
    owned = torch.bincount(groups, minlength=n)
    if bool((owned == 0).any()):
        missing = int((owned == 0).nonzero()[0])
        raise ValueError(f"query {missing} has no candidate in groups")
    dtype = compute_dtype(query, candidates)
    q = l2_normalize(query.to(dtype))
    c = l2_normalize(candidates.to(dtype))
    sims = (q[groups] * c).sum(-1)  # (M,)
    best = torch.full((n,), -math.inf, dtype=dtype, device=query.device)
    best = best.scatter_reduce(0, groups, sims, reduce="amax")
    is_best = sims == best[groups]
    index = torch.arange(candidates.shape[0], device=query.device)
    # first candidate reaching its group's maximum
    first = torch.full((n,), candidates.shape[0], dtype=torch.long, device=query.device)
    return first.scatter_reduce(0, groups[is_best], index[is_best], reduce="amin")
