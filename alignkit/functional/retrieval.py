"""Retrieval and embedding-quality metrics: Recall@K / ranks / mAP, alignment & uniformity, linear probe.

* :func:`recall_at_k` — cross-modal retrieval quality with one or several positives per query,
  exact ranks computed in blocks of queries (ties count against the query);
* :func:`alignment_uniformity` — Wang & Isola 2020's two properties of contrastive embeddings,
  uniformity by a blocked, streaming log-sum-exp with an O(N·block)-memory backward;
* :func:`linear_probe` — test accuracy of a multinomial logistic regression fitted on frozen
  features (L-BFGS, deterministic).

    >>> import torch, alignkit.functional as AF
    >>> img, txt = torch.randn(1000, 256), torch.randn(1000, 256)
    >>> AF.recall_at_k(txt, img)["recall@1"]
    >>> AF.alignment_uniformity(img, txt)["uniformity"]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_int,
    check_positive,
    check_same_device,
    check_same_shape,
    compute_dtype,
    l2_normalize,
    one_device,
    shape_str,
)
from alignkit.functional._threads import on_workers, release_memory
from alignkit.functional.neighbors import _check_width, _default_block, _spans, _tile_cols, _tile_rows

__all__ = ["alignment_uniformity", "linear_probe", "recall_at_k"]

_METRICS = ("cosine", "dot", "euclidean")
# A block of queries whose positives fall in more column tiles than this is ranked full-width instead
# (the tiles holding positives are kept until every positive score of the block is known).
_MAX_KEPT_TILES = 2
# Pairs per block in the streaming uniformity (forward and backward): 64 MiB of float32 scores.
_UNIFORMITY_BLOCK_PAIRS = 2**24


# --------------------------------------------------------------------------------------------------
# recall_at_k


def _as_positive_lists(positives: object, n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Positives in CSR form: (offsets (N + 1,), columns (nnz,)), columns sorted within each row."""
    if positives is None:
        if n != m:
            raise ValueError(
                f"positives=None pairs query i with gallery i, so query and gallery need the same number "
                f"of rows, got N = {n} and M = {m}; pass positives for other layouts"
            )
        offsets = torch.arange(n + 1, device=device)
        return offsets, torch.arange(n, device=device)
    if isinstance(positives, Tensor):
        if positives.dim() == 2:
            if positives.dtype != torch.bool:
                raise ValueError(f"positives as an (N, M) mask must be a bool tensor, got {positives.dtype}")
            if tuple(positives.shape) != (n, m):
                raise ValueError(
                    f"positives must have shape ({n}, {m}) (N queries × M gallery items), "
                    f"got {shape_str(positives)}"
                )
            rows, cols = positives.to(device).nonzero(as_tuple=True)
            counts = torch.bincount(rows, minlength=n)
        elif positives.dim() == 1:
            if positives.is_floating_point() or positives.dtype == torch.bool or positives.is_complex():
                raise ValueError(
                    f"positives as an (N,) tensor must hold integer gallery indices, got {positives.dtype}"
                )
            if positives.shape[0] != n:
                raise ValueError(
                    f"positives must have shape ({n},) (one gallery index per query), "
                    f"got {shape_str(positives)}"
                )
            cols = positives.to(device=device, dtype=torch.long)
            counts = torch.ones(n, dtype=torch.long, device=device)
        else:
            raise ValueError(
                f"positives must be an (N, M) bool mask, an (N,) index tensor or a list of index lists, "
                f"got shape {shape_str(positives)}"
            )
    elif isinstance(positives, Sequence) and not isinstance(positives, str):
        if len(positives) != n:
            raise ValueError(f"positives must hold one index list per query ({n}), got {len(positives)}")
        lists = []
        for i, row in enumerate(positives):
            items = row.tolist() if hasattr(row, "tolist") else row  # tensors and numpy arrays
            if isinstance(items, numbers.Integral) and not isinstance(items, bool):
                items = [items]
            if not isinstance(items, Sequence) or not all(
                isinstance(j, numbers.Integral) and not isinstance(j, bool) for j in items
            ):
                raise ValueError(f"positives[{i}] must be a list of integer gallery indices, got {row!r}")
            lists.append(sorted({int(j) for j in items}))
        counts = torch.tensor([len(r) for r in lists], dtype=torch.long, device=device)
        cols = torch.tensor([j for r in lists for j in r], dtype=torch.long, device=device)
    else:
        raise ValueError(
            "positives must be None, an (N, M) bool tensor, an (N,) index tensor or a list of index lists, "
            f"got {type(positives).__name__}"
        )
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= m):
        bad = int(cols.min()) if int(cols.min()) < 0 else int(cols.max())
        raise ValueError(f"positives must index the gallery, i.e. lie in [0, {m - 1}], got index {bad}")
    empty = (counts == 0).nonzero()
    if empty.numel():
        raise ValueError(
            f"positives must give every query at least one positive; query {int(empty[0])} "
            f"(and {empty.numel() - 1} more) has none"
        )
    offsets = torch.zeros(n + 1, dtype=torch.long, device=device)
    offsets[1:] = counts.cumsum(0)
    return offsets, cols


