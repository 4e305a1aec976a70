"""Point-to-point ("micro") alignment objectives: each row of one side is matched to given rows of the
other (its own counterpart, a positive, sampled negatives), as opposed to the structural objectives of
:mod:`alignkit.functional.structural` that compare whole similarity structures.

| function | per-sample loss | source |
|---|---|---|
| :func:`repa_loss` | ``−cos(x_n, y_n)`` | Yu et al. 2024 (REPA) |
| :func:`marginal_cosine_loss` | ``ReLU(1 − m − cos(x_n, y_n))`` | Yao et al. 2025 (VA-VAE) |
| :func:`soft_nn_kl_loss` | ``KL(softmax(cos(x_i, Y)/τ) ‖ softmax(cos(y_i, X)/τ))`` | soft NN matching |
| :func:`pair_contrastive_loss` | ``y·D² + (1 − y)·max(0, m − D)²`` | Hadsell, Chopra & LeCun 2006 |
| :func:`triplet_loss` | ``max(0, D(a, p) − D(a, n) + m)`` | Schroff et al. 2015 (FaceNet) |
| :func:`batch_triplet_loss` | the same, mined in the batch from labels | FaceNet; Hermans et al. 2017 |
| :func:`nce_loss` | binary NCE / negative sampling | Gutmann & Hyvärinen 2010; Mnih & Teh 2012 |
| :func:`byol_loss` | ``2 − 2·cos(p, sg(t))`` | Grill et al. 2020 (BYOL) |

Distances and scores come from :mod:`alignkit.functional.scores`. Conventions as for the whole of
:mod:`alignkit.functional`: rows are samples (or tokens); half precision is computed in float32 and
returned in the inputs' dtype; ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``; a bad
argument raises ``ValueError`` naming it.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from alignkit.functional import _checks
from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_finite,
    check_positive,
    check_reduction,
    check_same_device,
    check_same_rows,
    check_same_shape,
    compute_dtype,
    one_device,
    reduce,
    shape_str,
)
from alignkit.functional.scores import (
    SCORES,
    _check_weight,
    _cosine,
    _normalize,
    _out_dtype,
    _paired_distance,
    _pairwise_distance,
    _pairwise_score,
    _score,
)

__all__ = [
    "batch_triplet_loss",
    "byol_loss",
    "marginal_cosine_loss",
    "nce_loss",
    "pair_contrastive_loss",
    "repa_loss",
    "soft_nn_kl_loss",
    "triplet_loss",
]

# The distances a margin loss accepts (the "dot" energy of scores.DISTANCES can be negative).
MARGIN_DISTANCES = ("euclidean", "squared", "cosine")
MINING = ("all", "hard", "semi-hard")
_AUTO_CHUNK_ABOVE = 2048  # soft_nn_kl_loss: one block up to this many rows, else blocks of 1024
_AUTO_CHUNK = 1024


def _upcast(*tensors: Tensor) -> list[Tensor]:
    dtype = compute_dtype(*tensors)
    return [t.to(dtype) for t in tensors]


def _check_paired(x: Tensor, y: Tensor, name_x: str, name_y: str, ndim: tuple[int, ...] = (2,)) -> None:
    check_features(x, name_x, ndim=ndim)
    check_features(y, name_y, ndim=ndim)
    check_same_shape(x, y, name_x, name_y)
    check_same_device((name_x, x), (name_y, y))


def _check_tokens(x: Tensor, name: str) -> None:
    """(N, d) or (B, T, d); a (B, C, H, W) map gets a hint on how to pass it."""
    if isinstance(x, Tensor) and x.dim() == 4:
        raise ValueError(
            f"{name} must have shape (N, d) or (B, T, d), got {shape_str(x)}; pass a (B, C, H, W) "
            f"feature map as {name}.flatten(2).transpose(1, 2), i.e. (B, H·W, C)"
        )
    check_features(x, name, ndim=(2, 3))


def _check_margin(margin: float, upper: float | None = None) -> None:
    check_positive(margin, "margin", allow_zero=True)
    if upper is not None and not margin < upper:
        raise ValueError(f"margin must be in [0, {upper:g}), got {margin}")


def _check_chunk_size(chunk_size: object) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _graph_zero(x: Tensor, reduction: str, length: int) -> Tensor:
    """A zero that keeps ``x`` in the autograd graph (so ``backward()`` works and gives zero gradients)."""
    zero = x.sum() * 0
    return zero.repeat(length) if reduction == "none" else zero


# --------------------------------------------------------------------------------------------------
# Cosine alignment of paired rows / tokens.


@one_device
def repa_loss(source: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """REPA token-wise alignment: ``−cos(source_n, target_n)``, averaged over every row / token.

    Yu et al. 2024, "Representation Alignment for Generation: Training Diffusion Transformers Is
    Easier Than You Think" (REPA): ``L = −E[(1/N) Σ_n sim(y*_n, h_φ(h_t^[n]))]``, where ``h_t`` are
    the hidden tokens of one block of the model being trained, ``h_φ`` a small trainable projector
    (an MLP with SiLU in the paper) and ``y*`` the tokens of a frozen encoder (DINOv2). Pass the
    projected hidden states as ``source`` and the frozen features as ``target`` (the loss is symmetric;
    the target is *not* detached here, compute it under ``torch.no_grad()``). The paper adds the loss
    to the diffusion loss with weight λ = 0.5.

    Args:
        source: (N, d) or (B, T, d).
        target: same shape as ``source``.
        reduction: ``"mean"`` over all rows / tokens, ``"sum"``, or ``"none"`` for the per-row (N,)
            or per-token (B, T) values of ``−cos``.

    Returns:
        a scalar in [−1, 1], or the leading shape for ``"none"``. Time and memory O(N·d).

    >>> import torch
    >>> x = torch.randn(2, 16, 8)
    >>> repa_loss(x, 3 * x)
    tensor(-1.)
    """
    _check_paired(source, target, "source", "target", ndim=(2, 3))
    check_reduction(reduction)
    s, t = _upcast(source, target)
    return reduce(-_cosine(s, t), reduction).to(_out_dtype(source, target))


@one_device
def marginal_cosine_loss(x: Tensor, y: Tensor, margin: float = 0.0, reduction: str = "mean") -> Tensor:
    """Marginal cosine similarity loss (mcos): ``mean ReLU(1 − margin − cos(x_n, y_n))``.

    Yao et al. 2025, "Reconstruction vs. Generation: Taming Optimization Dilemma in Latent Diffusion
    Models" (VA-VAE), Eq. for ``L_mcos``: the VAE latent (linearly projected to the foundation model's
    width) is aligned position by position with the frozen vision foundation model's features, and
    pairs already more similar than ``1 − margin`` are not penalised. VA-VAE uses ``margin = 0.5``;
    ``margin = 0`` gives ``1 − cos``.

    Args:
        x: (N, d) or (B, T, d); cosine is taken over the last dim. A (B, C, H, W) feature map is
            passed as ``x.flatten(2).transpose(1, 2)``, i.e. (B, H·W, C).
        y: same shape as ``x``.
        margin: in [0, 2).
        reduction: ``"mean"`` over all rows / positions, ``"sum"``, or ``"none"`` (leading shape).

    Returns:
        a scalar in [0, 2 − margin]. Time and memory O(N·d).
    """
    _check_tokens(x, "x")
    _check_tokens(y, "y")
    check_same_shape(x, y, "x", "y")
    check_same_device(("x", x), ("y", y))
    _check_margin(margin, upper=2.0)
    check_reduction(reduction)
    xc, yc = _upcast(x, y)
    loss = F.relu(1.0 - margin - _cosine(xc, yc))
    return reduce(loss, reduction).to(_out_dtype(x, y))


@one_device
def byol_loss(prediction: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """BYOL regression loss ``2 − 2·cos(p, sg(t))`` (the squared distance of the L2-normalised vectors).

    Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    Eq. 2. ``target`` is detached inside (the stop-gradient ``sg``), so only the online branch that
    made ``prediction`` is trained. Symmetrise by adding the loss with the views swapped.

    Args:
        prediction: (N, d), the online predictor's output.
        target: (N, d), the target network's projection.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` for (N,).

    Returns:
        a scalar in [0, 4]. Time and memory O(N·d).
    """
    _check_paired(prediction, target, "prediction", "target")
    check_reduction(reduction)
    p, t = _upcast(prediction, target.detach())
    return reduce(2.0 - 2.0 * _cosine(p, t), reduction).to(_out_dtype(prediction, target))


# --------------------------------------------------------------------------------------------------
# Soft nearest-neighbour matching.


def _soft_nn_kl_block(xn: Tensor, yn: Tensor, start: int, stop: int, temperature: float) -> Tensor:
    log_p = torch.log_softmax(xn[start:stop] @ yn.T / temperature, dim=1)  # rows i of S / τ
    log_q = torch.log_softmax(yn[start:stop] @ xn.T / temperature, dim=1)  # columns i of S / τ
    return (log_p.exp() * (log_p - log_q)).sum(1)


@one_device
def soft_nn_kl_loss(
    x: Tensor,
    y: Tensor,
    temperature: float = 0.1,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Soft nearest-neighbour matching: KL between each row's soft match on the other side and back.

    With ``S[a, b] = cos(x_a, y_b)``, ``p_i = softmax_j(S[i, j] / τ)`` is where ``x_i`` points among
    the ``y`` and ``q_i = softmax_j(S[j, i] / τ)`` where ``y_i`` points among the ``x``;
    ``loss_i = KL(p_i ‖ q_i) = Σ_j p_ij (log p_ij − log q_ij)``. It is zero when the two soft
    correspondences agree for every ``i`` (e.g. ``S`` symmetric), and is small when ``x_i`` and
    ``y_i`` have the same neighbourhoods on the other side.

    Computed exactly in blocks of rows: a block ``I`` needs only ``X_I Yᵀ`` and ``Y_I Xᵀ`` (b × N
    each), so time is O(N²·d) and memory O(b·N + N·d), never O(N²): in the backward too, because a
    block is recomputed there (activation checkpointing) when there is more than one.

    Args:
        x: (N, d).
        y: (N, d), row ``i`` paired with ``x``'s row ``i``.
        temperature: τ > 0.
        reduction: ``"mean"`` over ``i`` (default), ``"sum"`` (the seed's ``Σ_i``), ``"none"`` (N,).
        chunk_size: rows per block; ``None`` uses one block up to N = 2048 and blocks of 1024 above.

    Returns:
        a scalar ≥ 0 (or (N,) for ``"none"``).
    """
    _check_paired(x, y, "x", "y")
    check_positive(temperature, "temperature")
    check_reduction(reduction)
    n = x.shape[0]
    if chunk_size is None:
        chunk_size = _AUTO_CHUNK if n > _AUTO_CHUNK_ABOVE else n
    _check_chunk_size(chunk_size)
    xc, yc = _upcast(x, y)
    xn, yn = _normalize(xc), _normalize(yc)
    starts = range(0, n, chunk_size)
    recompute = len(starts) > 1 and torch.is_grad_enabled() and (xn.requires_grad or yn.requires_grad)
    blocks = []
    for start in starts:
        stop = min(start + chunk_size, n)
        if recompute:
            blocks.append(
                checkpoint(_soft_nn_kl_block, xn, yn, start, stop, temperature, use_reentrant=False)
            )
        else:
            blocks.append(_soft_nn_kl_block(xn, yn, start, stop, temperature))
    loss = torch.cat(blocks)
    return reduce(loss, reduction).to(_out_dtype(x, y))


