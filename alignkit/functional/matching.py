"""Image–text matching (ITM): hard negatives mined from contrastive similarities, and re-ranking.

    import alignkit.functional as AF
    neg_text = AF.sample_hard_negatives(sim)            # (B,) a non-matching text per image
    neg_image = AF.sample_hard_negatives(sim.T)         # (B,) a non-matching image per text
    order = AF.rerank_top_k(candidates, matcher_scores) # top-k reordered by the matcher
    r = AF.reranked_recall_at_k(candidates, matcher_scores, query_ids, gallery_ids, k=(1, 5))

ALBEF (Li et al. 2021, "Align before Fuse: Vision and Language Representation Learning with Momentum
Distillation") trains a fusion encoder to tell matched from unmatched image–text pairs and feeds it
*hard* negatives: for each image one text of the batch drawn with probability ∝ softmax of the
contrastive similarities over the non-matching texts, and vice versa. At retrieval time the
contrastive similarity selects the top-k candidates of each query and the matcher re-orders them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from alignkit.functional._checks import check_finite, one_device, shape_str

__all__ = ["rerank_top_k", "reranked_recall_at_k", "sample_hard_negatives"]


def _check_matrix(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (Q, M), got {shape_str(x)}")
    return x


@one_device
@torch.no_grad()
def sample_hard_negatives(
    similarity: Tensor,
    exclude: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One hard negative per row, drawn in proportion to the softmax of the row's similarities.

    For row i, with ``E_i`` the excluded columns (its positives)::

        P(j | i) = exp(s_ij) / Σ_{k ∉ E_i} exp(s_ik)   for j ∉ E_i,   0 for j ∈ E_i

    (ALBEF, Li et al. 2021, §3.2: "we sample one negative text for each image in a mini-batch
    following the softmax-normalized image-to-text similarity"; the similarity already carries the
    contrastive temperature, ``s = z_img·z_txtᵀ / τ``). For the other direction pass ``similarity.T``.

    Args:
        similarity: (B, M) scores, e.g. ``logit_scale · image @ text.T`` (no gradient flows).
        exclude: (B, M) bool, True where column j is a positive of row i (never drawn). ``None``: the
            diagonal (requires B == M), i.e. row i's own pair. Pass the diagonal *and* every other
            correct match (rows sharing a caption) to keep false negatives out.
        generator: random generator for :func:`torch.multinomial`.

    Returns:
        (B,) int64 column indices; −1 for a row whose every column is excluded (no negative exists).

    Cost: O(B·M) time and memory (one softmax and one multinomial draw per row).
    """
    s = _check_matrix(similarity, "similarity")
    if not s.is_floating_point():
        raise ValueError(f"similarity must be a floating-point tensor, got dtype {s.dtype}")
    b, m = s.shape
    if exclude is None:
        if b != m:
            raise ValueError(
                "similarity must be square when exclude is None (the diagonal is excluded), "
                f"got {shape_str(s)}"
            )
        exclude = torch.eye(b, dtype=torch.bool, device=s.device)
    elif not isinstance(exclude, Tensor) or exclude.dtype != torch.bool or exclude.shape != s.shape:
        got = shape_str(exclude) if isinstance(exclude, Tensor) else type(exclude).__name__
        raise ValueError(
            f"exclude must be a bool tensor of shape {tuple(s.shape)} like similarity, got {got}"
        )
    check_finite(s, "similarity")
    dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
    logits = s.to(dtype).masked_fill(exclude, -torch.inf)
    none = exclude.all(dim=1)
    logits[none] = 0.0  # any finite row: its draw is discarded below
    probs = torch.softmax(logits, dim=1)
    out = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return out.masked_fill(none, -1)


def _check_candidates(candidates: object, scores: object) -> tuple[Tensor, Tensor]:
    c = _check_matrix(candidates, "candidates")
    if c.dtype != torch.long:
        raise ValueError(f"candidates must be an int64 tensor of gallery indices, got dtype {c.dtype}")
    s = _check_matrix(scores, "scores")
    if s.shape[0] != c.shape[0] or s.shape[1] > c.shape[1] or s.shape[1] < 1:
        raise ValueError(
            f"scores must have shape (Q, k) with Q = {c.shape[0]} and 1 ≤ k ≤ {c.shape[1]} (the first k "
            f"candidates), got {shape_str(s)}"
        )
    if not s.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor, got dtype {s.dtype}")
    return c, s