def _ranks_single(scores: Tensor, positive: Tensor) -> Tensor:
    """1-based rank of the only positive of each row, ties counted against: #{j : s_j ≥ s_pos}."""
    pos_score = scores.gather(1, positive[:, None])
    return (scores >= pos_score).sum(1, dtype=torch.int32)


def _blocked_ranks(q: Tensor, g: Tensor, positive: Tensor, col_bias: Tensor | None, block: int) -> Tensor:
    """(N,) int64 rank ``#{j : s_ij ≥ s_i,positive[i]}`` of ``s = q gᵀ + col_bias``: the rank engine.

    Same tiles as :func:`alignkit.functional.neighbors._blocked_topk` (every tile one shape, so equal
    gallery rows score bit-identically): per block of ``block`` queries, the tiles that hold the
    block's positives are computed first and kept, the positive scores read from them, then every
    tile is counted while it is in cache: the comparison is written as 0/1 floats over the tile
    itself and summed (vectorised, and exact: integer partial sums below 2²⁴) into int32 counts. A
    block whose positives spread over more than ``_MAX_KEPT_TILES`` tiles is ranked full-width (rows
    of about ``_BLOCK_BYTES``) instead. On the CPU the query blocks are dealt out to worker threads of
    one torch thread each (:func:`alignkit.functional._threads.on_workers`, as the kNN engine does),
    so the per-tile passes never wait for each other's threads.
    """
    n, m = q.shape[0], g.shape[0]
    cols = _tile_cols(m, q.device)
    col_spans = _spans(m, cols)
    first = torch.empty(n, dtype=torch.long, device=q.device)

    def tile(rows: Tensor, c0: int, c1: int) -> Tensor:
        scores = rows @ g[c0:c1].T
        return scores.add_(col_bias[c0:c1]) if col_bias is not None else scores

    wide = _default_block(m, q.dtype)

    def one_block(r0: int, r1: int, first_row: int) -> None:
        rows, pos = q[r0:r1], positive[r0:r1]
        # tile t covers columns [first_t, next first) as its own (earlier tiles overlap the last one)
        owner = torch.div(pos, cols, rounding_mode="floor").clamp_max_(len(col_spans) - 1)
        needed = owner.unique().tolist()
        if len(needed) > _MAX_KEPT_TILES:
            count = torch.empty(r1 - r0, dtype=torch.int32, device=q.device)
            for w0 in range(0, r1 - r0, wide):
                w1 = min(w0 + wide, r1 - r0)
                count[w0:w1] = _ranks_single(tile(rows[w0:w1], 0, m), pos[w0:w1])
        else:
            kept = {}
            pos_score = rows.new_empty(r1 - r0)
            for t in needed:
                c0, c1, _ = col_spans[t]
                kept[t] = tile(rows, c0, c1)
                hit = (owner == t).nonzero().squeeze(1)
                pos_score[hit] = kept[t][hit, pos[hit] - c0]
            pos_score = pos_score[:, None]
            count = torch.zeros(r1 - r0, dtype=torch.int32, device=q.device)
            for t, (c0, c1, first_col) in enumerate(col_spans):
                scores = kept.pop(t) if t in kept else tile(rows, c0, c1)
                fresh = scores[:, first_col - c0 :]
                if fresh.shape[1] < 2**24:  # 1.0 where s ≥ s_pos, in place; an exact float sum
                    count += torch.ge(fresh, pos_score, out=fresh).sum(1).to(torch.int32)
                else:
                    count += (fresh >= pos_score).sum(1, dtype=torch.int32)
        skip = first_row - r0
        first[first_row:r1] = count[skip:]  # blocks own disjoint rows: safe from any worker

    def work(spans: list[tuple[int, int, int]]) -> None:
        for span in spans:
            one_block(*span)

    on_workers(work, _spans(n, block), q.device)
    release_memory()
    return first


