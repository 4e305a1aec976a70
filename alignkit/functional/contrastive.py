"""Contrastive objectives: InfoNCE, CLIP (softmax) / SigLIP (sigmoid) and SupCon.

    import alignkit.functional as AF
    loss = AF.info_nce(query, key, temperature=0.07)                 # in-batch negatives
    loss = AF.clip_loss(img, txt, logit_scale=model.logit_scale.exp())  # symmetric CLIP
    loss = AF.clip_loss(img, txt, logit_scale=10.0, logit_bias=-10.0)   # SigLIP
    loss = AF.supcon_loss(torch.stack([view1, view2], 1), labels)     # SupCon, L_out
    loss = AF.nt_xent_loss(view1, view2, temperature=0.5)              # SimCLR, all 2N views

All three are cross-entropies (or logistic losses) over an ``N × M`` matrix of logits. Below a size
threshold that matrix is built once and handed to ``F.cross_entropy``, the fastest form for small
inputs. Above it, or whenever ``chunk_size`` is given, InfoNCE and CLIP run a **tiled** kernel, a custom
``torch.autograd.Function`` that loops over blocks of ``chunk_size`` key rows with an online
log-sum-exp (as FlashAttention does for attention): it never holds more than ``N × chunk_size`` logits,
saves only the inputs and one log-sum-exp per row (and per column for the symmetric loss), and
recomputes each block's logits in the backward. Memory is ``O(N·chunk_size + (N+M)·d)`` instead of
``O(N·M)``; time is one extra ``N × M × d`` product (four instead of three). Both directions of the
symmetric loss come from the same block products, so the symmetric loss costs one pass, not two.

The general form the kernel computes is a cross-entropy of query ``i`` over all key rows with the
positive at key ``i + target_offset``: the in-batch diagonal is ``target_offset=0``; in distributed
*local loss* (open_clip) each rank scores its ``n`` local queries against the keys gathered from every
rank, positives at ``rank·n + i``; explicit negatives are extra key rows that are never positive.

References: van den Oord et al. 2018 (CPC, InfoNCE); Chen et al. 2020 (SimCLR, NT-Xent);
Radford et al. 2021 (CLIP); Zhai et al. 2023 (SigLIP); Khosla et al. 2020 (Supervised Contrastive
Learning); Ilharco et al., open_clip (local loss, learnable logit scale); Dao et al. 2022
(FlashAttention, online softmax).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from alignkit.functional._checks import (
    check_features,
    check_finite,
    check_positive,
    check_reduction,
    check_same_device,
    compute_dtype,
    l2_normalize,
    one_device,
    reduce,
    shape_str,
)
from alignkit.functional._threads import on_workers

__all__ = ["clip_loss", "info_nce", "nt_xent_loss", "supcon_loss"]

# The default (``chunk_size=None``) path builds the full logit matrix when it takes at most
# ``_PLAIN_MAX_BYTES`` and tiles above, with blocks of about ``_TILE_BYTES`` of logits.
# CPU numbers are measured (bench/_scratch_contrastive.py, float32, d = 256 and 512, 1-2 threads): the
# plain form wins up to 1024 × 1024 logits (Python loop overhead), the tiled form is 10-45 % faster from
# 2048 × 2048 on (large fresh N × N buffers cost page faults on CPU, 16 MiB blocks stay in reused
# memory; four matrix products instead of three cost less than that), so CPU tiles from 8 MiB of logits
# with 16 MiB blocks. Accelerators allocate from a cache and run the plain form's few large kernels
# best; their 256 MiB / 64 MiB are not measured here.
_PLAIN_MAX_BYTES = {"cpu": 8 * 2**20}
_PLAIN_MAX_BYTES_ACCEL = 256 * 2**20
_TILE_BYTES = {"cpu": 16 * 2**20}
_TILE_BYTES_ACCEL = 64 * 2**20
_MIN_BLOCK = 128
# SupCon: the plain autograd form up to the same logit sizes as the softmax CE; above, a row-blocked
# custom kernel (_SupConTiled, closed-form backward that recomputes each block's logits once) with
# blocks of about _SUPCON_TILE_BYTES of logits.
_SUPCON_TILE_BYTES = 16 * 2**20


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _check_pair(x: Tensor, y: Tensor, name_x: str, name_y: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{name_x} and {name_y} must have the same feature size, got {shape_str(x)} and {shape_str(y)}"
        )


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")


def _check_offset(offset: int, n: int, m: int, key_name: str) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"target_offset must be an int >= 0, got {offset!r}")
    if offset + n > m:
        raise ValueError(
            f"{key_name} must have at least target_offset + N = {offset} + {n} = {offset + n} rows "
            f"(the positive of query i is {key_name} row i + target_offset), got {m} rows"
        )
    return offset


def _as_scalar(value: float | Tensor, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A float or one-element tensor → 0-d tensor of ``dtype`` (keeps the autograd graph)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a float or a one-element tensor, got shape {shape_str(value)}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        check_finite(value, name)
        return value.reshape(()).to(device=device, dtype=dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a float or a one-element tensor, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return torch.tensor(float(value), dtype=dtype, device=device)


def _use_plain(n: int, m: int, x: Tensor, chunk_size: int | None) -> bool:
    """Whether the default path builds the whole (n × m) logits (always False when chunk_size is set)."""
    limit = _PLAIN_MAX_BYTES.get(x.device.type, _PLAIN_MAX_BYTES_ACCEL)
    return chunk_size is None and n * m * x.element_size() <= limit


def _block_size(n: int, m: int, x: Tensor, chunk_size: int | None) -> int:
    """Keys per block: ``chunk_size``, or about the device's tile bytes over ``n`` rows."""
    if chunk_size is not None:
        return min(chunk_size, m)
    tile = _TILE_BYTES.get(x.device.type, _TILE_BYTES_ACCEL)
    return max(1, min(m, max(_MIN_BLOCK, tile // (n * x.element_size()))))


def _no_autocast(x: Tensor) -> torch.autocast:
    """Compute in the dtype we chose (float32/64) even inside a caller's autocast region."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _out_dtype(*tensors: Tensor | None) -> torch.dtype:
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    assert dtype is not None
    return dtype


# ----------------------------------------------------------------------------------------------
# tiled softmax cross-entropy
# ----------------------------------------------------------------------------------------------
class _TiledSoftmaxCE(torch.autograd.Function):
    """Per-query cross-entropy of ``L = scale · Q Kᵀ`` with positives at ``(i, i + offset)``.

    forward(q (n,d), k (m,d), scale 0-d, offset, block, symmetric) → (n,) losses:
      ``row_i = lse_j L_ij − L_{i,i+offset}``; with ``symmetric`` the key→query term of key column
      ``c = i + offset`` over the ``n`` queries, ``col_i = lse_{i'} L_{i',c} − L_{i,c}``, is averaged in:
      ``(row_i + col_i) / 2``. Columns outside ``[offset, offset + n)`` only enter the row terms.

    Saves q, k, scale and the (n,) log-sum-exps; holds one ``n × block`` block of logits (plus one
    temporary of the same size) at a time, forward and backward.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, scale: Tensor, offset: int, block: int, symmetric: bool) -> Tensor:
        n, m = q.shape[0], k.shape[0]
        qs = q * scale
        pos = (qs * k[offset : offset + n]).sum(1)
        lse_r = q.new_full((n,), -math.inf)
        lse_c = q.new_empty(n) if symmetric else q.new_empty(0)
        for j0 in range(0, m, block):
            j1 = min(j0 + block, m)
            logits = qs @ k[j0:j1].T  # (n, b)
            if symmetric:
                c0, c1 = max(j0, offset), min(j1, offset + n)
                if c0 < c1:
                    lse_c[c0 - offset : c1 - offset] = torch.logsumexp(logits[:, c0 - j0 : c1 - j0], 0)
            # row log-sum-exp of this block, in place, merged into the running one
            mx = logits.amax(1, keepdim=True)
            blk = logits.sub_(mx).exp_().sum(1).log_().add_(mx.squeeze(1))
            lse_r = torch.logaddexp(lse_r, blk)
        out = lse_r - pos
        if symmetric:
            out = 0.5 * (out + (lse_c - pos))
        ctx.save_for_backward(q, k, scale, lse_r, lse_c)
        ctx.offset, ctx.block, ctx.symmetric = offset, block, symmetric
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        with _no_autocast(grad):
            return _TiledSoftmaxCE._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, scale, lse_r, lse_c = ctx.saved_tensors
        offset, block, symmetric = ctx.offset, ctx.block, ctx.symmetric
        n, m = q.shape[0], k.shape[0]
        need_q, need_k, need_s = ctx.needs_input_grad[:3]
        grad = grad.to(q.dtype)
        g_r = grad * 0.5 if symmetric else grad
        g_c = g_r if symmetric else None
        g_diag = g_r + g_c if symmetric else g_r  # coefficient of the one-hot (positive) entries
        qs = q * scale
        # dq_acc = Σ_j G_ij k_j (dq = scale · dq_acc; dscale = Σ_i q_i · dq_acc_i)
        dq_acc = torch.zeros(q.shape, dtype=q.dtype, device=q.device) if (need_q or need_s) else None
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if need_k else None
        for j0 in range(0, m, block):
            j1 = min(j0 + block, m)
            kb = k[j0:j1]
            G = qs @ kb.T  # logits, turned in place into dloss/dlogits
            c0, c1 = max(j0, offset), min(j1, offset + n)
            col = None
            if symmetric and c0 < c1:
                col = (G[:, c0 - j0 : c1 - j0] - lse_c[c0 - offset : c1 - offset]).exp_()
                col.mul_(g_c[c0 - offset : c1 - offset])
            G.sub_(lse_r[:, None]).exp_().mul_(g_r[:, None])
            if c0 < c1:
                if col is not None:
                    G[:, c0 - j0 : c1 - j0] += col
                rows = torch.arange(c0 - offset, c1 - offset, device=q.device)
                G[rows, rows + (offset - j0)] -= g_diag[rows]
            if dq_acc is not None:
                dq_acc.addmm_(G, kb)
            if dk is not None:
                torch.mm(G.T, qs, out=dk[j0:j1])
        dq = dq_acc * scale if need_q else None
        ds = (dq_acc * q).sum() if need_s else None  # Σ_ij G_ij (q_i · k_j)
        return dq, dk, ds, None, None, None


def _softmax_ce(
    q: Tensor,
    k: Tensor,
    scale: float | Tensor,
    offset: int = 0,
    symmetric: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-query (n,) cross-entropy of ``scale · q kᵀ`` with positives at ``(i, i + offset)``.

    ``q`` and ``k`` are already in the compute dtype (and normalised if wanted). Plain or tiled by
    ``chunk_size`` (see the module docstring). With ``symmetric`` returns ``(row_i + col_i) / 2``.
    """
    with _no_autocast(q):
        return _softmax_ce_impl(q, k, scale, offset, symmetric, chunk_size)


def _softmax_ce_impl(
    q: Tensor, k: Tensor, scale: float | Tensor, offset: int, symmetric: bool, chunk_size: int | None
) -> Tensor:
    n, m = q.shape[0], k.shape[0]
    if _use_plain(n, m, q, chunk_size):
        logits = (q * scale) @ k.T
        target = torch.arange(offset, offset + n, device=q.device)
        row = F.cross_entropy(logits, target, reduction="none")
        if not symmetric:
            return row
        col = F.cross_entropy(logits[:, offset : offset + n].T, target - offset, reduction="none")
        return 0.5 * (row + col)
    if not isinstance(scale, Tensor):
        scale = torch.tensor(float(scale), dtype=q.dtype, device=q.device)
    block = _block_size(n, m, q, chunk_size)
    return _TiledSoftmaxCE.apply(q, k, scale, offset, block, symmetric)


# ----------------------------------------------------------------------------------------------
# tiled pairwise sigmoid (SigLIP)
# ----------------------------------------------------------------------------------------------
class _TiledSigmoid(torch.autograd.Function):
    """Per-query SigLIP terms ``row_i = Σ_j −log σ(z_ij (scale · q_i·k_j + bias))``, z = +1 at
    ``j = i + offset`` and −1 elsewhere. Saves q, k, scale, bias; recomputes blocks in backward.

    Written as ``softplus(−z·L)`` with the sign of the positive entries flipped in place, so no
    ``softplus(L) − L`` cancellation occurs.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, scale: Tensor, bias: Tensor, offset: int, block: int) -> Tensor:
        n, m = q.shape[0], k.shape[0]
        qs = q * scale
        out = q.new_zeros(n)
        for j0 in range(0, m, block):
            j1 = min(j0 + block, m)
            logits = torch.addmm(bias, qs, k[j0:j1].T)  # L, turned into −z·L
            c0, c1 = max(j0, offset), min(j1, offset + n)
            if c0 < c1:
                rows = torch.arange(c0 - offset, c1 - offset, device=q.device)
                logits[rows, rows + (offset - j0)] *= -1
            out += F.softplus(logits).sum(1)
        ctx.save_for_backward(q, k, scale, bias)
        ctx.offset, ctx.block = offset, block
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        with _no_autocast(grad):
            return _TiledSigmoid._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, scale, bias = ctx.saved_tensors
        offset, block = ctx.offset, ctx.block
        n, m = q.shape[0], k.shape[0]
        need_q, need_k, need_s, need_b = ctx.needs_input_grad[:4]
        grad = grad.to(q.dtype)
        qs = q * scale
        dq_acc = torch.zeros(q.shape, dtype=q.dtype, device=q.device) if (need_q or need_s) else None
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if need_k else None
        db = q.new_zeros(()) if need_b else None
        for j0 in range(0, m, block):
            j1 = min(j0 + block, m)
            kb = k[j0:j1]
            G = torch.addmm(bias, qs, kb.T)  # L, turned into −z·L
            c0, c1 = max(j0, offset), min(j1, offset + n)
            rows = torch.arange(c0 - offset, c1 - offset, device=q.device) if c0 < c1 else None
            if rows is not None:
                G[rows, rows + (offset - j0)] *= -1
            # d softplus(−zL)/dL = −z σ(−zL)
            G.sigmoid_().mul_(grad[:, None])
            if rows is not None:
                G[rows, rows + (offset - j0)] *= -1
            if db is not None:
                db += G.sum()
            if dq_acc is not None:
                dq_acc.addmm_(G, kb)
            if dk is not None:
                torch.mm(G.T, qs, out=dk[j0:j1])
        dq = dq_acc * scale if need_q else None
        ds = (dq_acc * q).sum() if need_s else None
        return dq, dk, ds, db, None, None


def _sigmoid_rows(
    q: Tensor, k: Tensor, scale: Tensor, bias: Tensor, offset: int = 0, chunk_size: int | None = None
) -> Tensor:
    """Per-query (n,) SigLIP sums ``Σ_j −log σ(z_ij L_ij)``; plain or tiled by ``chunk_size``."""
    with _no_autocast(q):
        return _sigmoid_rows_impl(q, k, scale, bias, offset, chunk_size)


def _sigmoid_rows_impl(
    q: Tensor, k: Tensor, scale: Tensor, bias: Tensor, offset: int, chunk_size: int | None
) -> Tensor:
    n, m = q.shape[0], k.shape[0]
    if _use_plain(n, m, q, chunk_size):
        logits = torch.addmm(bias, q * scale, k.T)
        rows = torch.arange(n, device=q.device)
        sign = torch.full_like(logits, -1.0)
        sign[rows, rows + offset] = 1.0
        return -F.logsigmoid(sign * logits).sum(1)
    block = _block_size(n, m, q, chunk_size)
    return _TiledSigmoid.apply(q, k, scale, bias, offset, block)


# ----------------------------------------------------------------------------------------------
# public: InfoNCE and CLIP / SigLIP
# ----------------------------------------------------------------------------------------------
@one_device
def info_nce(
    query: Tensor,
    key: Tensor,
    temperature: float = 0.07,
    negatives: Tensor | None = None,
    symmetric: bool = False,
    normalize: bool = True,
    chunk_size: int | None = None,
    reduction: str = "mean",
    *,
    target_offset: int = 0,
) -> Tensor:
    """InfoNCE with in-batch (and optional explicit) negatives (van den Oord et al. 2018; the in-batch
    form of Chen et al. 2020).

    Query ``i`` is contrasted with the keys only (no query–query negatives), as in CLIP and
    pytorch-metric-learning's ``SelfSupervisedLoss(NTXentLoss(τ), symmetric=False)``. SimCLR's NT-Xent
    over the 2N views, with same-view negatives too, is :func:`nt_xent_loss` (``losses.build("ntxent")``).

    With ``s_ij = cos(q_i, k_j) / τ`` (a dot product if ``normalize=False``) and ``p = i + target_offset``::

        ℓ_i = −log( exp(s_ip) / (Σ_j exp(s_ij) + Σ_r exp(cos(q_i, n_r)/τ)) )

    Args:
        query: (N, d) queries.
        key: (M, d) keys, M ≥ N + target_offset; the positive of query ``i`` is ``key[i + target_offset]``,
            every other key row is a negative for it (in-batch negatives).
        temperature: τ > 0.
        negatives: optional (R, d) extra negatives shared by every query (appended as extra key
            columns). They enter the query→key direction only: in the symmetric key→query direction a
            key is contrasted with the N queries, and the extra negatives are keys, not queries.
        symmetric: average the query→key loss and the key→query loss (CLIP form). The key→query term
            of query ``i`` is the cross-entropy of key column ``i + target_offset`` over the N queries;
            key rows outside ``[target_offset, target_offset + N)`` take part only as negatives of the
            query→key direction.
        normalize: L2-normalise query, key and negatives first (cosine similarity).
        chunk_size: ``None`` builds the N × (M+R) logits when they are small (8 MiB on CPU, where the
            tiled kernel is the faster one above that; 256 MiB on accelerators) and tiles above;
            an int forces the tiled kernel with blocks of that many keys (memory ``O(N·chunk_size)``).
        reduction: "mean" | "sum" | "none" ((N,) per query; symmetric: ``(row_i + col_i) / 2``).
        target_offset: offset of the positives (distributed local loss: ``rank · N`` against keys
            gathered from every rank).

    Returns:
        Scalar (or (N,)) in the dtype of the inputs.

    Time ``O(N·(M+R)·d)``; memory ``O(N·(M+R))`` plain, ``O(N·chunk_size + (N+M+R)·d)`` tiled.

    Example:
        >>> q, k = torch.randn(8, 16), torch.randn(8, 16)
        >>> info_nce(q, k, temperature=0.1, symmetric=True).shape
        torch.Size([])
    """
    check_features(query, "query")
    check_features(key, "key")
    _check_pair(query, key, "query", "key")
    if negatives is not None:
        check_features(negatives, "negatives")
        _check_pair(query, negatives, "query", "negatives")
        check_same_device(("query", query), ("key", key), ("negatives", negatives))
    else:
        check_same_device(("query", query), ("key", key))
    check_positive(float(temperature), "temperature")
    check_reduction(reduction)
    _check_chunk(chunk_size)
    n = query.shape[0]
    offset = _check_offset(target_offset, n, key.shape[0], "key")

    out_dtype = _out_dtype(query, key, negatives)
    cdtype = compute_dtype(query, key, *(() if negatives is None else (negatives,)))
    q, k = query.to(cdtype), key.to(cdtype)
    neg = negatives.to(cdtype) if negatives is not None else None
    if normalize:
        q, k = l2_normalize(q, dim=1), l2_normalize(k, dim=1)
        neg = l2_normalize(neg, dim=1) if neg is not None else None
    if neg is not None:
        k = torch.cat([k, neg], 0)
    per_query = _softmax_ce(q, k, 1.0 / float(temperature), offset, symmetric, chunk_size)
    return reduce(per_query, reduction).to(out_dtype)


@one_device
def clip_loss(
    a: Tensor,
    b: Tensor,
    logit_scale: float | Tensor,
    logit_bias: float | Tensor | None = None,
    chunk_size: int | None = None,
    *,
    target_offset: int = 0,
) -> Tensor:
    """CLIP's symmetric contrastive loss (Radford et al. 2021), or SigLIP's sigmoid loss (Zhai et al.
    2023) when ``logit_bias`` is given.

    ``a`` and ``b`` must already be L2-normalised; they are **not** renormalised here (the model or
    :class:`alignkit.losses.CLIPLoss` does it), so the logits are ``logit_scale · a bᵀ`` exactly as in
    open_clip. ``logit_scale`` is the multiplier itself (already exponentiated), a float or a 0-d
    tensor; when it requires grad its gradient is returned (learnable temperature).

    * ``logit_bias=None``: softmax cross-entropy in both directions, averaged::

          L = ½ [ CE(scale · a bᵀ, diag) + CE(scale · b aᵀ, diag) ]

    * ``logit_bias`` given (float or 0-d tensor): the pairwise sigmoid loss of SigLIP. A bias is a
      no-op under softmax (it shifts every logit of a row alike), so its presence selects this form::

          L = −(1/N) Σ_ij log σ( z_ij (scale · a_i·b_j + bias) ),  z_ij = +1 if j = i + offset else −1

    Args:
        a: (N, d) normalised embeddings (e.g. images).
        b: (M, d) normalised embeddings, M ≥ N + target_offset; the partner of ``a[i]`` is
            ``b[i + target_offset]``.
        logit_scale: the logit multiplier (1/temperature).
        logit_bias: SigLIP bias; ``None`` selects the softmax loss.
        chunk_size: as in :func:`info_nce` (``None``: plain for small N × M logits, tiled above).
        target_offset: distributed local loss: ``a`` holds this rank's N rows, ``b`` the rows gathered
            from every rank, positives at ``rank · N + i``. The sigmoid loss then covers every pair
            (i local, j global) once, so the mean over ranks is the global loss. For the softmax loss
            the b→a direction here uses only the N rows of ``a`` as candidates; the global local-loss
            value needs local b against gathered a as well (what :class:`alignkit.losses.CLIPLoss` does).

    Returns:
        Scalar loss in the dtype of ``a``/``b``.

    Time ``O(N·M·d)``; memory ``O(N·M)`` plain, ``O(N·chunk_size + (N+M)·d)`` tiled.
    """
    check_features(a, "a")
    check_features(b, "b")
    _check_pair(a, b, "a", "b")
    check_same_device(("a", a), ("b", b))
    _check_chunk(chunk_size)
    offset = _check_offset(target_offset, a.shape[0], b.shape[0], "b")
    return _clip_loss(a, b, logit_scale, logit_bias, chunk_size, offset)


def _clip_loss(
    a: Tensor,
    b: Tensor,
    logit_scale: float | Tensor,
    logit_bias: float | Tensor | None,
    chunk_size: int | None,
    offset: int,
) -> Tensor:
    """:func:`clip_loss` after its input checks (for callers that validated ``a`` and ``b`` already,
    e.g. :class:`alignkit.losses.CLIPLoss`, so the finiteness scans are not repeated)."""
    out_dtype = _out_dtype(a, b)
    cdtype = compute_dtype(a, b)
    q, k = a.to(cdtype), b.to(cdtype)
    scale = _as_scalar(logit_scale, "logit_scale", cdtype, a.device)
    if logit_bias is None:
        per_query = _softmax_ce(q, k, scale, offset, True, chunk_size)
    else:
        bias = _as_scalar(logit_bias, "logit_bias", cdtype, a.device)
        per_query = _sigmoid_rows(q, k, scale, bias, offset, chunk_size)
    return per_query.mean().to(out_dtype)


# ----------------------------------------------------------------------------------------------
# SupCon
# ----------------------------------------------------------------------------------------------
def _supcon_valid(labels: Tensor) -> Tensor:
    """(M,) bool: anchor has at least one positive (another row with its label)."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def _supcon_block(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    self_index: Tensor,
    inv_tau: float,
    variant: str,
) -> Tensor:
    """(r,) SupCon loss of ``r`` anchors against every contrast row; 0 for anchors without positives.

    ``self_index[i]`` is anchor i's own row in ``contrast`` (excluded from numerator and denominator).
    """
    with _no_autocast(anchors):
        logits = (anchors * inv_tau) @ contrast.T  # (r, M)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    pos = anchor_labels[:, None] == contrast_labels[None, :]
    pos[rows, self_index] = False
    n_pos = pos.sum(1)
    valid = n_pos > 0
    others = logits.index_put((rows, self_index), logits.new_tensor(-math.inf))
    lse = torch.logsumexp(others, 1)  # denominator: every a ≠ i
    if variant == "out":
        # L_out = −(1/|P|) Σ_p log p_ip = lse − mean_p s_ip
        loss = lse - (logits * pos).sum(1) / n_pos.clamp(min=1)
    else:
        # L_in = −log( (1/|P|) Σ_p p_ip ) = lse − lse_p s_ip + log |P|
        # (an anchor without positives takes all other rows, only to keep values and gradients finite)
        pos = pos | ~valid[:, None]
        lse_pos = torch.logsumexp(others.masked_fill(~pos, -math.inf), 1)
        loss = lse - lse_pos + n_pos.clamp(min=1).to(logits.dtype).log()
    return torch.where(valid, loss, torch.zeros_like(loss))


class _SupConTiled(torch.autograd.Function):
    """Per-anchor SupCon losses of anchors = contrast rows ``[start, start + n)``, row-blocked, with a
    closed-form backward.

    With ``s_ij = a_i·c_j / τ`` over the contrast rows j ≠ self, ``lse_i = log Σ_{j≠i} exp(s_ij)``:

    * ``"out"``: ``ℓ_i = lse_i − (1/|P_i|) Σ_{p∈P_i} s_ip``, and the positive sum is
      ``a_i·(C_{y_i} − c_i)/τ`` with ``C_y`` the sum of the contrast rows of class y, so only the
      log-sum-exp needs the (n × M) logits; its gradient is ``G_ij = g_i softmax_ij`` and the
      positive term's is O((n + M)·d) by class sums.
    * ``"in"``: ``ℓ_i = lse_i − log Σ_{p∈P_i} exp(s_ip) + log |P_i|``, ``G_ij = g_i (softmax_ij −
      [j∈P_i] softmax⁺_ij)`` (the second softmax over the positives only).

    ``∂/∂a = G C / τ``, ``∂/∂C = Gᵀ A / τ``, one block of rows at a time. Saves the inputs and two (n,)
    log-sum-exps; the forward does one GEMM per block and the backward three (the block's logits are
    recomputed once), holding O(block·M) at a time per thread (blocks are shared among the CPU
    threads by :func:`~alignkit.functional._threads.on_workers`; each worker also holds its own
    (M, d) ∂/∂C accumulator). Anchors without a positive give 0 and no gradient.
    """

    @staticmethod
    def forward(
        ctx,
        anchors: Tensor,
        contrast: Tensor,
        contrast_labels: Tensor,
        start: int,
        inv_tau: float,
        variant: str,
        block: int,
    ) -> Tensor:
        n = anchors.shape[0]
        _, inverse, counts = torch.unique(contrast_labels, return_inverse=True, return_counts=True)
        anchor_class = inverse[start : start + n]
        n_pos = counts[anchor_class] - 1
        valid = n_pos > 0
        scaled = anchors * inv_tau
        lse = anchors.new_empty(n)
        lse_pos = anchors.new_zeros(n) if variant == "in" else anchors.new_empty(0)
        # every logit is at most ‖a‖·‖c‖/τ: a fixed shift instead of each row's maximum (no overflow)
        shift = float(anchors.norm(dim=1).max()) * float(contrast.norm(dim=1).max()) * inv_tau

        def blocks(starts: list[int]) -> None:
            for r0 in starts:
                r1 = min(r0 + block, n)
                logits = _SupConTiled._logits(scaled, contrast, start, r0, r1)
                if variant == "in":
                    pos = anchor_class[r0:r1, None] == inverse[None, :]
                    lse_pos[r0:r1] = logits.masked_fill(~pos, -math.inf).logsumexp(1)
                lse[r0:r1] = _SupConTiled._lse(logits, shift, scaled, contrast, start, r0, r1)

        on_workers(blocks, list(range(0, n, block)), anchors.device)
        n_pos_f = n_pos.clamp(min=1).to(anchors.dtype)
        if variant == "out":
            class_sum = anchors.new_zeros(counts.numel(), anchors.shape[1]).index_add_(0, inverse, contrast)
            own = class_sum[anchor_class] - contrast[start : start + n]  # Σ_{p∈P_i} c_p
            loss = lse - (anchors * own).sum(1) * inv_tau / n_pos_f
        else:
            lse_pos = torch.where(valid, lse_pos, torch.zeros_like(lse_pos))
            loss = lse - lse_pos + n_pos_f.log()
        ctx.save_for_backward(anchors, contrast, inverse, counts, lse, lse_pos)
        ctx.start, ctx.inv_tau, ctx.variant, ctx.block = start, inv_tau, variant, block
        return torch.where(valid, loss, torch.zeros_like(loss))

    @staticmethod
    def _lse(
        logits: Tensor, shift: float, scaled: Tensor, contrast: Tensor, start: int, r0: int, r1: int
    ) -> Tensor:
        """Row log-sum-exps of a block's logits (overwritten), ``log Σ_j exp(s_ij − shift) + shift`` with
        ``shift`` ≥ every logit: two in-place passes instead of ``logsumexp``'s four. A row whose sum is
        so small that its largest term could be subnormal (below √tiny) is recomputed by ``logsumexp``."""
        total = logits.sub_(shift).exp_().sum(1)
        lse = total.log().add_(shift)
        low = (total < torch.finfo(total.dtype).tiny ** 0.5).nonzero().squeeze(1)
        if low.numel():
            rows = low + r0
            again = scaled[rows] @ contrast.T
            again[torch.arange(low.numel(), device=again.device), rows + start] = -math.inf
            lse[low] = again.logsumexp(1)
        return lse

    @staticmethod
    def _logits(scaled: Tensor, contrast: Tensor, start: int, r0: int, r1: int) -> Tensor:
        """(r1 − r0, M) logits of anchors r0:r1, each one's own contrast row set to −inf."""
        logits = scaled[r0:r1] @ contrast.T
        rows = torch.arange(r1 - r0, device=logits.device)
        logits[rows, rows + (start + r0)] = -math.inf
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        with _no_autocast(grad):
            return _SupConTiled._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        anchors, contrast, inverse, counts, lse, lse_pos = ctx.saved_tensors
        start, inv_tau, variant, block = ctx.start, ctx.inv_tau, ctx.variant, ctx.block
        n = anchors.shape[0]
        anchor_class = inverse[start : start + n]
        n_pos = counts[anchor_class] - 1
        g = torch.where(n_pos > 0, grad.to(anchors.dtype), torch.zeros_like(lse))
        scaled = anchors * inv_tau
        d_anchors = torch.empty_like(anchors)

        def blocks(starts: list[int]) -> Tensor:
            d_contrast = torch.zeros_like(contrast)  # one accumulator per worker
            for r0 in starts:
                r1 = min(r0 + block, n)
                logits = _SupConTiled._logits(scaled, contrast, start, r0, r1)
                positive = None
                if variant == "in":
                    pos = anchor_class[r0:r1, None] == inverse[None, :]
                    positive = (logits - lse_pos[r0:r1, None]).exp_().masked_fill_(~pos, 0.0)
                G = logits.sub_(lse[r0:r1, None]).exp_()  # softmax over j ≠ i, in place
                if positive is not None:
                    G.sub_(positive)
                G.mul_(g[r0:r1, None])
                torch.mm(G, contrast, out=d_anchors[r0:r1])
                d_contrast.addmm_(G.T, anchors[r0:r1])
            return d_contrast

        parts = on_workers(blocks, list(range(0, n, block)), anchors.device)
        d_contrast = parts[0]
        for part in parts[1:]:
            d_contrast.add_(part)
        if variant == "out":  # the positive term −(g_i/|P_i|) a_i·Σ_{p∈P_i} c_p / τ
            w = (g / n_pos.clamp(min=1).to(g.dtype))[:, None]
            classes = counts.numel()
            class_sum = anchors.new_zeros(classes, anchors.shape[1]).index_add_(0, inverse, contrast)
            d_anchors.sub_(w * (class_sum[anchor_class] - contrast[start : start + n]))
            weighted = anchors.new_zeros(classes, anchors.shape[1]).index_add_(0, anchor_class, w * anchors)
            d_contrast.sub_(weighted[inverse])
            d_contrast[start : start + n] += w * anchors
        return d_anchors.mul_(inv_tau), d_contrast.mul_(inv_tau), None, None, None, None, None


def _supcon_rows(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    start: int,
    temperature: float,
    variant: str,
    chunk_size: int | None = None,
) -> Tensor:
    """(n,) SupCon losses of anchors = contrast rows ``[start, start + n)`` (features normalised).

    The plain autograd form for small logits; above the softmax CE's plain threshold (or when
    ``chunk_size`` is given) the row-blocked kernel :class:`_SupConTiled`, O(chunk·M) memory.
    """
    n, m = anchors.shape[0], contrast.shape[0]
    inv_tau = 1.0 / temperature
    elsize = anchors.element_size()
    limit = _PLAIN_MAX_BYTES.get(anchors.device.type, _PLAIN_MAX_BYTES_ACCEL)
    if chunk_size is None and n * m * elsize <= limit:
        self_index = torch.arange(start, start + n, device=anchors.device)
        return _supcon_block(anchors, anchor_labels, contrast, contrast_labels, self_index, inv_tau, variant)
    block = chunk_size if chunk_size is not None else max(1, _SUPCON_TILE_BYTES // (m * elsize))
    with _no_autocast(anchors):
        return _SupConTiled.apply(anchors, contrast, contrast_labels, start, inv_tau, variant, block)


def _check_labels(labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor of shape ({n},), got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per sample), got {shape_str(labels)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer (or bool) tensor, got dtype {labels.dtype}")
    return labels


@one_device
def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.1,
    variant: str = "out",
    reduction: str = "mean",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eqs. 2 and 3); SimCLR's NT-Xent without labels.

    Every view of every sample is an anchor ``i``; its positives ``P(i)`` are the other rows with the
    same label (every other view of the same sample when ``labels`` is None), and the denominator runs
    over every row but ``i`` itself. With ``s = cos / τ`` and ``A(i)`` all rows but i::

        L_out_i = −(1/|P(i)|) Σ_{p∈P(i)} log( exp(s_ip) / Σ_{a∈A(i)} exp(s_ia) )      variant="out"
        L_in_i  = −log( (1/|P(i)|) Σ_{p∈P(i)} exp(s_ip) / Σ_{a∈A(i)} exp(s_ia) )      variant="in"

    L_out is the paper's recommended form (and pytorch-metric-learning's ``SupConLoss``); L_in ≤ L_out
    by Jensen.

    Args:
        features: (N, d) or (N, V, d) (V views per sample); normalised here (cosine similarity).
        labels: (N,) integer class labels, or None (each sample is its own class: SimCLR).
        temperature: τ > 0.
        variant: "out" | "in".
        reduction: "mean" over anchors that have at least one positive (anchors without are excluded),
            "sum", or "none": per-anchor losses of shape (N,) or (N, V), 0 where an anchor has no positive.
        chunk_size: anchors per block of the row-blocked kernel (closed-form backward that recomputes
            each block's logits once); ``None`` blocks when the (N·V)² logits exceed 8 MiB on the
            CPU (256 MiB on accelerators), with blocks of about 16 MiB of logits.

    If no anchor has a positive (e.g. all labels distinct and V = 1) the loss is ``features.sum() * 0``
    (zero, still connected to the graph) and a ``UserWarning`` is issued; the result is never NaN.

    Time ``O((NV)²·d)``; memory ``O((NV)²)``, or ``O(chunk·NV + NV·d)`` row-blocked.
    """
    check_features(features, "features", ndim=(2, 3))
    check_positive(float(temperature), "temperature")
    check_reduction(reduction)
    _check_chunk(chunk_size)
    if variant not in ("out", "in"):
        raise ValueError(f"variant must be 'out' or 'in', got {variant!r}")
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    if features.dim() == 3 and views < 1:
        raise ValueError(f"features must have at least one view, got shape {shape_str(features)}")
    if labels is None:
        labels = torch.arange(n, device=features.device)
    else:
        labels = _check_labels(labels, n).to(features.device)
    flat_labels = labels.repeat_interleave(views)  # sample-major: row s·V + v
    out_shape = (n, views) if features.dim() == 3 else (n,)
    valid = _supcon_valid(flat_labels)
    if not bool(valid.any()):
        warnings.warn(
            "supcon_loss: no anchor has a positive (every label is unique and there is one view); "
            "returning 0",
            stacklevel=2,
        )
        zero = features.sum() * 0
        return zero.expand(out_shape) if reduction == "none" else zero

    cdtype = compute_dtype(features)
    flat = l2_normalize(features.to(cdtype).reshape(n * views, -1), dim=1)
    per_anchor = _supcon_rows(
        flat, flat_labels, flat, flat_labels, 0, float(temperature), variant, chunk_size
    )
    if reduction == "mean":
        out = per_anchor.sum() / valid.sum()
    elif reduction == "sum":
        out = per_anchor.sum()
    else:
        out = per_anchor.reshape(out_shape)
    return out.to(features.dtype)


@one_device
def nt_xent_loss(
    view1: Tensor,
    view2: Tensor,
    temperature: float = 0.1,
    reduction: str = "mean",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """SimCLR's NT-Xent (normalised temperature-scaled cross-entropy) over all 2N views (Chen et al.
    2020, eq. 1), as pytorch-metric-learning's ``SelfSupervisedLoss(NTXentLoss(τ))`` computes it.

    The two views are stacked into 2N rows ``z = [view1; view2]``; each row ``i`` is an anchor whose
    positive ``p(i)`` is the other view of the same sample, and whose denominator runs over the other
    2N − 1 rows (the positive plus 2N − 2 negatives, same-view rows included). With ``s = cos / τ``::

        ℓ_i = −log( exp(s_{i,p(i)}) / Σ_{a ≠ i} exp(s_{ia}) ),     L = (1/2N) Σ_i ℓ_i

    This differs from :func:`info_nce` (query→key only, no same-side negatives; CLIP averages the two
    directions). The formula is SupCon's with one class per sample, so this calls
    :func:`supcon_loss` on ``stack([view1, view2], 1)``.

    Args:
        view1: (N, d) first views; normalised here.
        view2: (N, d) second views, row ``i`` paired with ``view1[i]``.
        temperature: τ > 0 (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet).
        reduction: "mean" | "sum" | "none" ((2N,) per anchor, rows of ``view1`` first).
        chunk_size: anchors per block of the row-blocked path (see :func:`supcon_loss`).

    Returns:
        Scalar (or (2N,)) in the dtype of the inputs.

    Time ``O(N²·d)``; memory ``O(N²)``, or ``O(chunk·N + N·d)`` row-blocked.

    Example:
        >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
        >>> nt_xent_loss(z1, z2, temperature=0.5).shape
        torch.Size([])
    """
    check_features(view1, "view1")
    check_features(view2, "view2")
    if view1.shape != view2.shape:
        raise ValueError(
            f"view1 and view2 must have the same shape, got {shape_str(view1)} and {shape_str(view2)}"
        )
    check_same_device(("view1", view1), ("view2", view2))
    check_reduction(reduction)
    dtype = torch.promote_types(view1.dtype, view2.dtype)
    stacked = torch.stack([view1.to(dtype), view2.to(dtype)], 1)
    out = supcon_loss(stacked, None, temperature, "out", reduction, chunk_size=chunk_size)
    return out.T.reshape(-1) if reduction == "none" else out