# --------------------------------------------------------------------------------------------------
# Distance-margin losses.


@one_device
def pair_contrastive_loss(
    x: Tensor,
    y: Tensor,
    is_positive: Tensor,
    margin: float = 1.0,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> Tensor:
    """Contrastive loss on labelled pairs: ``y·D² + (1 − y)·max(0, m − D)²``.

    Hadsell, Chopra & LeCun 2006, "Dimensionality Reduction by Learning an Invariant Mapping", Eq. 4
    (with the factor ½ of both terms dropped): positive pairs are pulled together, negative pairs
    pushed apart until they are ``margin`` away. ``D`` is the row-wise distance of
    :func:`alignkit.functional.scores.paired_distance`.

    Args:
        x: (N, d).
        y: (N, d); row ``i`` forms a pair with ``x``'s row ``i``.
        is_positive: (N,) bool, or an integer or float tensor of 0 / 1: whether pair ``i`` is similar.
        margin: m > 0, in the units of ``distance``.
        distance: ``"euclidean"`` (default, as in the paper), ``"squared"`` or ``"cosine"``.
        reduction: ``"mean"`` over pairs (default), ``"sum"`` or ``"none"`` (N,).

    Returns:
        a scalar ≥ 0. Time and memory O(N·d).
    """
    _check_paired(x, y, "x", "y")
    check_choice(distance, "distance", MARGIN_DISTANCES)
    check_positive(margin, "margin")
    check_reduction(reduction)
    if not isinstance(is_positive, Tensor) or is_positive.shape != (x.shape[0],):
        got = shape_str(is_positive) if isinstance(is_positive, Tensor) else type(is_positive).__name__
        raise ValueError(f"is_positive must be a ({x.shape[0]},) tensor of 0/1 or bool, got {got}")
    check_same_device(("x", x), ("is_positive", is_positive))
    if is_positive.dtype != torch.bool and bool(((is_positive != 0) & (is_positive != 1)).any()):
        raise ValueError("is_positive must hold only 0 and 1 (or be a bool tensor)")
    xc, yc = _upcast(x, y)
    dist = _paired_distance(xc, yc, distance)
    label = is_positive.to(dist.dtype)
    loss = label * dist.pow(2) + (1.0 - label) * F.relu(margin - dist).pow(2)
    return reduce(loss, reduction).to(_out_dtype(x, y))


@one_device
def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 0.2,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> Tensor:
    """Triplet margin loss on explicit triplets: ``max(0, D(a, p) − D(a, n) + margin)``.

    Schroff, Kalenichenko & Philbin 2015, "FaceNet: A Unified Embedding for Face Recognition and
    Clustering", Eq. 1 (FaceNet uses the squared distance of L2-normalised embeddings and margin 0.2).
    To mine the triplets from labels within a batch use :func:`batch_triplet_loss`.

    Args:
        anchor, positive, negative: (N, d) each, row ``i`` is one triplet.
        margin: ≥ 0, in the units of ``distance``.
        distance: ``"euclidean"`` (default), ``"squared"`` or ``"cosine"`` (``1 − cos``).
        reduction: ``"mean"`` over the N triplets (zero-loss ones included), ``"sum"``, ``"none"``.

    Returns:
        a scalar ≥ 0. Time and memory O(N·d).
    """
    _check_paired(anchor, positive, "anchor", "positive")
    _check_paired(anchor, negative, "anchor", "negative")
    check_choice(distance, "distance", MARGIN_DISTANCES)
    _check_margin(margin)
    check_reduction(reduction)
    a, p, n = _upcast(anchor, positive, negative)
    loss = F.relu(_paired_distance(a, p, distance) - _paired_distance(a, n, distance) + margin)
    return reduce(loss, reduction).to(_out_dtype(anchor, positive, negative))


def _mined_triplet_sums(
    dist: Tensor, pos: Tensor, neg: Tensor, margin: float, semi_hard: bool
) -> tuple[Tensor, Tensor]:
    """Per-anchor sums of ``relu(D_ap − D_an + m)`` over every mined triplet, and the triplet count.

    For an anchor ``a`` and positive ``p`` the triplets with positive loss are the negatives with
    ``D_an < D_ap + m``; with the anchor's negative distances sorted ascending and their prefix sums
    ``P``, their total is ``k·(D_ap + m) − P[k]`` where ``k`` counts them (a binary search). Semi-hard
    mining also drops the ``k_lo`` negatives with ``D_an ≤ D_ap``. This is the exact sum over all
    (a, p, n) in O(N² log N) time and O(N²) memory, forward and backward, instead of an (N, N, N)
    tensor; the gradient is the same as the explicit sum's (it flows through the sorted values).
    """
    hi = dist.detach().max() + margin + 1.0  # beyond every threshold D_ap + m: never counted
    neg_sorted = dist.masked_fill(~neg, hi).sort(dim=1).values  # each anchor's negatives first
    # Prefix sums in float64: a difference of two long prefix sums loses little precision there.
    prefix = F.pad(neg_sorted.double().cumsum(1), (1, 0))  # prefix[a, k] = sum of the k smallest
    keys = neg_sorted.detach().contiguous()
    k_hi = torch.searchsorted(keys, (dist + margin).detach(), right=False)  # #{n : D_an < D_ap + m}
    if semi_hard:
        k_lo = torch.searchsorted(keys, dist.detach().contiguous(), right=True)  # #{n : D_an ≤ D_ap}
        k_lo = torch.minimum(k_lo, k_hi)
    else:
        k_lo = torch.zeros_like(k_hi)
    count = k_hi - k_lo
    total = count * (dist.double() + margin) - (prefix.gather(1, k_hi) - prefix.gather(1, k_lo))
    per_anchor = torch.where(pos, total, 0.0).sum(1).to(dist.dtype)
    n_triplets = (count * pos).sum() if semi_hard else (pos.sum(1) * neg.sum(1)).sum()
    return per_anchor, n_triplets


# Batch-hard mining: rows of anchors per block, about this many bytes of float32 distances per block.
_MINING_BLOCK_BYTES = 4 * 2**20


@torch.no_grad()
def _batch_hard_pairs(e: Tensor, labels: Tensor, distance: str) -> tuple[Tensor, Tensor]:
    """(N,) indices of every anchor's farthest positive and nearest negative, mined without gradient
    in row blocks (O(block·N) memory): distances ranked by ``‖e_j‖² − 2 e_i·e_j`` (the squared
    distance less the row constant ``‖e_i‖²``) or ``−cos``. An anchor with no positive (negative)
    gets an arbitrary index; the caller zeroes its loss. Ties are broken arbitrarily."""
    n = e.shape[0]
    if distance == "cosine":
        e = _normalize(e)
        col = None
    else:
        col = e.square().sum(1)
    block = max(1, _MINING_BLOCK_BYTES // (4 * n))
    far_pos = torch.empty(n, dtype=torch.long, device=e.device)
    near_neg = torch.empty(n, dtype=torch.long, device=e.device)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        rank = torch.addmm(col, e[r0:r1], e.T, alpha=-2.0) if col is not None else e[r0:r1] @ e.T.neg()
        same = labels[r0:r1, None] == labels[None, :]
        near_neg[r0:r1] = rank.masked_fill(same, math.inf).argmin(1)
        rows = torch.arange(r1 - r0, device=e.device)
        rank.masked_fill_(~same, -math.inf)[rows, rows + r0] = -math.inf  # positives only, self out
        far_pos[r0:r1] = rank.argmax(1)
    return far_pos, near_neg


@one_device
def batch_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    distance: str = "euclidean",
    mining: str = "all",
    reduction: str = "mean",
) -> Tensor:
    """Triplet loss with the triplets mined in the batch from class labels.

    A valid triplet (a, p, n) has ``labels[a] == labels[p]``, ``a ≠ p`` and ``labels[n] ≠ labels[a]``;
    its loss is ``max(0, D(a, p) − D(a, n) + margin)`` (Schroff et al. 2015, FaceNet). ``mining``:

    * ``"all"``: every valid triplet; the mean is over **all** valid triplets, zero-loss ones
      included (pytorch-metric-learning's default reducer instead averages over the non-zero ones);
    * ``"hard"``: batch-hard (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss for Person
      Re-Identification"): per anchor, its farthest positive and nearest negative, one triplet per
      anchor that has both; the mean is over those anchors;
    * ``"semi-hard"``: FaceNet's semi-hard negatives, for every (a, p) pair every negative with
      ``D(a, p) < D(a, n) < D(a, p) + margin``; the mean is over those triplets. A batch with valid
      triplets but none semi-hard (all easy, or all hard) gives a zero loss.

    ``"all"`` and ``"semi-hard"`` compute the N × N distance matrix once and sum over the triplets
    exactly without an (N, N, N) tensor: each anchor's negative distances are sorted and a binary
    search counts, for each positive, the negatives inside the margin (O(N²·(d + log N)) time, O(N²)
    memory, forward and backward). ``"hard"`` mines without gradient in blocks of anchors (O(N²·d)
    time, O(block·N) memory) and then recomputes only the 2N chosen distances with gradient (their
    direct form ``‖a − p‖``), so autograd holds O(N·d).

    A batch with no valid triplet (every label distinct, or all equal) emits a ``UserWarning`` and
    returns a zero that keeps ``embeddings`` in the graph, never NaN.

    Args:
        embeddings: (N, d).
        labels: (N,) integer (or bool) class labels.
        margin: ≥ 0, in the units of ``distance``.
        distance: ``"euclidean"`` (default), ``"squared"`` or ``"cosine"`` (``1 − cos``).
        mining: ``"all"`` (default), ``"hard"`` or ``"semi-hard"``.
        reduction: ``"mean"`` over the mined triplets, ``"sum"`` over them, or ``"none"``: (N,) per
            anchor, the sum of the losses of the triplets it anchors (0 for an anchor with none), so
            that ``"sum"`` is its total and ``"mean"`` its total divided by the number of triplets.

    Returns:
        a scalar ≥ 0, or (N,) for ``"none"``.
    """
    check_features(embeddings, "embeddings")
    n = embeddings.shape[0]
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        got = shape_str(labels) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"labels must be a ({n},) integer tensor (one label per row of embeddings), got {got}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer or bool tensor, got dtype {labels.dtype}")
    check_same_device(("embeddings", embeddings), ("labels", labels))
    _check_margin(margin)
    check_choice(distance, "distance", MARGIN_DISTANCES)
    check_choice(mining, "mining", MINING)
    check_reduction(reduction)

    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    has_triplet = (counts[inverse] > 1) & (counts[inverse] < n)  # a positive and a negative
    if not bool(has_triplet.any()):
        warnings.warn(
            f"batch_triplet_loss: no valid triplet in a batch of {n} with {labels.unique().numel()} "
            "distinct label(s) (a triplet needs two rows of one label and one of another); returning 0",
            UserWarning,
            stacklevel=2,
        )
        return _graph_zero(embeddings, reduction, n)

    (e,) = _upcast(embeddings)
    if mining == "hard":
        hardest_pos, hardest_neg = _batch_hard_pairs(e.detach(), labels, distance)
        d_pos = _paired_distance(e, e[hardest_pos], distance)
        d_neg = _paired_distance(e, e[hardest_neg], distance)
        per_anchor = torch.where(has_triplet, F.relu(d_pos - d_neg + margin), 0.0)
        n_triplets = has_triplet.sum()
    else:
        same = labels[:, None] == labels[None, :]
        pos = same & ~torch.eye(n, dtype=torch.bool, device=labels.device)
        neg = ~same
        dist = _pairwise_distance(e, e, distance, same=True)
        per_anchor, n_triplets = _mined_triplet_sums(dist, pos, neg, margin, semi_hard=mining == "semi-hard")

    if reduction == "none":
        loss = per_anchor
    elif reduction == "sum":
        loss = per_anchor.sum()
    else:  # an empty semi-hard set gives 0 / 1 = 0
        loss = per_anchor.sum() / n_triplets.clamp_min(1)
    return loss.to(embeddings.dtype)