def _ranks_multi(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(first-positive rank, average precision) per row with several positives.

    Rows are ordered by score, descending, negatives before positives among equal scores (ties count
    against): a stable sort on the label, then a stable sort on the score.
    """
    by_label = mask.to(torch.uint8).argsort(dim=1, stable=True)
    by_score = scores.gather(1, by_label).argsort(dim=1, descending=True, stable=True)
    hits = mask.gather(1, by_label.gather(1, by_score))
    position = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=torch.float64)
    found = hits.cumsum(1, dtype=torch.float64)
    precision = torch.where(hits, found / position, 0.0)
    average_precision = precision.sum(1) / found[:, -1]
    first = hits.to(torch.uint8).argmax(1) + 1
    return first, average_precision


@torch.no_grad()
@one_device
def recall_at_k(
    query: Tensor,
    gallery: Tensor,
    k: int | Sequence[int] = (1, 5, 10),
    positives: Tensor | Sequence[Sequence[int]] | None = None,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Retrieval quality of ``gallery`` for each ``query``: Recall@K, median / mean rank and mAP.

    Gallery items are ranked by score, highest first (``"cosine"`` similarity, ``"dot"`` product, or
    ``"euclidean"``: smallest ``‖q − g‖`` first). With the set P_i of positives of query i:

    * ``recall@K`` — fraction of queries with at least one positive in the top K (R@K of image–text
      retrieval, e.g. Karpathy & Fei-Fei 2015, "Deep Visual-Semantic Alignments for Generating Image
      Descriptions"; Faghri et al. 2018, VSE++);
    * ``median_rank`` / ``mean_rank`` — of the 1-based rank of each query's first positive
      (``median_rank`` averages the two middle values for an even number of queries, as
      ``numpy.median``);
    * ``map`` — mean over queries of the average precision over all positives,
      ``AP_i = (1/|P_i|) Σ_{r=1}^{|P_i|} r / rank_r`` with rank_r the rank of the r-th positive.

    Ties count against the query (pessimistic): a negative scoring exactly as much as a positive is
    ranked before it, so a constant embedding gets the worst ranks, not the best; among tied
    positives the order is immaterial. Ranks are exact: with one positive per query
    ``rank = #{j : s_j ≥ s_pos}`` (one comparison per gallery item, counted in int32 over cache-sized
    score tiles that all have one shape, the positive's score read from its own tile), with several
    the rows are sorted. Equal gallery rows therefore score bit-identically and their ties are exact.

    Args:
        query: (N, d) queries (e.g. caption embeddings).
        gallery: (M, d) items to retrieve (e.g. image embeddings).
        k: one K or several, each 1 ≤ K ≤ M.
        positives: which gallery items are correct for each query:
            ``None`` — gallery item i for query i (needs N == M);
            an (N,) integer tensor — one gallery index per query (e.g. ``caption_to_image``);
            an (N, M) bool tensor; or a list of N lists of gallery indices (e.g. all 5 captions of
            an image for image→text retrieval). Every query needs at least one positive.
        metric: ``"cosine"`` | ``"dot"`` | ``"euclidean"``.
        chunk_size: queries per block; ``None``: one positive per query — blocks of cache-sized
            (queries × ~8,192 gallery items) tiles of about 32 MiB on the CPU; several positives —
            about 8 MiB of full-width scores per block (the sort's work arrays take 12× that).

    Returns:
        ``{"recall@K": …, …, "median_rank": …, "mean_rank": …, "map": …}`` as Python floats.

    Cost: O(N·M·d) time (plus O(N·M·log M) to sort when queries have several positives);
    O(chunk_size·min(M, 2 · 8,255) + N + nnz(positives)) memory with one positive per query,
    O(chunk_size·M + N + nnz(positives)) with several.
    """
    check_features(query, "query")
    check_features(gallery, "gallery")
    _check_width(query, gallery, "query", "gallery")
    check_same_device(("query", query), ("gallery", gallery))
    n, m = query.shape[0], gallery.shape[0]
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not ks:
        raise ValueError("k must be an integer or a non-empty sequence of integers, got an empty sequence")
    for value in ks:
        check_int(value, "k", 1, m, f" (M = {m} gallery rows, gallery of shape {shape_str(gallery)})")
    check_choice(metric, "metric", _METRICS)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    offsets, cols = _as_positive_lists(positives, n, m, query.device)
    counts = offsets.diff()
    single = bool((counts == 1).all())

    dtype = compute_dtype(query, gallery)
    q, g = query.to(dtype), gallery.to(dtype)
    col_bias = None
    if metric == "cosine":
        q, g = l2_normalize(q), l2_normalize(g)
    elif metric == "euclidean":  # −‖q − g‖² + ‖q‖² = 2q·g − ‖g‖², on centred features
        center = g.mean(0)
        q, g = 2 * (q - center), g - center
        col_bias = g.square().sum(1).neg_()
    if single:
        block = chunk_size if chunk_size is not None else _tile_rows(m, dtype, query.device, n)
        first = _blocked_ranks(q, g, cols, col_bias, block)
        average_precision = first.to(torch.float64).reciprocal()
    else:
        block = chunk_size if chunk_size is not None else _default_block(m, dtype, per_element=12)
        first = torch.empty(n, dtype=torch.long, device=query.device)
        average_precision = torch.empty(n, dtype=torch.float64, device=query.device)
        gt = g.T
        for start in range(0, n, block):
            stop = min(start + block, n)
            scores = q[start:stop] @ gt
            if col_bias is not None:
                scores.add_(col_bias)
            lo, hi = int(offsets[start]), int(offsets[stop])
            rows = torch.arange(stop - start, device=query.device).repeat_interleave(counts[start:stop])
            mask = torch.zeros(scores.shape, dtype=torch.bool, device=query.device)
            mask[rows, cols[lo:hi]] = True
            first[start:stop], average_precision[start:stop] = _ranks_multi(scores, mask)
            del scores

    ranks = first.to(torch.float64)
    ordered = ranks.sort().values
    result = {f"recall@{value}": float((first <= value).to(torch.float64).mean()) for value in ks}
    result["median_rank"] = float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)
    result["mean_rank"] = float(ranks.mean())
    result["map"] = float(average_precision.mean())
    return result


