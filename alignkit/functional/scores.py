"""Scores and distances: the "energy view" of alignment.

Every objective in :mod:`alignkit.functional.losses` compares embeddings through one of two families
of functions defined here, once:

* a **distance** ``D(x, y) ≥ 0`` (small = aligned): ``"euclidean"`` ``‖x − y‖₂``, ``"squared"``
  ``‖x − y‖₂²``, ``"cosine"`` ``1 − cos(x, y)``, and ``"dot"`` ``−x·y`` (an energy, not a metric, and
  possibly negative);
* a **score** ``s(q, k)`` (large = aligned, an unnormalised log-probability as in LeCun et al.'s
  energy-based view, ``s = −E``): ``"dot"`` ``q·k``, ``"cosine"`` ``cos(q, k)``, ``"l1"``
  ``−‖q − k‖₁``, ``"l2"`` ``−‖q − k‖₂`` and ``"bilinear"`` ``qᵀ A k`` with a weight ``A``.

Norms are safe for zero vectors (a zero vector has cosine 0 with everything) and Euclidean distances
have a finite gradient at zero distance (the gradient there is 0, a valid subgradient).

    >>> import torch
    >>> from alignkit.functional.scores import pairwise_distance, score
    >>> x, y = torch.randn(4, 8), torch.randn(6, 8)
    >>> pairwise_distance(x, y).shape
    torch.Size([4, 6])
    >>> score(x, x[:1], kind="l2").shape  # leading dims broadcast
    torch.Size([4])
"""

from __future__ import annotations

from functools import reduce as _fold

import torch
from torch import Tensor

from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_finite,
    check_same_device,
    compute_dtype,
    l2_normalize,
    one_device,
    shape_str,
)

__all__ = ["paired_distance", "pairwise_distance", "score"]

DISTANCES = ("euclidean", "squared", "cosine", "dot")
SCORES = ("dot", "cosine", "l1", "l2", "bilinear")


# --------------------------------------------------------------------------------------------------
# Private helpers, shared with alignkit.functional.losses. The underscore functions that compute take
# inputs already validated and upcast.


def _out_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a result is returned in: the promotion of the inputs' dtypes."""
    return _fold(torch.promote_types, (t.dtype for t in tensors))


def _safe_sqrt(squared: Tensor) -> Tensor:
    """``sqrt`` of a non-negative tensor whose gradient stays finite at 0.

    Values are clamped below at ``eps²`` (``eps`` the dtype's machine epsilon, so the clamp only
    touches distances below the dtype's resolution at unit scale) before the root; entries that are
    exactly zero are returned as exact zeros with zero gradient.
    """
    tiny = torch.finfo(squared.dtype).eps ** 2
    root = squared.clamp_min(tiny).sqrt()
    return torch.where(squared > 0, root, torch.zeros_like(root))


def _normalize(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (exact at any magnitude); a zero row stays zero."""
    return l2_normalize(x)


def _cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine similarity over the last dim, broadcasting leading dims; 0 for a zero vector."""
    return (_normalize(x) * _normalize(y)).sum(-1)


def _paired_distance(x: Tensor, y: Tensor, metric: str) -> Tensor:
    """Row-wise distance over the last dim (broadcasting leading dims), no validation."""
    if metric in ("euclidean", "squared"):
        d2 = (x - y).pow(2).sum(-1)  # the direct difference: exact at small distances
        return d2 if metric == "squared" else _safe_sqrt(d2)
    if metric == "cosine":
        return 1.0 - _cosine(x, y)
    return -(x * y).sum(-1)  # "dot"


def _pairwise_distance(x: Tensor, y: Tensor, metric: str, same: bool = False) -> Tensor:
    """(N, M) distance matrix of (N, d) and (M, d), no validation; ``same``: y is x (zero diagonal)."""
    if metric in ("euclidean", "squared"):
        # ‖x‖² + ‖y‖² − 2 x yᵀ: one matmul, O(N·M·d) time and O(N·M) memory.
        sq_x = x.pow(2).sum(1, keepdim=True)
        sq_y = y.pow(2).sum(1).unsqueeze(0)
        d2 = torch.addmm(sq_x + sq_y, x, y.T, alpha=-2.0).clamp_min(0.0)
        if same:  # a point's distance to itself is exactly 0, whatever the rounding of the expansion
            d2 = d2.masked_fill(torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device), 0.0)
        return d2 if metric == "squared" else _safe_sqrt(d2)
    if metric == "cosine":
        return 1.0 - _normalize(x) @ _normalize(y).T
    return -(x @ y.T)  # "dot"


def _score(q: Tensor, k: Tensor, kind: str, weight: Tensor | None = None) -> Tensor:
    """Paired score over the last dim (leading dims broadcast), no validation."""
    if kind == "dot":
        return (q * k).sum(-1)
    if kind == "cosine":
        return _cosine(q, k)
    if kind == "l1":
        return -(q - k).abs().sum(-1)
    if kind == "l2":
        return -_paired_distance(q, k, "euclidean")
    assert weight is not None
    return ((q @ weight) * k).sum(-1)  # "bilinear"


def _pairwise_score(q: Tensor, k: Tensor, kind: str, weight: Tensor | None = None) -> Tensor:
    """(N, M) score matrix of (N, d_q) queries and (M, d_k) keys, no validation, no (N, M, d) tensor."""
    if kind == "dot":
        return q @ k.T
    if kind == "cosine":
        return 1.0 - _pairwise_distance(q, k, "cosine")
    if kind == "l1":
        return -torch.cdist(q, k, p=1.0)
    if kind == "l2":
        return -_pairwise_distance(q, k, "euclidean")
    assert weight is not None
    return (q @ weight) @ k.T  # "bilinear"


