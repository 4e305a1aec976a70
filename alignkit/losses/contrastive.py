"""Contrastive loss modules: InfoNCE, CLIP / SigLIP (learnable temperature and bias), SupCon.

Each wraps one function of :mod:`alignkit.functional.contrastive` and, when ``torch.distributed`` is
initialised with more than one process in ``process_group``, gathers the other ranks' embeddings with
:func:`alignkit.distributed.gather_with_grad` so that negatives come from the global batch (open_clip's
design: distribution is an option of the loss, not another code path).

Distributed convention (every rank passes the same number of rows ``n``): the value on each rank,
averaged over ranks, equals the loss of the global batch, and the gradient reaching a rank's rows is
``world_size`` times the global-batch gradient, which DDP's averaging divides out (see
:mod:`alignkit.distributed`).

* ``local_loss=True`` (default): each rank scores its local rows against the gathered rows with
  positives at ``rank·n + i`` — ``O(n·N)`` logits per rank instead of ``O(N²)``.
* ``local_loss=False``: both sides are gathered and every rank computes the whole global loss.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.distributed import gather_with_grad, rank, world_size
from alignkit.functional._checks import EPS, check_features, check_positive, check_same_device, compute_dtype
from alignkit.functional.contrastive import (
    _check_chunk,
    _check_labels,
    _check_pair,
    _clip_loss,
    _softmax_ce,
    _supcon_rows,
    _supcon_valid,
    clip_loss,
    info_nce,
    nt_xent_loss,
    supcon_loss,
)
from alignkit.losses.registry import register

__all__ = ["CLIPLoss", "InfoNCELoss", "LearnableTemperature", "NTXentLoss", "SigLIPLoss", "SupConLoss"]


class LearnableTemperature(nn.Module):
    """A learnable softmax temperature stored as a log-parameter (CLIP, Radford et al. 2021).

    ``forward()`` returns the logit scale ``exp(log_scale) = 1/temperature``. As in open_clip,
    ``log_scale`` is clamped in place to ``≤ log(max_scale)`` at each call (under ``no_grad``), so the
    scale never exceeds ``max_scale`` (100 in CLIP) while the gradient keeps reaching the parameter.

    Args:
        init_temperature: initial temperature τ (CLIP: 0.07); ``log_scale = log(1/τ)``.
        max_scale: upper clamp of the scale.
        learnable: whether ``log_scale`` is trained.
    """

    def __init__(
        self, init_temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True
    ) -> None:
        super().__init__()
        check_positive(float(init_temperature), "init_temperature")
        check_positive(float(max_scale), "max_scale")
        if 1.0 / float(init_temperature) > float(max_scale):
            raise ValueError(
                f"init_temperature must be ≥ 1/max_scale = {1 / float(max_scale):g}, got {init_temperature}"
            )
        self.max_scale = float(max_scale)
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / float(init_temperature))), requires_grad=learnable
        )

    def forward(self) -> Tensor:
        with torch.no_grad():
            self.log_scale.clamp_(max=math.log(self.max_scale))
        return self.log_scale.exp()

    @property
    def temperature(self) -> float:
        """The current temperature ``1/scale`` as a number."""
        return 1.0 / min(math.exp(self.log_scale.item()), self.max_scale)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}, max_scale={self.max_scale:g}"


@register("info_nce", "infonce")
class InfoNCELoss(nn.Module):
    """InfoNCE over in-batch (and optional explicit) negatives; see :func:`alignkit.functional.info_nce`.

    Args:
        temperature: τ > 0 (fixed; use :class:`CLIPLoss` for a learnable one).
        symmetric: average query→key and key→query (CLIP form).
        normalize: L2-normalise the inputs (cosine similarity).
        chunk_size: tiled kernel block size (``None``: automatic).
        process_group: the ``torch.distributed`` group to gather over (``None``: the default group).
        local_loss: with several processes, score local queries against gathered keys (``True``) or
            compute the global loss on every rank (``False``).

    ``forward(query (n,d), key (n,d), negatives (r,d) | None) → scalar``. In distributed runs the
    explicit negatives are gathered too: every query sees every rank's negatives (same ``r`` per rank).

    Example:
        >>> loss_fn = InfoNCELoss(temperature=0.1, symmetric=True)
        >>> loss = loss_fn(torch.randn(8, 32), torch.randn(8, 32))
    """

    def __init__(
        self,
        temperature: float = 0.07,
        symmetric: bool = False,
        normalize: bool = True,
        chunk_size: int | None = None,
        process_group: object | None = None,
        local_loss: bool = True,
    ) -> None:
        super().__init__()
        check_positive(float(temperature), "temperature")
        self.temperature = float(temperature)
        self.symmetric = symmetric
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.process_group = process_group
        self.local_loss = local_loss

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> Tensor:
        group = self.process_group
        kwargs = {"temperature": self.temperature, "normalize": self.normalize, "chunk_size": self.chunk_size}
        if world_size(group) == 1:
            return info_nce(query, key, negatives=negatives, symmetric=self.symmetric, **kwargs)
        check_features(query, "query")
        check_features(key, "key")
        if query.shape != key.shape:
            raise ValueError(
                f"query and key must have the same shape in distributed mode, got "
                f"{tuple(query.shape)} and {tuple(key.shape)}"
            )
        all_neg = gather_with_grad(negatives, group) if negatives is not None else None
        all_key = gather_with_grad(key, group)
        if not self.local_loss:
            all_query = gather_with_grad(query, group)
            return info_nce(all_query, all_key, negatives=all_neg, symmetric=self.symmetric, **kwargs)
        offset = rank(group) * query.shape[0]
        loss = info_nce(query, all_key, negatives=all_neg, target_offset=offset, **kwargs)
        if self.symmetric:
            all_query = gather_with_grad(query, group)
            back = info_nce(key, all_query, target_offset=offset, **kwargs)
            loss = 0.5 * (loss + back)
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, symmetric={self.symmetric}, normalize={self.normalize}, "
            f"chunk_size={self.chunk_size}, local_loss={self.local_loss}"
        )


@register("clip")
class CLIPLoss(nn.Module):
    """CLIP's symmetric contrastive loss with a learnable temperature (Radford et al. 2021), or the
    SigLIP pairwise sigmoid loss with a learnable bias (Zhai et al. 2023) when ``sigmoid=True``.

    The module owns a :class:`LearnableTemperature` (``log_scale`` initialised to
    ``log(1 / init_temperature)``, logit scale ``exp(log_scale)`` clamped in place to ``≤ max_scale`` at
    each forward, so the gradient still reaches the parameter, as in open_clip). ``forward(a, b)``
    L2-normalises both inputs and calls :func:`alignkit.functional.clip_loss`.

    Args:
        init_temperature: initial temperature; default 0.07 (CLIP), 0.1 with ``sigmoid`` (SigLIP's scale 10).
        learn_temperature: make ``log_scale`` trainable.
        max_scale: upper clamp of the scale (100, as CLIP).
        sigmoid: SigLIP loss; adds the parameter ``logit_bias``.
        init_bias: SigLIP's initial bias (−10).
        learn_bias: make ``logit_bias`` trainable.
        chunk_size: tiled kernel block size (``None``: automatic).
        process_group, local_loss: distributed options (see the module docstring).
        output_dict: return ``{"loss", "logit_scale", "logit_bias"}`` instead of the loss.
        eps: normalisation epsilon.
    """

    def __init__(
        self,
        init_temperature: float | None = None,
        learn_temperature: bool = True,
        max_scale: float = 100.0,
        sigmoid: bool = False,
        init_bias: float = -10.0,
        learn_bias: bool = True,
        chunk_size: int | None = None,
        process_group: object | None = None,
        local_loss: bool = True,
        output_dict: bool = False,
        eps: float = EPS,
    ) -> None:
        super().__init__()
        if init_temperature is None:
            init_temperature = 0.1 if sigmoid else 0.07
        self.temperature = LearnableTemperature(init_temperature, max_scale, learn_temperature)
        self.sigmoid = sigmoid
        if sigmoid:
            if not math.isfinite(float(init_bias)):
                raise ValueError(f"init_bias must be finite, got {init_bias}")
            self.logit_bias: nn.Parameter | None = nn.Parameter(
                torch.tensor(float(init_bias)), requires_grad=learn_bias
            )
        else:
            self.register_parameter("logit_bias", None)
        _check_chunk(chunk_size)
        self.chunk_size = chunk_size
        self.process_group = process_group
        self.local_loss = local_loss
        self.output_dict = output_dict
        self.eps = eps

    @property
    def log_scale(self) -> nn.Parameter:
        """The learnable ``log(scale)`` (owned by :attr:`temperature`)."""
        return self.temperature.log_scale

    @property
    def max_scale(self) -> float:
        return self.temperature.max_scale

    @property
    def logit_scale(self) -> Tensor:
        """The current (clamped) multiplier ``exp(log_scale)``."""
        return self.log_scale.clamp(max=math.log(self.max_scale)).exp()

    def forward(self, a: Tensor, b: Tensor) -> Tensor | dict[str, Tensor | None]:
        check_features(a, "a")
        check_features(b, "b")
        _check_pair(a, b, "a", "b")
        check_same_device(("a", a), ("b", b))
        scale = self.temperature()
        bias = self.logit_bias
        a = F.normalize(a, dim=-1, eps=self.eps)
        b = F.normalize(b, dim=-1, eps=self.eps)
        group = self.process_group
        if world_size(group) == 1:  # checked above: not scanned again for finiteness
            loss = _clip_loss(a, b, scale, bias, self.chunk_size, 0)
        elif not self.local_loss:
            loss = clip_loss(
                gather_with_grad(a, group), gather_with_grad(b, group), scale, bias, self.chunk_size
            )
        else:
            loss = self._local_loss(a, b, scale, bias, group)
        if self.output_dict:
            return {"loss": loss, "logit_scale": scale, "logit_bias": bias}
        return loss

    def _local_loss(self, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor | None, group: object) -> Tensor:
        if a.shape != b.shape:
            raise ValueError(
                "a and b must have the same shape in distributed mode, "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        n = a.shape[0]
        offset = rank(group) * n
        all_b = gather_with_grad(b, group)
        if bias is not None:
            # every (local i, global j) pair once: the mean over ranks is the global SigLIP loss
            return clip_loss(a, all_b, scale, bias, self.chunk_size, target_offset=offset)
        all_a = gather_with_grad(a, group)
        cdtype = compute_dtype(a, b)
        s = scale.to(cdtype)
        rows_ab = _softmax_ce(a.to(cdtype), all_b.to(cdtype), s, offset, False, self.chunk_size)
        rows_ba = _softmax_ce(b.to(cdtype), all_a.to(cdtype), s, offset, False, self.chunk_size)
        return (0.5 * (rows_ab.mean() + rows_ba.mean())).to(torch.promote_types(a.dtype, b.dtype))

    def extra_repr(self) -> str:
        return (
            f"sigmoid={self.sigmoid}, max_scale={self.max_scale}, chunk_size={self.chunk_size}, "
            f"local_loss={self.local_loss}, output_dict={self.output_dict}"
        )


@register("siglip")
class SigLIPLoss(CLIPLoss):
    """:class:`CLIPLoss` with ``sigmoid=True`` (SigLIP, Zhai et al. 2023): initial scale 10, bias −10."""

    def __init__(
        self,
        init_temperature: float = 0.1,
        learn_temperature: bool = True,
        max_scale: float = 100.0,
        init_bias: float = -10.0,
        learn_bias: bool = True,
        chunk_size: int | None = None,
        process_group: object | None = None,
        local_loss: bool = True,
        output_dict: bool = False,
        eps: float = EPS,
    ) -> None:
        super().__init__(
            init_temperature=init_temperature,
            learn_temperature=learn_temperature,
            max_scale=max_scale,
            sigmoid=True,
            init_bias=init_bias,
            learn_bias=learn_bias,
            chunk_size=chunk_size,
            process_group=process_group,
            local_loss=local_loss,
            output_dict=output_dict,
            eps=eps,
        )


@register("supcon")
class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020); see :func:`alignkit.functional.supcon_loss`.

    ``forward(features (n,d) or (n,V,d), labels (n,) | None) → scalar``. Without labels every sample is
    its own class (SimCLR / NT-Xent over the V views).

    Distributed: each rank's anchors are contrasted with the features gathered from every rank (and
    labels; ``None`` becomes globally unique sample ids), and the per-rank sum is divided by the number
    of anchors with a positive in the *global* batch (times ``world_size``), so the mean over ranks is
    exactly the global loss even though anchors without positives are left out.
    """

    def __init__(
        self, temperature: float = 0.1, variant: str = "out", process_group: object | None = None
    ) -> None:
        super().__init__()
        check_positive(float(temperature), "temperature")
        if variant not in ("out", "in"):
            raise ValueError(f"variant must be 'out' or 'in', got {variant!r}")
        self.temperature = float(temperature)
        self.variant = variant
        self.process_group = process_group

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        group = self.process_group
        ws = world_size(group)
        if ws == 1:
            return supcon_loss(features, labels, self.temperature, self.variant)
        check_features(features, "features", ndim=(2, 3))
        n = features.shape[0]
        views = features.shape[1] if features.dim() == 3 else 1
        r = rank(group)
        if labels is None:
            all_labels = torch.arange(ws * n, device=features.device)
        else:
            all_labels = gather_with_grad(_check_labels(labels, n).to(features.device), group)
        all_feats = gather_with_grad(features, group)
        flat_labels = all_labels.repeat_interleave(views)
        count = _supcon_valid(flat_labels).sum()
        if int(count) == 0:
            warnings.warn(
                "SupConLoss: no anchor in the global batch has a positive; returning 0", stacklevel=2
            )
            return features.sum() * 0
        cdtype = compute_dtype(features)
        flat = F.normalize(all_feats.to(cdtype).reshape(ws * n * views, -1), dim=1, eps=EPS)
        lo, hi = r * n * views, (r + 1) * n * views
        per_anchor = _supcon_rows(
            flat[lo:hi], flat_labels[lo:hi], flat, flat_labels, lo, self.temperature, self.variant
        )
        return (per_anchor.sum() * ws / count).to(features.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}"


@register("ntxent", "nt_xent")
class NTXentLoss(SupConLoss):
    """SimCLR's NT-Xent over all 2N views (Chen et al. 2020); see :func:`alignkit.functional.nt_xent_loss`.

    ``forward(view1 (n,d), view2 (n,d)) → scalar``: every one of the 2n rows is an anchor, its positive
    the other view of its sample, its negatives the other 2n − 2 rows (same-view rows included) — as
    pytorch-metric-learning's ``SelfSupervisedLoss(NTXentLoss(τ))``. Not :class:`InfoNCELoss`, which
    contrasts queries with keys only. Distributed: the views of every rank are gathered as in
    :class:`SupConLoss` (the mean over ranks is the global-batch loss).

    Args:
        temperature: τ > 0 (SimCLR: 0.5 on CIFAR-10, 0.1 on ImageNet).
        process_group: the ``torch.distributed`` group to gather over (``None``: the default group).
    """

    def __init__(self, temperature: float = 0.1, process_group: object | None = None) -> None:
        super().__init__(temperature=temperature, variant="out", process_group=process_group)

    def forward(self, view1: Tensor, view2: Tensor) -> Tensor:  # type: ignore[override]
        if world_size(self.process_group) == 1:
            return nt_xent_loss(view1, view2, self.temperature)
        check_features(view1, "view1")
        check_features(view2, "view2")
        if view1.shape != view2.shape:
            raise ValueError(
                f"view1 and view2 must have the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}"
            )
        return super().forward(torch.stack([view1, view2], 1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
