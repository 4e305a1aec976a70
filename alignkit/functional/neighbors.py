"""Nearest-neighbour measures of alignment: chunked k-NN, mutual k-NN, CKNNA and CSLS.

* :func:`knn` — exact top-k neighbours of every row, in blocks of rows against all columns (never
  the full N×M score matrix); faiss (``faiss-cpu``) is used when it is installed and the data is on
  the CPU. Every neighbour search in alignkit goes through it.
* :func:`mutual_knn` and :func:`cknna` — the neighbourhood-agreement measures of Huh et al. 2024,
  "The Platonic Representation Hypothesis".
* :func:`csls` and :func:`csls_retrieve` — cross-domain similarity local scaling (Conneau et al.
  2018, "Word Translation Without Parallel Data").

Cosine similarities follow the library convention for zero vectors: rows are scaled by
``1 / max(‖x_i‖, EPS)``, so a zero row has cosine 0 with every row, itself included.

    >>> import torch, alignkit.functional as AF
    >>> x, y = torch.randn(1000, 64), torch.randn(1000, 384)
    >>> AF.mutual_knn(x, y, k=10), AF.cknna(x, y, k=10)
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_int,
    check_same_device,
    check_same_rows,
    compute_dtype,
    l2_normalize,
    l2_row_factors,
    one_device,
    shape_str,
)
from alignkit.functional._threads import on_workers, release_memory

__all__ = ["cknna", "csls", "csls_retrieve", "knn", "mutual_knn"]

# The blocked search engine (``_blocked_topk`` here, ``_blocked_ranks`` in retrieval.py) forms scores in
# (rows × cols) tiles of about ``_TILE_BYTES`` (≈ 1,024 × 8,192 in float32, inside a 32 MiB L3): small
# enough to stay in cache between the GEMM that writes a tile and the pass (top-k, rank count) that
# reads it, large enough for the GEMM to run at full rate and for the per-tile passes to be few —
# on the shared 2-core CI machine, 4 MiB tiles (1,024 × 1,024) were 2–6× slower than 32 MiB ones,
# every small parallel region paying for threads descheduled by the machine's other load. Every tile
# has the same shape (the last row block and column tile are shifted back to overlap their neighbour
# instead of being narrower), so every score comes from the same GEMM kernel path and equal vectors
# score bit-identically wherever they sit (exact ties). Accelerators get one tile per row block (all
# columns): their kernels want large launches (threshold not measured here). On the CPU the top-k
# search runs its row blocks on worker threads of one torch thread each (see ``_blocked_topk``).
_TILE_BYTES = 32 * 2**20
_TILE_COLS = 8192
# Full-width (rows × M) blocks where a pass needs a whole row at once (recall with several positives
# sorts each row): about this many bytes of scores per block.
_BLOCK_BYTES = 96 * 2**20
# Elements of the (rows, k, k) comparison in mutual_knn per block.
_OVERLAP_ELEMENTS = 2**24
_METRICS = ("cosine", "dot", "euclidean")
_BACKENDS = ("auto", "torch", "faiss")


class Neighbors(NamedTuple):
    """Result of :func:`knn` and :func:`csls_retrieve`.

    indices: (N, k) int64 row indices into the searched set, best first.
    values: (N, k) their scores — similarities (descending) for ``"cosine"``, ``"dot"`` and CSLS,
        distances (ascending) for ``"euclidean"`` — in the promoted dtype of the inputs.
    """

    indices: Tensor
    values: Tensor


# --------------------------------------------------------------------------------------------------
# Validation helpers (shared with retrieval.py)


def _check_width(x: Tensor, y: Tensor, name_x: str, name_y: str) -> None:
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"{name_x} and {name_y} must have the same feature width d, got {shape_str(x)} and {shape_str(y)}"
        )


def _check_dot_range(x: Tensor, y: Tensor, dtype: torch.dtype, searched_self: bool) -> None:
    """Raise when dot products of rows of x and y could overflow ``dtype``: ``|x_i·y_j| ≤ ‖x_i‖·‖y_j‖``
    (Cauchy–Schwarz, for every partial sum too), so largest row norms whose product stays below half
    the dtype's maximum (room for the rounding of d ≤ 2²³ float32 products) keep every score finite.
    Overflowed scores (±inf, NaN from inf − inf) have no ranking: the search would return arbitrary
    or missing neighbours. Cost: one O((N + M)·d) pass."""
    nx = float(torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).max())
    ny = nx if searched_self else float(torch.linalg.vector_norm(y, dim=1, dtype=torch.float64).max())
    if nx * ny > torch.finfo(dtype).max / 2:
        names = "x" if searched_self else "x and y"
        raise ValueError(
            f"metric='dot': rows of {names} have norms up to {max(nx, ny):.3g}, so their dot products can "
            f"overflow {str(dtype).removeprefix('torch.')} (max {torch.finfo(dtype).max:.3g}); "
            "scale them down or pass float64"
        )


def _default_block(columns: int, dtype: torch.dtype, per_element: int = 1) -> int:
    """Rows per full-width block so that a (rows, columns) block of ``dtype`` (times ``per_element``)
    is about ``_BLOCK_BYTES``."""
    size = torch.empty((), dtype=dtype).element_size() * per_element
    return max(1, _BLOCK_BYTES // (max(columns, 1) * size))


def _balanced(total: int, step: int, align: int = 64) -> int:
    """A span length near ``step`` that covers ``total`` in as few equal spans as ``step`` does, with
    the least overlap: ``ceil(total / spans)`` rounded up to a multiple of ``align`` (at most total)."""
    spans = math.ceil(total / max(step, 1))
    return max(1, min(total, math.ceil(math.ceil(total / spans) / align) * align))


def _tile_cols(columns: int, device: torch.device) -> int:
    """Columns per tile of the blocked search: about ``_TILE_COLS`` on the CPU, all columns elsewhere."""
    return _balanced(columns, _TILE_COLS) if device.type == "cpu" else max(1, columns)


def _tile_rows(columns: int, dtype: torch.dtype, device: torch.device, rows: int | None = None) -> int:
    """Default rows per block of the blocked search: a (rows, tile columns) tile of about
    ``_TILE_BYTES`` on the CPU (balanced over ``rows`` when given); a full-width block of about
    ``_BLOCK_BYTES`` elsewhere."""
    if device.type != "cpu":
        return _default_block(columns, dtype)
    size = torch.empty((), dtype=dtype).element_size()
    step = max(1, _TILE_BYTES // (_tile_cols(columns, device) * size))
    return step if rows is None else _balanced(rows, step, align=16)


def _spans(total: int, step: int) -> list[tuple[int, int, int]]:
    """``(start, stop, first)`` spans of ``step`` covering ``range(total)``, all of length ``step``
    (when ``total ≥ step``): the last one is shifted back to end at ``total``, and ``first`` is the
    first index in it not covered by an earlier span."""
    spans = []
    for first in range(0, total, step):
        start = min(first, max(0, total - step))
        spans.append((start, min(start + step, total), first))
    return spans


# --------------------------------------------------------------------------------------------------
# knn


@functools.cache
def _faiss() -> Any | None:
    """The faiss module if it is importable, else None (checked once)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _merge(
    best_v: Tensor | None, best_i: Tensor | None, cand_v: Tensor, cand_i: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The (rows, ≤ k) best of a running top-k and (rows, c) candidates (unsorted)."""
    if best_v is None or best_i is None:
        return cand_v, cand_i
    values, indices = torch.cat((best_v, cand_v), 1), torch.cat((best_i, cand_i), 1)
    if values.shape[1] <= k:
        return values, indices
    values, pick = values.topk(k, dim=1, sorted=False)
    return values, indices.gather(1, pick)


# A row block's least candidate score, from the lowest of its running bounds (r,): the screen's floor.
Lower = Callable[[Tensor], Tensor]

# Columns per group of the CPU search's group maxima (see _tile_candidates).
_GROUP = 8


def _group_size(cols: int, k: int) -> int:
    """The largest power of two ≤ ``_GROUP`` dividing ``cols`` that leaves ≥ 4k groups (1: no groups)."""
    g = _GROUP
    while g > 1 and (cols % g or cols // g < 4 * k):
        g //= 2
    return g


def _tile_candidates(
    scores: Tensor, bound: Tensor, k: int, g: int, c0: int, lower: Lower | None = None, masked: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Entries of a (rows, c) score tile that may belong to their row's top-k: (values, rows, columns).

    ``bound`` (rows, k) holds, per row, the maxima of k disjoint sets of the columns seen so far (updated
    here with this tile's): k distinct entries are ≥ ``thr = min(bound)``, so no entry below ``thr``
    can be among the k best, and every entry ≥ ``thr`` is returned (ties included). To find them in
    one vectorised pass, the tile is read as groups of ``g`` adjacent columns: their maxima (one
    ``max_pool1d``) name the groups with an entry ≥ ``thr`` (a few per row), and only those groups'
    entries are compared (:func:`_group_hits`, :func:`_kept`). With ``lower``, every entry
    ≥ ``lower(thr)`` is returned (the screen of :func:`_screened_self_topk`). The first ``masked``
    columns are −inf (owned by another tile): the k sets are taken from the groups after them, so that
    a set of masked columns (maximum −inf) cannot hold the bound down and let the whole tile through.
    """
    r, c = scores.shape
    w = c // g
    gmax = F.max_pool1d(scores.view(r, 1, c), g).view(r, w) if g > 1 else scores
    thr, hit_rows, hit_groups = _group_hits(gmax, bound, k, lower, -(-masked // g))
    vals = scores.view(r * w, g).index_select(0, hit_rows * w + hit_groups)  # (hits, g)
    return _kept(vals, thr, hit_rows, hit_groups, c0)


def _group_hits(
    gmax: Tensor, bound: Tensor, k: int, lower: Lower | None = None, first: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """From (r, w) group maxima: ``bound`` (r, k) updated in place with the maxima of k disjoint sets of
    groups (contiguous ranges of groups ``first:``), and (thr (r,) = min of the bound, mapped by
    ``lower`` when given, rows, groups) of every group whose maximum is ≥ its row's thr."""
    r, w = gmax.shape
    sets = (w - first) // k
    if sets > 0:
        pooled = F.max_pool1d(gmax[:, first : first + sets * k].unsqueeze(1), sets).view(r, k)
        torch.maximum(bound, pooled, out=bound)
    thr = bound.amin(1) if lower is None else lower(bound.amin(1))
    hit_rows, hit_groups = torch.ge(gmax, thr[:, None]).nonzero(as_tuple=True)
    return thr, hit_rows, hit_groups


def _kept(
    vals: Tensor, thr: Tensor, hit_rows: Tensor, hit_groups: Tensor, offset: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The entries ≥ their row's ``thr`` of the (hits, g) values of the hit groups: (values, rows,
    ``group·g + position + offset``), rows in the order of ``hit_rows``."""
    g = vals.shape[1]
    keep = torch.ge(vals, thr[hit_rows, None]).view(-1).nonzero().squeeze(1)
    hit = torch.div(keep, g, rounding_mode="floor")
    cols = hit_groups.index_select(0, hit) * g + (keep - hit * g) + offset
    return vals.view(-1).index_select(0, keep), hit_rows.index_select(0, hit), cols


def _padded(
    values: Tensor,
    rows: Tensor,
    cols: Tensor,
    r: int,
    fill: int,
    lead: tuple[Tensor, Tensor] | None = None,
    min_width: int = 0,
) -> tuple[Tensor, Tensor]:
    """(r, width ≥ min_width) value and column tables holding each row's candidates (``rows`` sorted),
    after the (r, k₀) columns of ``lead`` when given; padding −inf with column ``fill``."""
    counts = torch.bincount(rows, minlength=r)
    first = 0 if lead is None else lead[0].shape[1]
    width = max(min_width, first + (int(counts.max()) if rows.numel() else 0))
    slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    pos = rows * width + first + slot
    padded_v = values.new_full((r, width), -math.inf)
    padded_i = torch.full((r, width), fill, dtype=cols.dtype, device=rows.device)
    if lead is not None:
        padded_v[:, :first], padded_i[:, :first] = lead
    padded_v.view(-1)[pos] = values
    padded_i.view(-1)[pos] = cols
    return padded_v, padded_i


def _select(values: Tensor, rows: Tensor, cols: Tensor, r: int, k: int) -> tuple[Tensor, Tensor]:
    """Per row of ``r``, the k best of the candidates (values, rows, cols), best first: (r, k) each."""
    rows, order = rows.sort(stable=True)
    padded_v, padded_i = _padded(values[order], rows, cols[order], r, 0)
    best_v, pick = padded_v.topk(k, dim=1)
    return best_v, padded_i.gather(1, pick)


def _blocked_topk(
    a: Tensor,
    b: Tensor,
    k: int,
    block: int,
    scale: float = 1.0,
    col_bias: Tensor | None = None,
    exclude_self: bool = False,
) -> tuple[Tensor, Tensor]:
    """Top-k (largest) per row of ``scale · a bᵀ + col_bias``: the search engine of :func:`knn`.

    Rows of ``a`` go in blocks of ``block``; each block meets ``b`` in column tiles (see
    ``_TILE_BYTES``). On the CPU each tile's possible top-k entries are picked out while it is in
    cache by :func:`_tile_candidates` (a running lower bound of the k-th best, no per-tile sort), and
    one top-k per row block ranks them (:func:`_select`); row blocks are shared among
    ``torch.get_num_threads()`` Python threads, each running its torch operations on one thread (as
    faiss splits queries among threads): small per-tile operations then never wait for each other, which
    on a loaded machine costs more than they do. At most one (block, tile) score matrix exists per
    thread. ``torch.set_num_threads`` is set to 1 inside the workers and restored afterwards.
    Elsewhere (one full-width tile per block) a top-k per tile, merged into a running top-k.
    ``scale`` must be a power of two (it is applied to ``a`` once, exactly). ``exclude_self`` removes
    column i from row i. Returns (values (N, k), indices (N, k)), best first; ties at the k-th value
    are broken arbitrarily (deterministically).
    """
    if scale != 1.0:
        if math.frexp(scale)[0] != 0.5:
            raise AssertionError(f"scale must be a power of two, got {scale}")
        a = a * scale
    n, m = a.shape[0], b.shape[0]
    values = a.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long, device=a.device)
    cols = min(_tile_cols(m, a.device), m)
    col_spans = _spans(m, cols)
    block = min(block, n)
    row_spans = _spans(n, block)
    cpu = a.device.type == "cpu"
    g = _group_size(cols, k)

    def scores_of(buf: Tensor, r0: int, r1: int, c0: int, c1: int, first_col: int) -> Tensor:
        scores = torch.mm(a[r0:r1], b[c0:c1].T, out=buf)
        if col_bias is not None:
            scores.add_(col_bias[c0:c1])
        if first_col > c0:  # columns already seen in the previous (overlapping) tile
            scores[:, : first_col - c0] = -math.inf
        if exclude_self:
            scores.diagonal(r0 - c0).fill_(-math.inf)
        return scores

    def one_block(buf: Tensor, r0: int, r1: int, first_row: int) -> None:
        if cpu:
            bound = a.new_full((r1 - r0, k), -math.inf)
            found = [
                _tile_candidates(scores_of(buf, r0, r1, c0, c1, first_col), bound, k, g, c0)
                for c0, c1, first_col in col_spans
            ]
            best_v, best_i = _select(*(torch.cat(part) for part in zip(*found, strict=True)), r1 - r0, k)
        else:
            best_v = best_i = None
            for c0, c1, first_col in col_spans:
                top_v, top_i = scores_of(buf, r0, r1, c0, c1, first_col).topk(min(k, c1 - c0), dim=1)
                best_v, best_i = _merge(best_v, best_i, top_v, top_i + c0, k)
            assert best_v is not None and best_i is not None
            best_v, order = best_v.sort(dim=1, descending=True, stable=True)
            best_i = best_i.gather(1, order)
        skip = first_row - r0  # rows already written by the previous (overlapping) block
        values[first_row:r1] = best_v[skip:]
        indices[first_row:r1] = best_i[skip:]

    def work(spans: list[tuple[int, int, int]]) -> None:
        with torch.no_grad():
            buf = a.new_empty(block, cols)  # one (block, tile) score matrix per worker
            for r0, r1, first_row in spans:
                one_block(buf, r0, r1, first_row)

    on_workers(work, row_spans, a.device)
    release_memory()
    return values, indices


# Square (t, t) score tiles of the symmetric self-search (``_self_topk``): about this many bytes.
_SELF_TILE_BYTES = 16 * 2**20


def _self_tile(n: int, dtype: torch.dtype) -> int:
    """Rows (= columns) per square tile of :func:`_self_topk` for N rows: about ``_SELF_TILE_BYTES``."""
    size = torch.empty((), dtype=dtype).element_size()
    return _balanced(n, max(1, math.isqrt(_SELF_TILE_BYTES // size)))


def _first_k(values: Tensor, cols: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row of (r, w) candidates, the k best by value with ties to the smaller column, best first.

    A total order, so the result is the same whatever order the candidates arrived in."""
    cols, order = cols.sort(dim=1, stable=True)
    values, order2 = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    return values[:, :k], cols.gather(1, order2[:, :k])


def _tile_candidates_t(
    scores: Tensor, bound: Tensor, k: int, g: int, skip: int, r0: int, lower: Lower | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_tile_candidates` of ``scores[:, skip:].T`` without forming the transpose: the entries of
    a (c, t) tile's columns ``skip:`` that may belong to their top-k among its rows, as (values,
    columns − skip, rows + r0). Groups are ``g`` adjacent rows (``g`` divides c); ``bound`` is
    (t − skip, k), updated in place."""
    c, t = scores.shape
    w = c // g
    gmax = scores[:, skip:].view(w, g, t - skip).amax(1).T.contiguous()  # (t − skip, w) group maxima
    thr, hit_rows, hit_groups = _group_hits(gmax, bound, k, lower)
    within = torch.arange(g, device=scores.device)
    flat = (hit_groups[:, None] * g + within) * t + (hit_rows[:, None] + skip)  # (hits, g) into scores
    vals = scores.view(-1).index_select(0, flat.view(-1)).view(-1, g)
    return _kept(vals, thr, hit_rows, hit_groups, r0)


Found = tuple[Tensor, Tensor, Tensor]  # a tile's candidates for one row block: (values, rows, columns)


def _symmetric_tiles(
    a: Tensor,
    spans: list[tuple[int, int, int]],
    k: int,
    factors: tuple[Tensor, Tensor] | None,
    exclude_self: bool,
    dtype: torch.dtype,
    bound_of: Callable[[int], Tensor],
    take: Callable[[int, Found, int], None],
    lower_of: Callable[[int], Lower] | None = None,
) -> None:
    """The tile loop of the symmetric self-search (:func:`_self_topk`, :func:`_screened_self_topk`).

    For every square block (I, J), I ≤ J, of ``S = â âᵀ`` (``â`` = rows of ``a``, normalised as
    ``(a/s)/n`` when ``factors = (s, n)`` are given, then cast to ``dtype``): ``take(I, found, r)``
    with the candidates of row block I among columns J (:func:`_tile_candidates` against
    ``bound_of(I)`` and ``lower_of(I)``), and for I < J ``take(J, found, r)`` with the same scores
    read by column (:func:`_tile_candidates_t`). Entries outside the block that owns them (the
    shifted last block) and, with ``exclude_self``, the diagonal are −inf. Tiles are dealt out to
    worker threads (:func:`on_workers`), row by row, so ``take`` must be safe to call from several
    threads.
    Memory per worker: one (t, t) score tile and two (t, d) row blocks (and their two ``dtype`` copies
    when ``dtype`` is not ``a.dtype``).
    """
    d = a.shape[1]
    size = spans[0][1] - spans[0][0]
    g = _group_size(size, k)

    def rows_of(span: tuple[int, int, int], out: Tensor, cast: Tensor) -> Tensor:
        r0, r1, _ = span
        block = a[r0:r1]
        if factors is not None:
            torch.div(block, factors[0][r0:r1], out=out)
            block = out.div_(factors[1][r0:r1])  # bitwise l2_normalize's rows
        return block if dtype == a.dtype else cast.copy_(block)

    def work(tiles: list[tuple[int, int]]) -> None:
        buf = a.new_empty(size, size)
        low = buf if dtype == a.dtype else torch.empty(size, size, dtype=dtype, device=a.device)
        rows_i, rows_j = a.new_empty(size, d), a.new_empty(size, d)
        cast_i, cast_j = (rows_i, rows_j)  # unused when the tiles are multiplied in a.dtype
        if dtype != a.dtype:
            cast_i, cast_j = (torch.empty(size, d, dtype=dtype, device=a.device) for _ in range(2))
        current = -1
        for i, j in tiles:
            (r0, _, first_r), (c0, _, first_c) = spans[i], spans[j]
            if i != current:  # tiles come row by row, so block i is normalised once per row
                a_i, current = rows_of(spans[i], rows_i, cast_i), i
            a_j = a_i if i == j else rows_of(spans[j], rows_j, cast_j)
            scores = torch.mm(a_i, a_j.T, out=low)
            if low is not buf:  # read in a.dtype: the candidate passes run 2–4× slower on bfloat16
                scores = buf.copy_(low)
            scores[:, : first_c - c0] = -math.inf  # columns owned by the previous block
            if i == j and exclude_self:
                scores.fill_diagonal_(-math.inf)
            own = scores[first_r - r0 :]
            lower = None if lower_of is None else lower_of(i)
            take(i, _tile_candidates(own, bound_of(i), k, g, c0, lower, first_c - c0), own.shape[0])
            if i != j:  # the same scores, read by column, for the rows of block j
                # (block i < j is never the shifted last block, so all its rows are its own)
                skip = first_c - c0
                lower = None if lower_of is None else lower_of(j)
                found = _tile_candidates_t(scores, bound_of(j), k, g, skip, r0, lower)
                take(j, found, size - skip)

    on_workers(work, [(i, j) for i in range(len(spans)) for j in range(i, len(spans))], a.device)
    release_memory()


def _self_topk(a: Tensor, k: int, tile: int, normalize: bool, exclude_self: bool) -> tuple[Tensor, Tensor]:
    """Top-k (largest) per row of ``â âᵀ`` (``â`` = rows of ``a``, L2-normalised when ``normalize``): the
    CPU engine of :func:`knn` when x is searched against itself, over half the pairs.

    ``S = â âᵀ`` is symmetric, so only its upper triangle of square (tile, tile) blocks is formed: block
    (I, J), I ≤ J, gives row block I its candidates among columns J (:func:`_tile_candidates`) and row
    block J its candidates among columns I (:func:`_tile_candidates_t`, reading the block's columns) —
    half the GEMM work of searching all N × N pairs (``_blocked_topk``). Rows are normalised block by
    block as the tiles need them (``(x/s)/‖x/s‖``, s = max|x| of the row: bitwise :func:`l2_normalize`),
    so no normalised copy of ``a`` exists. Every tile has one shape (the last block is shifted back to
    overlap its neighbour; each row and column belongs to the one block that first covers it, and
    entries outside it are masked), so each pair (i, j) is scored once, by one GEMM call of one shape,
    and serves both i and j (:func:`_symmetric_tiles`).

    Each row block keeps a running top-k. A tile's candidates for it are those not below the running
    k-th best or the tile's own set maxima (whichever bound is higher), and they are merged under a
    per-block lock by :func:`_first_k`: a total order (value, then smaller column), so the result is
    deterministic although the tiles are shared among ``torch.get_num_threads()`` worker threads in no
    fixed order. Candidates are picked outside the lock from a snapshot of the running top-k: a stale
    bound is lower, so it only lets more through.

    Returns (values (N, k), indices (N, k)), best first. Memory per worker: one (tile, tile) score
    matrix and two (tile, d) normalised blocks; O(N·k) for the result.
    """
    n = a.shape[0]
    spans = _spans(n, min(tile, n))
    floor = torch.finfo(a.dtype).min
    state_v = [a.new_full((stop - first, k), -math.inf) for _, stop, first in spans]
    state_i = [torch.full_like(v, n, dtype=torch.long) for v in state_v]
    locks = [threading.Lock() for _ in spans]

    def take(block: int, found: Found, r: int) -> None:
        vals, rows, cols = found  # rows come sorted
        with locks[block]:
            lead = (state_v[block], state_i[block])
            state_v[block], state_i[block] = _first_k(*_padded(vals, rows, cols, r, n, lead), k)

    factors = l2_row_factors(a, spans[0][1] - spans[0][0]) if normalize else None
    _symmetric_tiles(a, spans, k, factors, exclude_self, a.dtype, lambda b: state_v[b].clamp_min(floor), take)
    return torch.cat(state_v), torch.cat(state_i)


# Cosine self-searches of at least this many float32 rows are screened in bfloat16 where the CPU
# multiplies bfloat16 natively (:func:`_screened_self_topk`). Below it the float32 search is faster:
# per row the screen saves about N·d·(1/R₃₂ − 1/R₁₆) of GEMM time (R: GEMM rates, 80 and 200 GFLOP/s
# per core here) and the rescore costs about 15·d·5 ns (a dozen or two candidates, float64, memory
# bound), even at N ≈ 10,000 whatever d; measured at d = 768: 0.75× the float32 search's time at
# N = 20,000 and 0.55× at 100,000 (2 threads, quiet machine).
_SCREEN_MIN_ROWS = 16384
# Rows of the screen's sample check (:func:`_screen_dtype`).
_SCREEN_SAMPLE = 128


def _screen_cap(k: int) -> int:
    """Screened candidates a row may hold before it is searched again in float64."""
    return 4 * k + 64


@functools.cache
def _native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (``avx512_bf16`` or AMX, read from /proc/cpuinfo):
    a bfloat16 GEMM then runs at about 2.4× float32's rate (390 vs 162 GFLOP/s, 2,048² × 768 on the
    2-core CI machine); emulated, it would be slower than float32."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Unit roundoff of the screen's result: rounding to bfloat16 (8 significant bits) moves a value by
# ≤ u·|value|; a float32 GEMM's own rounding is in its γ_d term (:func:`_screen_margins`).
_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float32: 0.0}


def _screen_margins(
    a: Tensor, factors: tuple[Tensor, Tensor], step: int
) -> tuple[Tensor, dict[torch.dtype, Tensor]]:
    """(inverse norms, margins): ``1 / ‖x_i‖`` (N,) float64 (0 for a zero row) for :func:`_cosines64`,
    and per screen dtype, margins ``2·A_i`` (N,) float64 with ``|s̃_ij − r_ij| ≤ A_i + u·|s̃_ij|`` for
    every j, where s̃ is the screen's score of rows i, j (their float32 unit rows x̂ =
    :func:`l2_normalize`'s, multiplied in that dtype with float32 accumulation) and r their float64
    cosine (:func:`_cosines64`).

    With y = x/‖x‖ (exact), e = ‖x̂ − y‖, x̌ = bf16(x̂), δ = x̂ − x̌ (exact in float32) and ρ = ‖δ‖:
    ``x̂_i·x̂_j − x̌_i·x̌_j = x̌_i·δ_j + δ_i·x̂_j`` bounds the rounded inputs' effect by
    ‖x̌_i‖·max ρ + ρ_i·max‖x̂‖ (Cauchy–Schwarz on the rows' actual rounding errors: about half the
    worst case 2u·‖x̂_i‖·‖x̂_j‖; 0 in float32); summing d products in float32 in any order adds
    ≤ γ_d·‖x̌_i‖·max‖x̌‖ (γ_m = m·2⁻²⁴/(1 − m·2⁻²⁴); Higham, "Accuracy and Stability of Numerical
    Algorithms", §3.1; bfloat16 products are exact in float32); subnormal inputs and products
    flushed to zero add ≤ 3d·2⁻¹²⁶; ``|x̂_i·x̂_j − y_i·y_j| ≤ ‖x̂_i‖·max e + e_i``; and r is within
    γ₆₄,2d+8 of y_i·y_j (the float64 sum's γ_d, and (d + 5)·2⁻⁵³ from the norms, their inverses and
    the scalings; γ₆₄,m = m·2⁻⁵³/(1 − m·2⁻⁵³)). Every float64 statistic here is rounded up past its
    own rounding error (a norm of d terms is within (d + 2)·2⁻⁵³ of its value; e also carries the
    float64 normalisation's ‖y − x/‖x‖‖ ≤ (d + 8)·2⁻⁵³). Rounding a bfloat16 result adds ≤ u·|s̃|
    (u = 2⁻⁸), the per-entry term. The bound holds for any kernel that accumulates in float32
    (oneDNN's and ATen's bfloat16 GEMMs do; tests check it on adversarial rows). For d = 768 the
    bfloat16 margin is about 0.007, the float32 one about 1e-4. Cost: O(N·d) in blocks of ``step``
    rows."""
    n, d = a.shape
    stats = torch.empty(5, n, dtype=torch.float64, device=a.device)

    def chunks(starts: list[int]) -> None:
        for r0 in starts:
            rows = a[r0 : r0 + step].double()
            norm = rows.norm(dim=1)
            exact = rows / torch.where(norm > 0, norm, 1.0)[:, None]  # y (0 for a zero row)
            unit = _unit(a, factors, slice(r0, r0 + step))  # x̂
            rounded = unit.bfloat16().float()  # x̌
            residual = unit - rounded  # δ, exact in float32
            unit64 = unit.double()
            found = (unit64.norm(dim=1), rounded.double().norm(dim=1), residual.double().norm(dim=1))
            stats[:, r0 : r0 + step] = torch.stack([norm, *found, (unit64 - exact).norm(dim=1)])

    on_workers(chunks, list(range(0, n, step)), a.device)
    norm, norm_unit, norm_rounded, rho, err = stats
    inverse = torch.where(norm > 0, 1 / norm, 0.0)
    # the float64 norms above are within (d + 2)·2⁻⁵³ of their value: round them up
    up = 1 + (d + 8) * 2.0**-52
    norm_unit, norm_rounded, rho = (v * up for v in (norm_unit, norm_rounded, rho))
    err = err * up + (d + 8) * 2.0**-53
    g32 = d * 2.0**-24 / (1 - d * 2.0**-24)
    g64 = (2 * d + 8) * 2.0**-53 / (1 - (2 * d + 8) * 2.0**-53)
    common = norm_unit * err.max() + err + g64 + 3 * d * 2.0**-126
    bf16 = norm_rounded * rho.max() + rho * norm_unit.max() + g32 * norm_rounded * norm_rounded.max()
    f32 = g32 * norm_unit * norm_unit.max()
    return inverse, {torch.bfloat16: 2 * (bf16 + common), torch.float32: 2 * (f32 + common)}


def _screen_floor(kth: Tensor, margin: Tensor, u: float) -> Tensor:
    """The least screened score that may belong to a row's top-k by float64 score, float32 (r,), for
    rows whose k-th best screened score is ``kth`` (r,), with margins 2A (:func:`_screen_margins`)
    and the result's roundoff u.

    Each |s̃_j − r_j| ≤ A + u|s̃_j| and v ↦ v ∓ u|v| is increasing, so the k-th best r is ≥ t̃ − u|t̃| − A,
    and any j among the k best by r has s̃_j + u|s̃_j| ≥ t̃ − u|t̃| − 2A = c: s̃_j ≥ c/(1 + u) for c ≥ 0,
    c/(1 − u) below. Computed in float64 and rounded down; never below float32's lowest finite value,
    so masked (−inf) entries stay out. A row with fewer than k candidates yet (t̃ = −inf) gets that
    lowest value: ``t̃ − u|t̃|`` is formed as ``t̃·(1 ∓ u)``, as ``−inf − 0·inf`` would be NaN for the
    float32 screen (u = 0), and a NaN floor keeps nothing."""
    t = kth.double()
    c = torch.where(t >= 0, t * (1 - u), t * (1 + u)) - margin  # t − u|t|
    low = torch.where(c >= 0, c / (1 + u), c / (1 - u))
    # c's float64 roundings (≤ 2⁻⁵²·(|t̃| + 2A) when it cancels to near 0) and then rounding to
    # float32 (≤ 2⁻²⁴|low|, 2⁻¹⁴⁹ subnormal) are subtracted first
    low = low - low.abs() * 2.0**-20 - (t.abs() + margin) * 2.0**-50 - 2.0**-120
    return low.clamp_min(torch.finfo(torch.float32).min).float()


def _unit(a: Tensor, factors: tuple[Tensor, Tensor], rows: Tensor | slice) -> Tensor:
    """Rows ``rows`` of ``a`` normalised as ``(a/s)/n`` with ``factors = (s, n)`` of
    :func:`l2_row_factors`: bitwise those of :func:`l2_normalize` and of the search tiles."""
    return (a[rows] / factors[0][rows]).div_(factors[1][rows])


def _cosines64(a: Tensor, inverse: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """float64 cosines ``(Σ_k x_ik·x_jk) / ‖x_i‖ / ‖x_j‖`` of the float32 rows of the pairs (rows, cols),
    with ``inverse`` (N,) = 1/‖x‖ in float64 (0 for a zero row: cosine 0). The float32 products are
    exact in float64, every pair is reduced alike and scaled by ``inverse_i · inverse_j`` (which
    commutes), so equal rows score equally. Cost: O(pairs·d), in chunks of ≈ 2²⁰ entries (24 MiB)."""
    out = torch.empty(rows.numel(), dtype=torch.float64, device=a.device)
    step = max(1, 2**20 // max(1, a.shape[1]))
    for p0 in range(0, rows.numel(), step):
        r, c = rows[p0 : p0 + step], cols[p0 : p0 + step]
        out[p0 : p0 + step] = a[r].double().mul_(a[c].double()).sum(1).mul_(inverse[r] * inverse[c])
    return out


def _exact_rows64(
    a: Tensor, inverse: Tensor, rows: Tensor, k: int, exclude_self: bool, step: int
) -> tuple[Tensor, Tensor]:
    """Top-k by float64 cosine (:func:`_cosines64`) of the given rows against all rows of ``a``, ties to
    the smaller index: the screen's fallback for rows with too many candidates.

    A float64 GEMM (scaled by ``inverse_i · inverse_j`` as :func:`_cosines64`) finds the candidates;
    it sums the same exact products in another order, which differs per output position, so equal
    rows need not score alike there (exact ties would go astray). Both sums are within γ_d·‖x_i‖·‖x_j‖
    of the exact one, so the GEMM's s is within δ = (2d + 8)·2⁻⁵² of the rescore's r (scalings'
    roundings included). Per column chunk, the k-th best r is ≥ ``lim`` = max(running k-th best r,
    chunk's k-th best s − δ), so every pair with s ≥ lim − δ is rescored by :func:`_cosines64` and
    the k best are taken in the total order of :func:`_first_k`. Cost: O(len(rows)·N·d) in float64,
    plus O(d) per rescored pair (the pairs within 2δ of the k-th best: exact ties and the k best)."""
    n, d = a.shape
    delta = (2 * d + 8) * 2.0**-52
    q = a[rows].double()
    best_v = q.new_full((rows.numel(), k), -math.inf)
    best_i = torch.full_like(best_v, n, dtype=torch.long)
    for c0 in range(0, n, step):
        c1 = min(c0 + step, n)
        s = (q @ a[c0:c1].double().T).mul_(inverse[rows, None] * inverse[c0:c1])
        if exclude_self:
            own = (rows >= c0) & (rows < c1)
            s[own.nonzero().squeeze(1), rows[own] - c0] = -math.inf
        lim = torch.maximum(s.topk(min(k, c1 - c0), dim=1).values[:, -1] - delta, best_v[:, -1])
        hit_r, hit_c = (torch.ge(s, lim[:, None] - delta) & torch.gt(s, -math.inf)).nonzero(as_tuple=True)
        exact = _cosines64(a, inverse, rows[hit_r], hit_c + c0)
        lead = (best_v, best_i)
        best_v, best_i = _first_k(*_padded(exact, hit_r, hit_c + c0, rows.numel(), n, lead), k)
    return best_v, best_i


def _screen_dtype(
    a: Tensor,
    factors: tuple[Tensor, Tensor],
    k: int,
    margins: dict[torch.dtype, Tensor],
    inverse: Tensor,
    exclude_self: bool,
) -> torch.dtype | None:
    """The screen for this data: bfloat16, else float32, when for ``_SCREEN_SAMPLE`` evenly spaced
    nonzero rows the count of float32 scores ≥ their :func:`_screen_floor` exceeds
    :func:`_screen_cap` for ≤ 2 % of them; None when neither holds (most rows near many others:
    the float64 fallback would be slower than the plain float32 search). The float32 screen only
    under ``torch.get_float32_matmul_precision() == "highest"``. Cost: O(sample·N·d),
    one (sample, N) float32 matrix."""
    n = a.shape[0]
    nonzero = (inverse > 0).nonzero().squeeze(1)
    if nonzero.numel() == 0:
        return torch.float32
    pick = torch.linspace(0, nonzero.numel() - 1, min(nonzero.numel(), _SCREEN_SAMPLE), device=a.device)
    rows = nonzero[pick.long().unique()]
    q = _unit(a, factors, rows)
    scores = torch.empty(rows.numel(), n, dtype=a.dtype, device=a.device)
    step = max(1, 2**20 // a.shape[1])  # 4 MiB blocks of unit rows
    for c0 in range(0, n, step):
        torch.mm(q, _unit(a, factors, slice(c0, c0 + step)).T, out=scores[:, c0 : c0 + step])
    if exclude_self:
        scores[torch.arange(rows.numel(), device=a.device), rows] = -math.inf
    kth = scores.topk(k, dim=1).values[:, -1]
    # float32 tiles carry a float32 GEMM's margin only when float32 products are float32: with
    # torch.set_float32_matmul_precision("medium"/"high") a CPU with AMX may run them in bfloat16
    exact32 = torch.get_float32_matmul_precision() == "highest"
    for dtype in (torch.bfloat16, torch.float32) if exact32 else (torch.bfloat16,):
        low = _screen_floor(kth, margins[dtype][rows], _ROUNDOFF[dtype])
        if float((torch.ge(scores, low[:, None]).sum(1) > _screen_cap(k)).double().mean()) <= 0.02:
            return dtype
    return None


def _screened_self_topk(a: Tensor, k: int, tile: int, exclude_self: bool) -> tuple[Tensor, Tensor]:
    """:func:`_self_topk` of float32 cosine rows with the tiles computed in bfloat16: exact top-k by
    the float64 cosine of the float32 rows, ties to the smaller index, at bfloat16 GEMM speed.

    Screen: the symmetric tile loop (:func:`_symmetric_tiles`) runs in bfloat16. Every bfloat16 score
    s̃_ij lies within a bound of the float64 cosine r_ij (:func:`_screen_margins`), so from a row's
    k-th best s̃ follows the least s̃ any of its k best by r can have (:func:`_screen_floor`): each row
    keeps every entry not below that floor of its running k-th best (a running bound is lower, so it
    only lets more through) — a dozen or two per row on real data. Rescore: those candidates get
    their float64 cosine (:func:`_cosines64`: (i, j) and (j, i) score alike) and the k best are
    taken in the total order of :func:`_first_k`, each row block by a worker thread.

    Fallbacks, all exact: a row whose candidates exceed :func:`_screen_cap` (near duplicates) is
    searched again in float64 against all rows (:func:`_exact_rows64`); a zero row (cosine 0 with
    every row) gets the first k other rows; and when a sample predicts many rows over the cap
    (:func:`_screen_dtype`: concentrated data), the tiles are float32 (margin ≈ 1e-4 instead of
    ≈ 0.007) or, failing that too, the float32 search :func:`_self_topk` runs (ranking by float32
    scores).

    The float64 sums (norms, rescore) are reduced in an order that follows the memory layout of
    their operands, so a non-contiguous ``a`` is copied first: the result (ulp-level near ties
    included) does not depend on the layout of x.

    Returns (values (N, k) float32: the float64 cosines rounded, indices (N, k)), best first. Memory:
    the float32 search's plus the candidate tables, ≤ 12 bytes per candidate (O(N·cap) at worst).
    """
    a = a.contiguous()
    n = a.shape[0]
    spans = _spans(n, min(tile, n))
    step = spans[0][1] - spans[0][0]
    factors = l2_row_factors(a, step)
    inverse, margins = _screen_margins(a, factors, max(1, 2**18 // a.shape[1]))  # 2 MiB float64 blocks
    dtype = _screen_dtype(a, factors, k, margins, inverse, exclude_self)
    if dtype is None:
        return _self_topk(a, k, tile, True, exclude_self)
    margin, u = margins[dtype], _ROUNDOFF[dtype]
    floor, cap = torch.finfo(torch.float32).min, _screen_cap(k)
    best = [a.new_full((stop - first, k), -math.inf) for _, stop, first in spans]  # running top-k s̃
    cand_v = [a.new_full((stop - first, k), -math.inf) for _, stop, first in spans]
    cand_i = [torch.full_like(v, n, dtype=torch.int32) for v in cand_v]
    flagged = [torch.zeros(stop - first, dtype=torch.bool, device=a.device) for _, stop, first in spans]
    locks = [threading.Lock() for _ in spans]

    def take(block: int, found: Found, r: int) -> None:
        vals, rows, cols = found  # rows come sorted
        _, stop, first = spans[block]
        with locks[block]:
            lead = (cand_v[block], cand_i[block])
            pv, pi = _padded(vals.float(), rows, cols.int(), r, n, lead)
            top_v, top_p = pv.topk(k, dim=1)
            keep = torch.ge(pv, _screen_floor(top_v[:, -1], margin[first:stop], u)[:, None])
            over = flagged[block] | (keep.sum(1) > cap)
            if over.any():  # such rows keep their k best s̃ (the bound) until the float64 search
                keep[over] = False
                keep[over.nonzero().squeeze(1)[:, None], top_p[over]] = True
                flagged[block] = over
            hit_r, hit_c = keep.nonzero(as_tuple=True)
            kept = (pv[hit_r, hit_c], hit_r, pi[hit_r, hit_c])
            cand_v[block], cand_i[block] = _padded(*kept, r, n, min_width=k)
            best[block] = top_v

    def bound_of(block: int) -> Tensor:
        return best[block].clamp_min(floor)

    def lower_of(block: int) -> Lower:
        _, stop, first = spans[block]
        return lambda kth: _screen_floor(kth, margin[first:stop], u)

    _symmetric_tiles(a, spans, k, factors, exclude_self, dtype, bound_of, take, lower_of)

    zero = inverse == 0
    values = a.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long, device=a.device)

    def finish(blocks: list[int]) -> None:  # rescore and rank each block's candidates
        for block in blocks:
            _, stop, first = spans[block]
            over = flagged[block] & ~zero[first:stop]
            ok = (cand_i[block] < n) & ~(over | zero[first:stop])[:, None]
            hit_r, hit_c = ok.nonzero(as_tuple=True)
            cols = cand_i[block][hit_r, hit_c].long()
            cand_v[block] = cand_i[block] = ok = torch.empty(0)
            scores = _cosines64(a, inverse, hit_r + first, cols)
            top_v, top_i = _first_k(*_padded(scores, hit_r, cols, stop - first, n, min_width=k), k)
            rows = over.nonzero().squeeze(1)
            if rows.numel():
                top_v[rows], top_i[rows] = _exact_rows64(a, inverse, rows + first, k, exclude_self, tile)
            values[first:stop], indices[first:stop] = top_v, top_i

    on_workers(finish, list(range(len(spans))), a.device)
    release_memory()
    zero_rows = zero.nonzero().squeeze(1)
    if zero_rows.numel():  # cosine 0 with every row: the first k others
        others = torch.arange(k + 1, device=a.device).expand(zero_rows.numel(), k + 1)
        keep = others != zero_rows[:, None] if exclude_self else others < k
        keep[:, k] &= ~keep[:, :k].all(1)  # k + 1 columns when self is not among the first k
        indices[zero_rows] = others[keep].view(-1, k)
        values[zero_rows] = 0.0
    return values, indices


def _faiss_search(faiss: Any, a: Tensor, b: Tensor, k: int, metric: str, exclude_self: bool) -> Neighbors:
    """Exact search with a flat faiss index (float32, CPU). Self is dropped by index: k + 1 are
    searched and row i's own index removed (or the last one, when i is not among them)."""
    query = a.detach().to(torch.float32).contiguous().numpy()
    base = b.detach().to(torch.float32).contiguous().numpy()
    index = faiss.IndexFlatL2(base.shape[1]) if metric == "euclidean" else faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    extra = int(exclude_self)
    scores, found = index.search(query, k + extra)
    values, indices = torch.from_numpy(scores), torch.from_numpy(found).long()
    if exclude_self:
        n = indices.shape[0]
        is_self = indices == torch.arange(n)[:, None]
        drop = torch.where(is_self.any(1), is_self.to(torch.uint8).argmax(1), k)
        keep = torch.ones_like(is_self)
        keep[torch.arange(n), drop] = False
        values, indices = values[keep].view(n, k), indices[keep].view(n, k)
    if metric == "euclidean":  # faiss returns squared distances
        values = values.clamp_min(0).sqrt()
    return Neighbors(indices, values)


@torch.no_grad()
@one_device
def knn(
    x: Tensor,
    k: int,
    y: Tensor | None = None,
    metric: str = "cosine",
    exclude_self: bool | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Neighbors:
    """Exact k nearest neighbours of every row of x among the rows of y (chunked top-k).

    ``metric="cosine"`` ranks by ``cos(x_i, y_j)``, ``"dot"`` by ``x_i·y_j`` (both: largest first),
    ``"euclidean"`` by ``‖x_i − y_j‖`` (smallest first). Euclidean candidates are selected with the
    expanded score ``2·x_i·y_j − ‖y_j‖²`` on features centred by y's mean (exact in real arithmetic;
    centring limits cancellation) and the k kept distances are then recomputed exactly as
    ``‖x_i − y_j‖``; the rows are first scaled by a power of two to entries below 1 and the
    distances scaled back (both exact), so squares neither overflow for huge rows nor underflow for
    tiny ones. Ties are broken arbitrarily (deterministically for a given backend and block).

    The search runs over blocks of rows of x against column tiles of y (the blocked search engine
    shared by every neighbour and retrieval measure: GEMM tiles that stay in cache; on the CPU each
    tile yields the few entries not below a running bound of the k-th best, ranked once per block,
    and the blocks are shared among ``torch.get_num_threads()`` worker threads of one torch thread
    each), so at most one (chunk_size, tile) score matrix exists per thread; the top-k is
    exact, so the result does not depend on ``chunk_size`` (up to ties). Runs under
    ``torch.no_grad``: to differentiate through the neighbour similarities, recompute them from the
    returned indices.

    When x is searched against itself (``y`` is None) on the CPU with ``"cosine"`` or ``"dot"``, the
    torch engine forms only the upper triangle of ``x xᵀ`` in square tiles of ≤ ``chunk_size`` rows
    (each pair scored once, serving both rows: half the GEMM work) and normalises rows tile by tile
    (no normalised copy of x); ties at the k-th value then go to the smaller index, whatever the
    tiling or thread count. A cosine self-search of ≥ 16,384 float32 rows on a CPU that multiplies
    bfloat16 natively (``avx512_bf16``, AMX) screens the tiles in bfloat16 (≈ 2.4× float32's GEMM
    rate) with a proven error bound, keeps every candidate the bound cannot rule out, and ranks them
    by their float64 cosine: the neighbours are then exactly the top-k by float64 cosine of the
    float32 rows (values: those cosines rounded), ties to the smaller index; concentrated data is
    screened in float32 instead, with the same guarantee (see ``_screened_self_topk``).

    Backends: ``"torch"`` is the blocked search above. ``"faiss"`` uses an exact flat faiss index
    (``IndexFlatIP`` / ``IndexFlatL2``) in float32 on the CPU, with its own blocking (``chunk_size`` is
    ignored; faiss's euclidean distances come from its expanded float32 kernel).
    ``"auto"`` uses faiss when it is importable, the tensors are on the CPU and the compute dtype
    is float32 — except for the symmetric self-search above, which does half faiss's work — and
    torch otherwise (float64 input always stays exact in torch).

    Args:
        x: (N, d) queries.
        k: neighbours per row, 1 ≤ k ≤ M (M − 1 when self is excluded).
        y: (M, d) rows to search; ``None`` searches x itself.
        metric: ``"cosine"`` | ``"dot"`` | ``"euclidean"``. ``"dot"`` raises ValueError when the largest
            row norms could make a dot product overflow the compute dtype (max‖x_i‖·max‖y_j‖ > max / 2).
        exclude_self: drop column i from row i (row i's own sample). ``None``: True when ``y`` is
            None, else False. With ``y`` given it means "x_i and y_i are the same sample".
        chunk_size: rows of x per block; ``None``: cache-sized tiles on the CPU, about 32 MiB of
            scores (≈ 1,024 rows × 8,192 columns in float32); on accelerators about 96 MiB of
            full-width scores per block.
        backend: ``"auto"`` | ``"torch"`` | ``"faiss"``.

    Returns:
        :class:`Neighbors` ``(indices, values)``: (N, k) int64 indices into y, best first, and their
        similarities (cosine, dot) or distances (euclidean) in the promoted dtype of x and y.

    Cost: O(N·M·d) time (N²·d/2 multiply-adds for the symmetric self-search); on the CPU
    O(threads·chunk_size·min(M, 8,255) + N·k) memory plus O(M·d) for a normalised / centred copy of y
    (none for the symmetric self-search: O(threads·(tile² + tile·d)), tile ≈ 2,048 in float32; the
    bfloat16 screen adds its candidates, ≈ 12 bytes each, a few dozen per row).
    Half-precision input is computed in float32.
    """
    check_features(x, "x")
    searched_self = y is None
    if y is None:
        y = x
    else:
        check_features(y, "y")
        _check_width(x, y, "x", "y")
        check_same_device(("x", x), ("y", y))
    exclude = searched_self if exclude_self is None else bool(exclude_self)
    m = y.shape[0]
    high = m - int(exclude)
    if high < 1:
        name = "x" if searched_self else "y"
        raise ValueError(
            f"{name} must have at least {1 + int(exclude)} row(s) to find a neighbour "
            f"(exclude_self={exclude}), got shape {shape_str(y)}"
        )
    self_note = " with self excluded" if exclude else ""
    check_int(k, "k", 1, high, f" (M = {m} searched rows{self_note}, y of shape {shape_str(y)})")
    check_choice(metric, "metric", _METRICS)
    check_choice(backend, "backend", _BACKENDS)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    dtype = compute_dtype(x, y)
    if metric == "dot":
        _check_dot_range(x, y, dtype, searched_self)
    out = torch.promote_types(x.dtype, y.dtype)
    faiss = _faiss() if backend != "torch" else None
    if backend == "faiss" and (faiss is None or x.device.type != "cpu"):
        why = "faiss is not installed" if faiss is None else f"tensors are on {x.device}"
        raise ValueError(f"backend='faiss' needs faiss-cpu and CPU tensors, but {why}")
    symmetric = searched_self and metric != "euclidean" and x.device.type == "cpu" and backend != "faiss"
    use_faiss = faiss is not None and (
        backend == "faiss" or (x.device.type == "cpu" and dtype == torch.float32 and not symmetric)
    )
    if symmetric:  # half the pairs; rows normalised tile by tile (no normalised copy of x)
        n = x.shape[0]  # chunk_size balanced: as many tiles, of ≤ chunk_size rows, least overlap
        tile = _balanced(n, chunk_size, align=1) if chunk_size is not None else _self_tile(n, dtype)
        screened = metric == "cosine" and dtype == torch.float32 and n >= _SCREEN_MIN_ROWS and _native_bf16()
        if screened:  # bfloat16 tiles, candidates rescored in float64
            values, indices = _screened_self_topk(x.to(dtype), k, tile, exclude)
        else:
            values, indices = _self_topk(x.to(dtype), k, tile, metric == "cosine", exclude)
        return Neighbors(indices, values.to(out))

    a, b = x.to(dtype), y.to(dtype)
    if metric == "cosine":
        a = l2_normalize(a)
        b = a if searched_self else l2_normalize(b)
    unit = 1.0
    if metric == "euclidean":  # rows scaled by a power of two to entries below 1 (exact), then centred
        top = max(float(a.abs().amax()), 0.0 if searched_self else float(b.abs().amax()))
        unit = 2.0 ** -math.frexp(top)[1] if top > 0 else 1.0
        a = a * unit
        b = a if searched_self else b * unit
        center = b.mean(0)
        a.sub_(center)
        if not searched_self:
            b.sub_(center)
    if use_faiss:
        found = _faiss_search(faiss, a, b, k, metric, exclude)
        values = found.values / unit if unit != 1.0 else found.values
        return Neighbors(found.indices.to(x.device), values.to(device=x.device, dtype=out))

    block = chunk_size if chunk_size is not None else _tile_rows(m, dtype, x.device, x.shape[0])
    if metric == "euclidean":
        neg_sq = b.square().sum(1).neg_()
        _, indices = _blocked_topk(a, b, k, block, scale=2.0, col_bias=neg_sq, exclude_self=exclude)
        values = torch.empty(indices.shape, dtype=dtype, device=x.device)
        for start in range(0, indices.shape[0], block):  # exact distances of the kept pairs
            rows, kept = a[start : start + block], indices[start : start + block]
            for j in range(k):  # one (block, d) difference at a time
                values[start : start + block, j] = torch.linalg.vector_norm(rows - b[kept[:, j]], dim=1)
        values, order = values.sort(dim=1, stable=True)
        indices = indices.gather(1, order)
        values.div_(unit)  # exact: a power of two
    else:
        values, indices = _blocked_topk(a, b, k, block, exclude_self=exclude)
    return Neighbors(indices, values.to(out))


# --------------------------------------------------------------------------------------------------
# mutual_knn and cknna


def _paired(x: object, y: object, min_rows: int) -> tuple[Tensor, Tensor]:
    x = check_features(x, "x", min_rows=min_rows)
    y = check_features(y, "y", min_rows=min_rows)
    check_same_rows(x, y, "x", "y")
    check_same_device(("x", x), ("y", y))
    return x, y


def _overlap(a: Tensor, b: Tensor) -> Tensor:
    """(N,) number of common entries of the rows of two (N, k) index tensors (rows hold distinct
    indices), in blocks of rows so the (rows, k, k) comparison stays small."""
    n, k = a.shape
    counts = torch.empty(n, dtype=torch.long, device=a.device)
    step = max(1, _OVERLAP_ELEMENTS // (k * k))
    for start in range(0, n, step):
        stop = start + step
        counts[start:stop] = (a[start:stop, :, None] == b[start:stop, None, :]).sum((1, 2))
    return counts


def _given_neighbors(neighbors: object, n: int, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check precomputed ``(knn(x, k), knn(y, k))`` results: (indices_x, values_x, indices_y, values_y)."""
    if not (isinstance(neighbors, tuple | list) and len(neighbors) == 2):
        raise ValueError(
            f"neighbors must be a pair (knn(x, k), knn(y, k)) of Neighbors, got {type(neighbors).__name__}"
        )
    out = []
    for side, found in zip("xy", neighbors, strict=True):
        if not isinstance(found, Neighbors):
            raise ValueError(f"neighbors of {side} must be a Neighbors from knn, got {type(found).__name__}")
        if tuple(found.indices.shape) != (n, k) or tuple(found.values.shape) != (n, k):
            raise ValueError(
                f"neighbors of {side} must hold ({n}, {k}) indices and values (N rows, k neighbours), "
                f"got {shape_str(found.indices)}"
            )
        out += [found.indices, found.values]
    return out[0], out[1], out[2], out[3]


@one_device
def mutual_knn(
    x: Tensor,
    y: Tensor,
    k: int = 10,
    metric: str = "cosine",
    chunk_size: int | None = None,
    backend: str = "auto",
    *,
    neighbors: tuple[Neighbors, Neighbors] | None = None,
) -> Tensor:
    """Mutual k-nearest-neighbour alignment ``(1/N) Σ_i |N_k^x(i) ∩ N_k^y(i)| / k``.

    From Huh et al. 2024, "The Platonic Representation Hypothesis" (ICML): ``N_k^x(i)`` is the set of
    the k nearest neighbours of sample i among the other samples in x's space, ``N_k^y(i)`` the same
    in y's space; the score is the mean fraction they share. 1 when both spaces order every
    neighbourhood alike, about ``k / (N − 1)`` for independent spaces. As in the authors' code
    (``metrics.py::mutual_knn`` on features L2-normalised by ``measure_alignment.compute_score``),
    neighbours are by cosine similarity (inner products of normalised rows) with self excluded;
    their extra outlier clipping of features (``prepare_features``) is preprocessing and is not done
    here. Ties are broken arbitrarily. Not differentiable (a set count).

    Args:
        x: (N, d_x) features of N samples.
        y: (N, d_y) features of the same N samples (widths may differ).
        k: neighbours, 1 ≤ k ≤ N − 1 (the paper uses 10).
        metric: neighbourhood metric, ``"cosine"`` (the paper's) | ``"dot"`` | ``"euclidean"``.
        chunk_size, backend: passed to :func:`knn`.
        neighbors: ``(knn(x, k, metric=metric), knn(y, k, metric=metric))`` computed already (e.g.
            shared with :func:`cknna`, which searches the same cosine graphs); not searched again.

    Returns:
        Scalar tensor in [0, 1], in the promoted dtype of x and y.

    Cost: two :func:`knn` searches, O(N²·(d_x + d_y)) time, O(chunk_size·N + N·k) memory, plus
    O(N·k²) for the set intersections.
    """
    x, y = _paired(x, y, min_rows=2)
    n = x.shape[0]
    check_int(k, "k", 1, n - 1, f" (N − 1 = {n - 1} for x of shape {shape_str(x)})")
    if neighbors is not None:
        nx, _, ny, _ = _given_neighbors(neighbors, n, k)
    else:
        nx = knn(x, k, metric=metric, chunk_size=chunk_size, backend=backend).indices
        ny = knn(y, k, metric=metric, chunk_size=chunk_size, backend=backend).indices
    score = _overlap(nx, ny).sum(dtype=torch.float64) / (n * k)
    return score.to(torch.promote_types(x.dtype, y.dtype))


def _sparse_hsic(rows: Tensor, cols: Tensor, kv: Tensor, lv: Tensor, n: int, unbiased: bool) -> Tensor:
    """HSIC of two N×N matrices K̃, L̃ that share the sparse support {(rows, cols)} (distinct pairs),
    with values kv and lv there (zero elsewhere); float64.

    Unbiased (Song et al. 2012, eq. 5; K̃, L̃ with zero diagonal):
        ``[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))``.
    Biased (no 1/(n−1)² factor, as platonic-rep's ``hsic_biased``): ``tr(K̃HL̃H)``, H = I − 11ᵀ/n,
        ``= tr(K̃L̃) − (1ᵀL̃K̃1 + 1ᵀK̃L̃1)/n + 1ᵀK̃1·1ᵀL̃1/n²``.
    K̃, L̃ need not be symmetric: ``tr(K̃L̃) = Σ_ij K̃_ij L̃_ji`` pairs each entry with its transpose.
    """
    kv, lv = kv.to(torch.float64), lv.to(torch.float64)
    keys = rows * n + cols
    keys, order = keys.sort()
    kv, lv, rows, cols = kv[order], lv[order], rows[order], cols[order]
    transposed = cols * n + rows
    if keys.numel():
        pos = torch.searchsorted(keys, transposed).clamp_max_(keys.numel() - 1)
        hit = keys[pos] == transposed
        trace = (kv[hit] * lv[pos[hit]]).sum()
    else:
        trace = kv.new_zeros(())
    row_k = kv.new_zeros(n).index_add_(0, rows, kv)
    col_k = kv.new_zeros(n).index_add_(0, cols, kv)
    row_l = lv.new_zeros(n).index_add_(0, rows, lv)
    col_l = lv.new_zeros(n).index_add_(0, cols, lv)
    sum_k, sum_l = kv.sum(), lv.sum()
    if unbiased:
        mass = col_k @ row_l  # 1ᵀ K̃ L̃ 1
        return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * mass / (n - 2)) / (n * (n - 3))
    return trace - (col_l @ row_k + col_k @ row_l) / n + sum_k * sum_l / (n * n)


@one_device
def cknna(
    x: Tensor,
    y: Tensor,
    k: int = 10,
    unbiased: bool = True,
    chunk_size: int | None = None,
    backend: str = "auto",
    *,
    neighbors: tuple[Neighbors, Neighbors] | None = None,
) -> Tensor:
    """CKNNA: CKA restricted to mutual nearest-neighbour pairs (Huh et al. 2024, "The Platonic
    Representation Hypothesis", appendix; platonic-rep ``metrics.py::AlignmentMetrics.cknna``).

    With row-normalised features, ``K_ij = cos(x_i, x_j)`` and ``L_ij = cos(y_i, y_j)``. Row i's
    neighbour set ``N^x(i)`` holds the k largest ``K_ij`` (self excluded when ``unbiased``; included,
    as the diagonal of K, when not — the authors' convention), likewise ``N^y(i)`` from L. With the
    mask ``α_ij = [j ∈ N^x(i)]·[j ∈ N^y(i)]`` (not symmetric in i, j)::

        CKNNA = HSIC(α∘K, α∘L) / sqrt(HSIC(α^x∘K, α^x∘K) · HSIC(α^y∘L, α^y∘L)),

    where ``α^x_ij = [j ∈ N^x(i)]``, ``α^y_ij = [j ∈ N^y(i)]`` (the masks of K with itself and L with
    itself), and HSIC is the unbiased estimator of Song et al. 2012 (``unbiased=True``) or the biased
    ``tr(K̃HL̃H)``, both applied to the masked, generally asymmetric, matrices exactly as written
    (so ``tr(K̃L̃) = Σ_ij K̃_ij L̃_ji``). With k = N − 1 (unbiased) the masks are full and this is
    unbiased linear CKA on normalised features.

    Differences from the authors' code: they divide by ``sqrt(·) + 1e-6`` (we do not, so small
    HSIC values are not biased towards 0) and reject k < 2 (k = 1 is allowed here). When the
    denominator product is ≤ 0 (e.g. a constant side, or a negative unbiased estimate on tiny
    inputs) the result is 0. Neighbour ties are broken arbitrarily. Not differentiable.

    Args:
        x: (N, d_x) features of N samples, N ≥ 4 when ``unbiased`` (N ≥ 2 otherwise).
        y: (N, d_y) features of the same samples.
        k: neighbours, 1 ≤ k ≤ N − 1 (N when not ``unbiased``); the paper uses 10.
        unbiased: unbiased HSIC with self excluded from the neighbours (the authors' default), or
            the biased HSIC with self included.
        chunk_size, backend: passed to :func:`knn`.
        neighbors: ``(knn(x, k, exclude_self=unbiased), knn(y, k, exclude_self=unbiased))`` (cosine)
            computed already, e.g. shared with :func:`mutual_knn`; not searched again.

    Returns:
        Scalar tensor (at most 1 in practice; 1 for y = x), in the promoted dtype of x and y.

    Cost: two :func:`knn` searches, O(N²·(d_x + d_y)) time and O(chunk_size·N) memory; then the three
    HSIC values from the N·k mask entries alone, O(N·k·log(N·k)) time and O(N·k + N) memory — no
    N×N matrix.
    """
    if not isinstance(unbiased, bool):
        raise ValueError(f"unbiased must be a bool, got {unbiased!r}")
    x, y = _paired(x, y, min_rows=4 if unbiased else 2)
    n = x.shape[0]
    high = n - 1 if unbiased else n
    check_int(k, "k", 1, high, f" (N{' − 1' if unbiased else ''} = {high} for x of shape {shape_str(x)})")
    opts: dict[str, Any] = {"metric": "cosine", "exclude_self": unbiased, "chunk_size": chunk_size}
    if neighbors is not None:
        ix, vx, iy, vy = _given_neighbors(neighbors, n, k)
    else:
        ix, vx = knn(x, k, backend=backend, **opts)
        iy, vy = knn(y, k, backend=backend, **opts)
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    cols_x, cols_y = ix.reshape(-1), iy.reshape(-1)
    vx, vy = vx.reshape(-1).to(torch.float64), vy.reshape(-1).to(torch.float64)

    # Entries in both neighbour sets: look each (i, j) of x's set up among y's sorted keys.
    keys_y, order_y = (rows * n + cols_y).sort()
    keys_x = rows * n + cols_x
    pos = torch.searchsorted(keys_y, keys_x).clamp_max_(keys_y.numel() - 1)
    both = keys_y[pos] == keys_x
    hsic_kl = _sparse_hsic(rows[both], cols_x[both], vx[both], vy[order_y[pos[both]]], n, unbiased)
    hsic_kk = _sparse_hsic(rows, cols_x, vx, vx, n, unbiased)
    hsic_ll = _sparse_hsic(rows, cols_y, vy, vy, n, unbiased)
    denominator = hsic_kk * hsic_ll
    positive = float(denominator) > 0
    score = hsic_kl / denominator.sqrt() if positive else denominator.new_zeros(())
    return score.to(torch.promote_types(x.dtype, y.dtype))


# --------------------------------------------------------------------------------------------------
# CSLS


def _csls_check(x: Tensor, y: Tensor, k: int) -> None:
    check_features(x, "x")
    check_features(y, "y")
    _check_width(x, y, "x", "y")
    check_same_device(("x", x), ("y", y))
    n, m = x.shape[0], y.shape[0]
    where = f" (min(N, M) = {min(n, m)} for x of shape {shape_str(x)} and y of shape {shape_str(y)})"
    check_int(k, "k", 1, min(n, m), where)


def _csls_radii(
    x: Tensor, y: Tensor, k: int, chunk_size: int | None, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised x, y in the compute dtype; r_y(x_i) (N,) and r_x(y_j) (M,)."""
    dtype = compute_dtype(x, y)
    xh = l2_normalize(x.to(dtype))
    yh = l2_normalize(y.to(dtype))
    opts: dict[str, Any] = {"metric": "dot", "exclude_self": False, "chunk_size": chunk_size}
    r_src = knn(xh, k, y=yh, backend=backend, **opts).values.mean(1)
    r_tgt = knn(yh, k, y=xh, backend=backend, **opts).values.mean(1)
    return xh, yh, r_src, r_tgt


@torch.no_grad()
@one_device
def csls(x: Tensor, y: Tensor, k: int = 10, chunk_size: int | None = None, backend: str = "auto") -> Tensor:
    """Cross-domain similarity local scaling matrix ``CSLS(x_i, y_j) = 2cos(x_i, y_j) − r_y(x_i) − r_x(y_j)``.

    From Conneau, Lample, Ranzato, Denoyer & Jégou 2018, "Word Translation Without Parallel Data"
    (ICLR; the MUSE code): ``r_y(x_i) = (1/k) Σ_{y_j ∈ N_k^y(x_i)} cos(x_i, y_j)`` is the mean cosine
    of x_i to its k nearest rows of y, and ``r_x(y_j)`` the mean cosine of y_j to its k nearest rows
    of x. Subtracting them penalises "hubs" (points near everything), which plain nearest-neighbour
    retrieval over-selects. MUSE uses k = 10.

    This returns the full (N, M) matrix, for moderate sizes; for retrieval at scale use
    :func:`csls_retrieve`, which keeps only the top candidates. Not differentiable (a retrieval
    criterion).

    Args:
        x: (N, d) source rows (e.g. mapped source-language word vectors).
        y: (M, d) target rows.
        k: neighbourhood size, 1 ≤ k ≤ min(N, M).
        chunk_size, backend: passed to :func:`knn` for the two neighbourhood radii.

    Returns:
        (N, M) tensor in the promoted dtype of x and y, values in [−4, 4].

    Cost: O(N·M·d) time; O(N·M) memory for the result (the radii need O(chunk_size·max(N, M))).
    """
    _csls_check(x, y, k)
    xh, yh, r_src, r_tgt = _csls_radii(x, y, k, chunk_size, backend)
    return (2 * (xh @ yh.T) - r_src[:, None] - r_tgt[None, :]).to(torch.promote_types(x.dtype, y.dtype))


@torch.no_grad()
@one_device
def csls_retrieve(
    x: Tensor,
    y: Tensor,
    k: int = 10,
    topk: int = 1,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Neighbors:
    """For every row of x, the ``topk`` rows of y with the highest CSLS (see :func:`csls`), chunked.

    Conneau et al. 2018, "Word Translation Without Parallel Data": ``CSLS(x_i, y_j) = 2cos(x_i, y_j)
    − r_y(x_i) − r_x(y_j)``. ``r_y(x_i)`` is constant along a row, so the ranking is that of
    ``2cos(x_i, y_j) − r_x(y_j)``; the returned values are the full CSLS scores. The scores are
    formed in blocks of rows of x against all of y; the (N, M) matrix never exists.

    Args:
        x: (N, d) queries.
        y: (M, d) candidates.
        k: neighbourhood size of the radii r, 1 ≤ k ≤ min(N, M).
        topk: candidates returned per query, 1 ≤ topk ≤ M.
        chunk_size: rows of x per block (also used for the radii); ``None``: as in :func:`knn`.
        backend: passed to :func:`knn` for the radii.

    Returns:
        :class:`Neighbors` ``(indices (N, topk), values (N, topk))``, best first; values in the
        promoted dtype of x and y.

    Cost: O(N·M·d) time (three passes over the N×M pairs: both radii and the retrieval);
    O(chunk_size·max(N, M) + N·topk) memory.
    """
    _csls_check(x, y, k)
    m = y.shape[0]
    check_int(topk, "topk", 1, m, f" (M = {m} rows of y of shape {shape_str(y)})")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    xh, yh, r_src, r_tgt = _csls_radii(x, y, k, chunk_size, backend)
    block = chunk_size if chunk_size is not None else _tile_rows(m, xh.dtype, x.device, x.shape[0])
    values, indices = _blocked_topk(xh, yh, topk, block, scale=2.0, col_bias=-r_tgt)
    return Neighbors(indices, (values - r_src[:, None]).to(torch.promote_types(x.dtype, y.dtype)))