# --------------------------------------------------------------------------------------------------
# Noise-contrastive estimation.


def _check_noise_log_prob(noise_log_prob: object, n: int, m: int) -> float | Tensor | None:
    if noise_log_prob is None:
        return None
    hint = "(a log-probability is ≤ 0; did you pass a probability?)"
    if isinstance(noise_log_prob, Tensor):
        if not noise_log_prob.is_floating_point():
            raise ValueError(
                f"noise_log_prob must be a floating-point tensor, got dtype {noise_log_prob.dtype}"
            )
        try:
            ok = torch.broadcast_shapes(noise_log_prob.shape, (n, 1 + m)) == (n, 1 + m)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"noise_log_prob must broadcast to (N, 1 + M) = ({n}, {1 + m}) (column 0 the positive, "
                f"then the negatives), got {shape_str(noise_log_prob)}"
            )
        check_finite(noise_log_prob, "noise_log_prob")
        if _checks._FINITE_CHECKS and bool((noise_log_prob > 0).any()):
            raise ValueError(f"noise_log_prob has value(s) > 0 {hint}")
        return noise_log_prob
    if isinstance(noise_log_prob, bool) or not isinstance(noise_log_prob, (int, float)):
        raise ValueError(
            f"noise_log_prob must be None, a float or a tensor, got {type(noise_log_prob).__name__}"
        )
    if not (math.isfinite(noise_log_prob) and noise_log_prob <= 0):
        raise ValueError(f"noise_log_prob must be a finite number ≤ 0 {hint}, got {noise_log_prob}")
    return float(noise_log_prob)