@one_device
def rerank_top_k(candidates: Tensor, scores: Tensor) -> Tensor:
    """Merge a re-ranker into a contrastive ranking: the first k candidates re-ordered by ``scores``.

    ``candidates[q]`` is query q's contrastive ranking (best first, C ≥ k items); the first k are
    sorted by the matcher's ``scores`` (descending; equal scores keep their contrastive order) and the
    remaining C − k follow in contrastive order. With ``scores`` equal to the contrastive similarities
    the ranking is unchanged (up to ties).

    Args:
        candidates: (Q, C) int64 gallery indices, each row sorted by contrastive score.
        scores: (Q, k) matcher scores of ``candidates[:, :k]``, k ≤ C.

    Returns:
        (Q, C) int64 merged ranking.

    Cost: O(Q·k log k).
    """
    c, s = _check_candidates(candidates, scores)
    k = s.shape[1]
    order = s.argsort(dim=1, descending=True, stable=True)
    return torch.cat([c[:, :k].gather(1, order), c[:, k:]], dim=1)


@one_device
def reranked_recall_at_k(
    candidates: Tensor,
    scores: Tensor,
    query_ids: Tensor,
    gallery_ids: Tensor,
    k: int | Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Recall@K after re-ranking each query's top candidates by ``scores``.

    Gallery item j is a correct match for query q when ``gallery_ids[j] == query_ids[q]`` (paired
    rows: ``arange``; group-aware: the group ids). With P_q the positives and N_q the negatives among
    the k scored candidates, the 1-based rank of the first positive is, ties counted against (the
    convention of :func:`alignkit.functional.recall_at_k`)::

        rank_q = 1 + #{j ∈ N_q : m_qj ≥ max_{p ∈ P_q} m_qp}     (rank_q > k when P_q is empty)

    and ``recall@K = mean_q [rank_q ≤ K]`` for K ≤ k. Items beyond the k candidates keep their
    contrastive order (:func:`rerank_top_k`), so for K ≤ k only the k candidates matter. Passing the
    contrastive similarities of the candidates as ``scores`` gives the contrastive Recall@K (it equals
    ``recall_at_k`` unless the k-th and (k+1)-th contrastive scores tie).

    Args:
        candidates: (Q, C) int64 gallery indices (each query's contrastive top C, C ≥ k).
        scores: (Q, k) scores of the first k candidates (higher = better match).
        query_ids: (Q,) ids of the queries.
        gallery_ids: (G,) ids of the gallery items.
        k: the K of Recall@K (each 1 ≤ K ≤ k).

    Returns:
        ``{"recall@K": float, …}``.

    Cost: O(Q·k) after the candidates (the matcher scores only Q·k pairs, never Q·G).
    """
    c, s = _check_candidates(candidates, scores)
    width = s.shape[1]
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not ks or any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= width for x in ks):
        raise ValueError(f"k must be integers in [1, {width}] (the number of scored candidates), got {k!r}")
    for ids, name, n in ((query_ids, "query_ids", c.shape[0]), (gallery_ids, "gallery_ids", None)):
        if not isinstance(ids, Tensor) or ids.dim() != 1 or (n is not None and ids.shape[0] != n):
            want = f"({n},)" if n is not None else "(G,)"
            got = shape_str(ids) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"{name} must be a 1-D tensor of shape {want}, got {got}")
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= gallery_ids.shape[0]):
        raise ValueError(f"candidates must index the {gallery_ids.shape[0]} gallery items")
    top = c[:, :width]
    positive = gallery_ids.to(c.device)[top] == query_ids.to(c.device)[:, None]  # (Q, k)
    m = s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)
    best = m.masked_fill(~positive, -torch.inf).amax(dim=1, keepdim=True)  # (Q, 1)
    found = positive.any(dim=1)
    rank = 1 + ((m >= best) & ~positive).sum(dim=1)
    rank = torch.where(found, rank, torch.full_like(rank, width + 1))
    return {f"recall@{x}": float((rank <= x).double().mean()) for x in ks}