# --------------------------------------------------------------------------------------------------
# alignment_uniformity


def _neg_sq_dist(z: Tensor, sq: Tensor, start: int, stop: int, t: float) -> Tensor:
    """``−t‖z_i − z_j‖²`` for rows start:stop against all rows, the diagonal set to −inf."""
    block = torch.addmm(sq[start:stop, None] + sq[None, :], z[start:stop], z.T, alpha=-2)
    block.clamp_min_(0).mul_(-t)
    local = torch.arange(stop - start, device=z.device)
    block[local, local + start] = -math.inf
    return block


class _StreamingUniformity(torch.autograd.Function):
    """``log Σ_{i≠j} exp(−t‖z_i − z_j‖²)`` by row blocks with a running log-sum-exp (float64 total).

    Backward recomputes each block: with ``W_ij = exp(−t‖z_i − z_j‖² − LSE)`` (symmetric, zero
    diagonal), ``∂LSE/∂z_i = −4t (z_i Σ_j W_ij − Σ_j W_ij z_j)``. Memory O(block·N) both ways.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, t: float, block: int) -> Tensor:
        n = z.shape[0]
        sq = z.square().sum(1)
        total = torch.full((), -math.inf, dtype=torch.float64, device=z.device)
        for start in range(0, n, block):
            stop = min(start + block, n)
            part = _neg_sq_dist(z, sq, start, stop, t).flatten().logsumexp(0)
            total = torch.logaddexp(total, part.to(torch.float64))
        ctx.save_for_backward(z, sq, total)
        ctx.t, ctx.block = t, block
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        z, sq, total = ctx.saved_tensors
        t, block = ctx.t, ctx.block
        scale = (-4 * t * grad).to(z.dtype)
        lse = total.to(z.dtype)
        grad_z = torch.empty_like(z)
        for start in range(0, z.shape[0], block):
            stop = min(start + block, z.shape[0])
            weight = _neg_sq_dist(z, sq, start, stop, t).sub_(lse).exp_()
            grad_z[start:stop] = z[start:stop] * weight.sum(1, keepdim=True) - weight @ z
        return grad_z.mul_(scale), None, None


def _uniformity(zh: Tensor, t: float, block: int) -> Tensor:
    n = zh.shape[0]
    return _StreamingUniformity.apply(zh, float(t), block) - math.log(n * (n - 1))


@one_device
def alignment_uniformity(
    x: Tensor, y: Tensor, alpha: float = 2.0, t: float = 2.0, chunk_size: int | None = None
) -> dict[str, Tensor]:
    """Alignment and uniformity of paired embeddings (Wang & Isola 2020, "Understanding Contrastive
    Representation Learning through Alignment and Uniformity on the Hypersphere", ICML).

    On L2-normalised rows x̂, ŷ (a zero row stays zero):

    * ``alignment = (1/N) Σ_i ‖x̂_i − ŷ_i‖^α`` — positives should be close (lower is better);
    * ``uniformity_x = log [ (2 / (N(N−1))) Σ_{i<j} exp(−t‖x̂_i − x̂_j‖²) ]`` — the log of the mean
      Gaussian potential over distinct pairs (lower is more uniform; ≥ −4t), likewise
      ``uniformity_y``; ``uniformity`` is their mean.

    These are the paper's ``align_loss`` and ``uniform_loss`` (``torch.pdist(x).pow(2).mul(-t).exp()
    .mean().log()``), α = 2 and t = 2 by default there, and all are differentiable, so
    ``out["alignment"] + λ·out["uniformity"]`` is their training loss. Uniformity needs every pair
    and is computed in blocks of rows with a streaming log-sum-exp; its backward (a custom autograd
    function) recomputes the blocks, so forward and backward use O(N·block) memory, not O(N²).

    Args:
        x: (N, d) embeddings, N ≥ 2.
        y: (N, d) embeddings of the positives of x (same shape).
        alpha: α > 0, the alignment exponent (the gradient at x̂_i = ŷ_i is taken as 0, which is
            exact for α > 1).
        t: t > 0, the uniformity temperature.
        chunk_size: rows per block for the uniformity; ``None``: about 2²⁴ pairs per block (one
            block up to N = 4,096).

    Returns:
        ``{"alignment", "uniformity_x", "uniformity_y", "uniformity"}``: scalar tensors in the
        promoted dtype of x and y.

    Cost: O(N·d) for the alignment; O(N²·d) time and O(block·N) memory for each uniformity (the
    backward repeats the forward's work once).
    """
    check_features(x, "x", min_rows=2)
    check_features(y, "y", min_rows=2)
    check_same_shape(x, y, "x", "y")
    check_same_device(("x", x), ("y", y))
    check_positive(alpha, "alpha")
    check_positive(t, "t")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    n = x.shape[0]
    dtype = compute_dtype(x, y)
    out = torch.promote_types(x.dtype, y.dtype)
    xh = l2_normalize(x.to(dtype))
    yh = l2_normalize(y.to(dtype))
    sq = (xh - yh).square().sum(1)
    if alpha == 2:
        alignment = sq.mean()
    else:  # ‖·‖^α = (‖·‖²)^(α/2), with gradient 0 where x̂_i = ŷ_i (finite for every α > 0)
        present = sq > 0
        powered = torch.where(present, sq, torch.ones_like(sq)).pow(alpha / 2)
        alignment = torch.where(present, powered, torch.zeros_like(sq)).mean()
    block = chunk_size if chunk_size is not None else max(1, _UNIFORMITY_BLOCK_PAIRS // n)
    uniformity_x = _uniformity(xh, t, block)
    uniformity_y = _uniformity(yh, t, block)
    return {
        "alignment": alignment.to(out),
        "uniformity_x": uniformity_x.to(out),
        "uniformity_y": uniformity_y.to(out),
        "uniformity": ((uniformity_x + uniformity_y) / 2).to(out),
    }


# --------------------------------------------------------------------------------------------------
# linear_probe


def _check_labels(labels: object, name: str, rows: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape ({rows},), got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows},) (one label per row), got {shape_str(labels)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got dtype {labels.dtype}")
    return labels


def _fit_logistic(
    features: Tensor, targets: Tensor, num_classes: int, weight_decay: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Minimise ``mean CE(features·W + b, targets) + (λ/2)‖W‖²_F`` with full-batch L-BFGS from zero.

    Returns (W (d, C), b (C,)). Deterministic: zero initialisation, full batch, strong-Wolfe line search.
    """
    weight = features.new_zeros(features.shape[1], num_classes, requires_grad=True)
    bias = features.new_zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.addmm(bias, features, weight), targets)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@one_device