def _check_weight(weight: object, q: Tensor, k: Tensor, kind: str) -> Tensor | None:
    """Validate the bilinear weight: required (d_q, d_k) for ``kind="bilinear"``, else must be None."""
    if kind != "bilinear":
        if weight is not None:
            raise ValueError(f"weight is only used with kind='bilinear', got kind={kind!r} and a weight")
        return None
    expected = f"({q.shape[-1]}, {k.shape[-1]})"
    if not isinstance(weight, Tensor):
        raise ValueError(f"kind='bilinear' needs weight, a torch.Tensor of shape {expected}, got {weight!r}")
    if weight.shape != (q.shape[-1], k.shape[-1]):
        raise ValueError(f"weight must have shape {expected} (d_q, d_k), got {shape_str(weight)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    check_finite(weight, "weight")
    return weight


# --------------------------------------------------------------------------------------------------
# Public functions.


@one_device
def pairwise_distance(x: Tensor, y: Tensor | None = None, metric: str = "euclidean") -> Tensor:
    """All-pairs distance matrix ``D[i, j] = D(x_i, y_j)``.

    Args:
        x: (N, d).
        y: (M, d); ``None`` (or ``x`` itself) means ``y = x``, and then the diagonal of the
            Euclidean and squared distances is exactly 0.
        metric: ``"euclidean"`` ``‖x_i − y_j‖₂``; ``"squared"`` ``‖x_i − y_j‖₂²``; ``"cosine"``
            ``1 − cos(x_i, y_j)`` (in [0, 2]; 1 for a zero vector); ``"dot"`` ``−x_i·y_j``.

    Returns:
        (N, M) in the promoted dtype of the inputs (computed in float32 for half precision).

    The Euclidean forms use the expansion ``‖x‖² + ‖y‖² − 2 x yᵀ`` (one matrix product, as
    ``torch.cdist`` does for large inputs), clamped at 0; the square root is safe, so the gradient is
    finite even where two rows coincide. Time O(N·M·d), memory O(N·M).

    >>> import torch
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> pairwise_distance(x)
    tensor([[0., 5.],
            [5., 0.]])
    """
    check_choice(metric, "metric", DISTANCES)
    check_features(x, "x")
    same = y is None or y is x
    if y is None:
        y = x
    check_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same feature size, got x {shape_str(x)} and y {shape_str(y)}"
        )
    check_same_device(("x", x), ("y", y))
    dtype = compute_dtype(x, y)
    return _pairwise_distance(x.to(dtype), y.to(dtype), metric, same=same).to(_out_dtype(x, y))


@one_device
def paired_distance(x: Tensor, y: Tensor, metric: str = "euclidean") -> Tensor:
    """Row-wise distance ``D(x_i, y_i)`` of two (N, d) tensors → (N,).

    ``metric`` as in :func:`pairwise_distance`. The Euclidean forms use the direct difference
    ``x_i − y_i`` (exact at small distances) and a safe square root (zero distance → gradient 0).
    Time and memory O(N·d).

    >>> import torch
    >>> paired_distance(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2))
    tensor([5.])
    """
    check_choice(metric, "metric", DISTANCES)
    check_features(x, "x")
    check_features(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {shape_str(x)} and {shape_str(y)}")
    check_same_device(("x", x), ("y", y))
    dtype = compute_dtype(x, y)
    return _paired_distance(x.to(dtype), y.to(dtype), metric).to(_out_dtype(x, y))


@one_device
def score(q: Tensor, k: Tensor, kind: str = "dot", weight: Tensor | None = None) -> Tensor:
    """Paired score ``s(q_i, k_i)`` over the last dim (higher = more aligned).

    Args:
        q: (N, d_q), or any (..., d_q).
        k: (N, d_k), or any (..., d_k) whose leading dims broadcast with ``q``'s, so that
            ``score(q[:, None], negatives)`` with negatives (N, M, d) gives (N, M).
        kind: ``"dot"`` ``q·k``; ``"cosine"`` ``cos(q, k)`` (0 for a zero vector); ``"l1"``
            ``−‖q − k‖₁``; ``"l2"`` ``−‖q − k‖₂`` (safe square root); ``"bilinear"`` ``qᵀ A k``.
        weight: ``A`` of shape (d_q, d_k), required for ``"bilinear"`` and rejected otherwise.

    Returns:
        the broadcast leading shape, e.g. (N,), in the promoted dtype of the inputs.

    Time and memory O(N·d) (bilinear: O(N·d_q·d_k) time). These are the energies of LeCun et al.
    (2006), "A Tutorial on Energy-Based Learning", with ``s = −E``; :func:`alignkit.functional.nce_loss`
    takes them as its ``score_kind``.

    >>> import torch
    >>> score(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]))
    tensor([11.])
    """
    check_choice(kind, "kind", SCORES)
    for t, name in ((q, "q"), (k, "k")):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (N, d), got {type(t).__name__}")
        check_features(t, name, ndim=t.dim() if t.dim() >= 1 else (1,), min_rows=0)
    tensors = [q, k]
    if kind != "bilinear" and q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same feature size (last dim), got q {shape_str(q)} and k {shape_str(k)}"
        )
    weight = _check_weight(weight, q, k, kind)
    if weight is not None:
        tensors.append(weight)
    try:
        torch.broadcast_shapes(q.shape[:-1], k.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"the leading dims of q {shape_str(q)} and k {shape_str(k)} must broadcast"
        ) from None
    check_same_device(*zip(("q", "k", "weight"), tensors, strict=False))
    dtype = compute_dtype(*tensors)
    up = [t.to(dtype) for t in tensors]
    return _score(up[0], up[1], kind, up[2] if weight is not None else None).to(_out_dtype(*tensors))
