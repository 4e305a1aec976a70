"""Index-level measures of a nearest-neighbour search: hubness and top-k neighbourhood overlap.

* :func:`hubness` — how unevenly a search spreads its answers over the indexed rows: the share of
  queries won by the single most frequent top-1 row, and the skewness of the k-occurrence
  distribution (Radovanović, Nanopoulos & Ivanović 2010, "Hubs in Space: Popular Nearest
  Neighbors in High-Dimensional Data", JMLR). A migrated index whose rows lost the target space's
  mean direction shows a few hubs that win most queries.
* :func:`topk_overlap` — the mean fraction of the k neighbours two searches of the same queries
  agree on (``|A_i ∩ B_i| / k``), e.g. a migrated index against a natively re-embedded one.

Both take neighbour *indices* (from :func:`alignkit.functional.knn`), so the search itself runs
once, blocked, and these cost O(N·k) (hubness) and O(N·k²) in row blocks (overlap).

    >>> import torch, alignkit.functional as AF
    >>> idx = AF.knn(queries, 10, y=index).indices
    >>> AF.hubness(idx, num_items=index.shape[0])["hub_share"]
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.functional._checks import check_int, check_reduction, one_device, reduce, shape_str

__all__ = ["hubness", "k_occurrence", "topk_overlap"]

# Elements of the (rows, k, k) comparison per block in topk_overlap.
_OVERLAP_ELEMENTS = 2**24


def _check_indices(indices: object, name: str) -> Tensor:
    if not isinstance(indices, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of neighbour indices, got {type(indices).__name__}")
    if indices.dim() != 2 or indices.shape[0] < 1 or indices.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, k) with N, k ≥ 1, got {shape_str(indices)}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer row indices, got {indices.dtype}")
    return indices.long()


def k_occurrence(indices: Tensor, num_items: int) -> Tensor:
    """``N_k(j)``: how many of the N top-k lists contain indexed row j.

    Args:
        indices: (N, k) integer neighbour indices in ``[0, num_items)``.
        num_items: M, the number of indexed rows (rows never retrieved count 0).

    Returns:
        (M,) int64 counts, summing to N·k. Cost: O(N·k + M).
    """
    idx = _check_indices(indices, "indices")
    check_int(num_items, "num_items", 1)
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= num_items:
        bad = low if low < 0 else high
        raise ValueError(f"indices must lie in [0, {num_items - 1}] (num_items = {num_items}), got {bad}")
    return torch.bincount(idx.reshape(-1), minlength=num_items)


def hubness(indices: Tensor, num_items: int) -> dict[str, float]:
    """Hubness of a search from its (N, k) neighbour indices (best first).

    With ``N_k(j)`` the k-occurrence of row j (:func:`k_occurrence`) over M indexed rows:

    * ``hub_share`` — ``max_j N_1(j) / N``: the share of queries whose top-1 answer is the single most
      frequent top-1 row (1/N … 1; an even spread over N = M queries gives about ``ln N / (N·ln ln N)``,
      a few rows, while a broken index gives a large share);
    * ``k_skew`` — the skewness ``E[(N_k − μ)³] / σ³`` of ``N_k`` over the M rows, ``μ = N·k/M``
      (Radovanović et al. 2010; 0 for a symmetric spread, large and positive with hubs; 0 when every
      row occurs equally often);
    * ``k_occurrence_max`` — ``max_j N_k(j) / N``: the share of top-k lists that contain the biggest hub;
    * ``antihub_share`` — the share of the M rows that are in no top-k list (never retrieved).

    Args:
        indices: (N, k) integer indices into the M indexed rows, best first (column 0 is the top-1).
        num_items: M ≥ 1.

    Returns:
        ``{"hub_share", "k_skew", "k_occurrence_max", "antihub_share"}`` as Python floats.

    Cost: O(N·k + M) time and memory.
    """
    idx = _check_indices(indices, "indices")
    counts = k_occurrence(idx, num_items).to(torch.float64)
    top1 = torch.bincount(idx[:, 0], minlength=num_items)
    n = idx.shape[0]
    centred = counts - counts.mean()
    var = centred.square().mean()
    skew = float(centred.pow(3).mean() / var.pow(1.5)) if float(var) > 0 else 0.0
    return {
        "hub_share": float(top1.max()) / n,
        "k_skew": skew,
        "k_occurrence_max": float(counts.max()) / n,
        "antihub_share": float((counts == 0).to(torch.float64).mean()),
    }


@one_device
def topk_overlap(a: Tensor, b: Tensor, reduction: str = "mean") -> Tensor:
    """Fraction of shared neighbours of two searches of the same queries, ``|A_i ∩ B_i| / k``.

    ``a[i]`` and ``b[i]`` are the neighbour indices of query i in two indexes that hold the same
    items in the same row order (e.g. a migrated index and a re-embedded one); the order inside a
    list does not matter. Repeated indices inside one list count once. This is the per-query term of
    the mutual k-NN alignment of Huh et al. 2024 ("The Platonic Representation Hypothesis"), taken
    here between two searches rather than two self-neighbourhoods.

    Args:
        a: (N, k) integer indices.
        b: (N, k) integer indices, same shape.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per query, (N,) float64).

    Returns:
        float64 tensor: the mean over queries (``"mean"``), the sum, or (N,) values in [0, 1].

    Cost: O(N·k²) time in row blocks, O(block·k²) memory.
    """
    ia, ib = _check_indices(a, "a"), _check_indices(b, "b")
    if ia.shape != ib.shape:
        raise ValueError(f"a and b must have the same shape (N, k), got {shape_str(ia)} and {shape_str(ib)}")
    check_reduction(reduction)
    if ib.device != ia.device:
        raise ValueError(f"a and b must be on the same device, got {ia.device} and {ib.device}")
    n, k = ia.shape
    block = max(1, _OVERLAP_ELEMENTS // (k * k))
    out = torch.empty(n, dtype=torch.float64, device=ia.device)
    for start in range(0, n, block):
        ra, rb = ia[start : start + block], ib[start : start + block]
        sa = ra.sort(dim=1).values
        first = torch.ones_like(sa, dtype=torch.bool)
        first[:, 1:] = sa[:, 1:] != sa[:, :-1]  # count each index of a once
        hit = (sa[:, :, None] == rb[:, None, :]).any(2) & first
        out[start : start + block] = hit.sum(1).to(torch.float64) / k
    return reduce(out, reduction)