def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 1000,
    standardize: bool = True,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on frozen training features.

    The standard linear-evaluation protocol for representations (e.g. Chen et al. 2020, SimCLR;
    Radford et al. 2021, CLIP's "linear probe"). Features are standardised with the training mean
    and (population) standard deviation (a constant column stays 0); then

        ``min_{W, b}  (1/N) Σ_i −log softmax(W x_i + b)[y_i]  +  (λ/2)‖W‖²_F``

    (bias not penalised) is solved by full-batch L-BFGS with a strong-Wolfe line search from zero
    weights — deterministic and convex, so it reaches the unique optimum. This is the problem that
    ``sklearn.linear_model.LogisticRegression(C=1/(λ·N))`` solves (its loss is the sum, not the mean).

    Args:
        train_x: (N, d) training features.
        train_y: (N,) integer labels (any values; at least two classes).
        test_x: (M, d) test features.
        test_y: (M,) integer labels; a label absent from training is always counted wrong.
        weight_decay: λ ≥ 0.
        max_iter: L-BFGS iterations (≥ 1).
        standardize: standardise with the training statistics first.

    Returns:
        Accuracy in [0, 1] as a Python float.

    Cost: O(max_iter·N·d·C) time (C classes, a few function evaluations per iteration);
    O(N·C + d·C) memory beyond the features. Computed in float32 (float64 for float64 input).
    """
    check_features(train_x, "train_x")
    check_features(test_x, "test_x")
    _check_width(train_x, test_x, "train_x", "test_x")
    _check_labels(train_y, "train_y", train_x.shape[0])
    _check_labels(test_y, "test_y", test_x.shape[0])
    check_same_device(("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y))
    check_positive(weight_decay, "weight_decay", allow_zero=True)
    check_int(max_iter, "max_iter", 1)
    classes, targets = torch.unique(train_y, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError(f"train_y must contain at least 2 classes, got {classes.tolist()}")
    dtype = compute_dtype(train_x, test_x)
    train, test = train_x.detach().to(dtype), test_x.detach().to(dtype)
    if standardize:
        mean = train.mean(0)
        std = train.std(0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        train, test = (train - mean) / std, (test - mean) / std
    weight, bias = _fit_logistic(train, targets, classes.numel(), float(weight_decay), max_iter)
    predicted = classes[torch.addmm(bias, test, weight).argmax(1)]
    return float((predicted == test_y).to(torch.float64).mean())