@one_device
def nce_loss(
    query: Tensor,
    positive: Tensor,
    negatives: Tensor,
    noise_log_prob: float | Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    score_kind: str = "dot",
    weight: Tensor | None = None,
) -> Tensor:
    """Binary noise-contrastive estimation: classify the positive key against M noise samples.

    Gutmann & Hyvärinen 2010, "Noise-contrastive estimation: A new estimation principle for
    unnormalized statistical models"; Mnih & Teh 2012, "A fast and simple algorithm for training
    neural probabilistic language models". With the score ``s(q, k) = score(q, k) / τ`` as an
    unnormalised log-density and M noise samples per positive drawn from ``p_n``, the posterior that
    a key came from the data is ``p(C=1 | q, k) = σ(s − log(M·p_n(k)))`` and

        loss = −log σ(s⁺ − log(M p_n(k⁺))) − Σ_m log(1 − σ(s⁻_m − log(M p_n(k⁻_m)))).

    With ``noise_log_prob=None`` the correction ``log(M p_n)`` is dropped altogether, which is the
    negative-sampling objective of Mikolov et al. 2013 (word2vec):
    ``−log σ(s⁺) − Σ_m log σ(−s⁻_m)``. Computed with ``F.logsigmoid`` (stable for any score).

    Args:
        query: (N, d_q).
        positive: (N, d_k), the positive key of each query.
        negatives: (N, M, d_k) per-query negatives, or (M, d_k) shared by every query; M ≥ 1.
        noise_log_prob: ``None``; a float ``log p_n`` shared by every key; or a tensor broadcastable
            to (N, 1 + M) holding ``log p_n`` of ``[positive, negatives]`` (column 0 the positive),
            e.g. (1 + M,) for shared negatives. Values must be ≤ 0 (log-probabilities).
        temperature: τ > 0.
        reduction: ``"mean"`` over queries (default), ``"sum"`` or ``"none"`` (N,).
        score_kind: the score of :func:`alignkit.functional.scores.score`: ``"dot"`` (default),
            ``"cosine"``, ``"l1"``, ``"l2"`` or ``"bilinear"``.
        weight: the (d_q, d_k) matrix ``A`` of the ``"bilinear"`` score ``qᵀ A k``.

    Returns:
        a scalar ≥ 0. Time O(N·M·d); memory O(N·M) beyond the inputs (shared negatives are scored
        with one matrix product, or ``cdist`` for ``"l1"``).
    """
    check_choice(score_kind, "score_kind", SCORES)
    check_features(query, "query")
    check_features(positive, "positive")
    check_features(negatives, "negatives", ndim=(2, 3))
    check_same_rows(query, positive, "query", "positive")
    if score_kind != "bilinear" and query.shape[1] != positive.shape[1]:
        raise ValueError(
            f"query and positive must have the same feature size, got {shape_str(query)} and "
            f"{shape_str(positive)}"
        )
    if negatives.shape[-1] != positive.shape[1]:
        raise ValueError(
            f"negatives must have positive's feature size {positive.shape[1]} in its last dim, "
            f"got {shape_str(negatives)}"
        )
    if negatives.dim() == 3 and negatives.shape[0] != query.shape[0]:
        raise ValueError(
            f"per-query negatives must have shape (N, M, d) with N = {query.shape[0]} (query's rows), "
            f"got {shape_str(negatives)}"
        )
    n, m = query.shape[0], negatives.shape[-2]
    if m < 1:
        raise ValueError(f"negatives must hold at least one negative (M ≥ 1), got {shape_str(negatives)}")
    weight = _check_weight(weight, query, positive, score_kind)
    noise = _check_noise_log_prob(noise_log_prob, n, m)
    check_positive(temperature, "temperature")
    check_reduction(reduction)
    named = [("query", query), ("positive", positive), ("negatives", negatives)]
    if weight is not None:
        named.append(("weight", weight))
    if isinstance(noise, Tensor):
        named.append(("noise_log_prob", noise))
    check_same_device(*named)
    tensors = [t for name, t in named if name != "noise_log_prob"]

    up = _upcast(*tensors)
    q, k_pos, k_neg = up[:3]
    w = up[3] if weight is not None else None
    s_pos = _score(q, k_pos, score_kind, w) / temperature  # (N,)
    if k_neg.dim() == 3:
        s_neg = _score(q.unsqueeze(1), k_neg, score_kind, w) / temperature  # (N, M)
    else:
        s_neg = _pairwise_score(q, k_neg, score_kind, w) / temperature  # (N, M)
    logits = torch.cat([s_pos.unsqueeze(1), s_neg], dim=1)  # (N, 1 + M)
    if noise is not None:
        logits = logits - (math.log(m) + (noise.to(logits.dtype) if isinstance(noise, Tensor) else noise))
    loss = -F.logsigmoid(logits[:, 0]) - F.logsigmoid(-logits[:, 1:]).sum(1)
    return reduce(loss, reduction).to(_out_dtype(*tensors))
