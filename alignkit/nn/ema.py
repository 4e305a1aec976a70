"""Momentum (exponential moving average) targets and BYOL's cosine momentum schedule.

Two plain functions, :func:`cosine_schedule` and :func:`update_momentum`, and a thin module,
:class:`MomentumTarget`, that owns a frozen copy of an online network and runs it without gradients.

Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning": "the
target network parameters ξ are an exponential moving average of the online parameters θ …
ξ ← τξ + (1 − τ)θ", with "τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2, with k the current training step
and K the maximum number of training steps", τ_base = 0.996.

Example:
    >>> target = MomentumTarget(online)
    >>> for step in range(max_steps):
    ...     loss = byol_loss(predictor(online(x1)), target(x2))
    ...     loss.backward(); opt.step(); opt.zero_grad()
    ...     target.update(online, cosine_schedule(step, max_steps))
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.functional._checks import check_int, shape_str

__all__ = ["MomentumTarget", "cosine_schedule", "update_momentum"]


def cosine_schedule(step: int, max_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """BYOL's cosine schedule of the EMA momentum τ from ``start`` (step 0) to ``end`` (step ``max_steps``).

    ``τ(k) = end − (end − start)·(cos(π·k/K) + 1)/2`` for ``0 ≤ k < K``, and ``τ = end`` for ``k ≥ K``
    (Grill et al. 2020, "Bootstrap Your Own Latent", §3.2, with ``start = τ_base = 0.996`` and
    ``end = 1``). Monotone between the end points (increasing when ``start < end``).

    Args:
        step: current step ``k ≥ 0``.
        max_steps: total number of steps ``K ≥ 1``.
        start: value at step 0.
        end: value from step ``K`` on.

    Returns:
        τ as a Python float. Cost: O(1).
    """
    check_int(step, "step", 0)
    check_int(max_steps, "max_steps", 1)
    for value, name in ((start, "start"), (end, "end")):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if step >= max_steps:
        return float(end)
    return float(end - (end - start) * (math.cos(math.pi * step / max_steps) + 1.0) / 2.0)


def _pairs(kind: str, target: list[tuple[str, Tensor]], online: list[tuple[str, Tensor]]) -> None:
    if len(target) != len(online):
        raise ValueError(
            f"target and online must have the same {kind}: target has {len(target)}, online has {len(online)}"
        )
    for (name_t, t), (name_o, o) in zip(target, online, strict=True):
        if t.shape != o.shape:
            raise ValueError(
                f"target {kind[:-1]} {name_t!r} has shape {shape_str(t)} but online {kind[:-1]} "
                f"{name_o!r} has shape {shape_str(o)}"
            )


@torch.no_grad()
def update_momentum(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target ← m·target + (1 − m)·online`` for every parameter and floating buffer.

    The EMA update of BYOL / MoCo (Grill et al. 2020; He et al. 2020, "Momentum Contrast for
    Unsupervised Visual Representation Learning"): ``ξ ← τξ + (1 − τ)θ``. Floating-point buffers
    (BatchNorm running mean / variance) are averaged the same way; integer and bool buffers
    (BatchNorm's ``num_batches_tracked``) are copied from ``online``. Parameters and buffers are paired
    in registration order, so ``target`` must have ``online``'s structure (e.g. a deep copy of it).
    Uses the multi-tensor ``torch._foreach_mul_`` / ``torch._foreach_add_`` kernels, without autograd.

    Args:
        target: the module updated in place (the momentum / teacher network).
        online: the module averaged in (the trained / student network); not modified.
        momentum: ``m`` in ``[0, 1]``; ``1`` keeps ``target``, ``0`` copies ``online``.

    Cost: O(P) time for P parameter and buffer elements, no extra memory beyond one temporary per
    tensor inside the fused kernels.
    """
    if not isinstance(target, nn.Module) or not isinstance(online, nn.Module):
        raise ValueError(
            f"target and online must be nn.Modules, got {type(target).__name__} and {type(online).__name__}"
        )
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    m = float(momentum)
    params_t = list(target.named_parameters())
    params_o = list(online.named_parameters())
    _pairs("parameters", params_t, params_o)
    buffers_t = list(target.named_buffers())
    buffers_o = list(online.named_buffers())
    _pairs("buffers", buffers_t, buffers_o)

    avg_t = [t for _, t in params_t]
    avg_o = [
        o.to(t.dtype) if o.dtype != t.dtype else o for (_, t), (_, o) in zip(params_t, params_o, strict=True)
    ]
    for (_, t), (_, o) in zip(buffers_t, buffers_o, strict=True):
        if t.is_floating_point() or t.is_complex():
            avg_t.append(t)
            avg_o.append(o.to(t.dtype) if o.dtype != t.dtype else o)
        else:
            t.copy_(o)
    if avg_t:
        torch._foreach_mul_(avg_t, m)
        torch._foreach_add_(avg_t, avg_o, alpha=1.0 - m)


class MomentumTarget(nn.Module):
    """A frozen copy of an online network, updated by EMA and run without gradients.

    ``MomentumTarget(online)`` deep-copies ``online`` (parameters, buffers and train / eval mode) and
    sets ``requires_grad=False`` on the copy's parameters. It does not force eval mode: it follows
    ``.train()`` / ``.eval()`` of whatever owns it, as in BYOL where the target's BatchNorm uses batch
    statistics during training. ``forward`` runs the copy under ``torch.no_grad()`` (the stop-gradient
    of BYOL, ``sg(z'_ξ)``); ``update(online, m)`` applies :func:`update_momentum`.

    Args:
        online: the network to track.

    Attributes:
        module: the copy.

    Cost: one extra copy of ``online``'s parameters and buffers; forward as ``online`` without the
    autograd graph.

    Example:
        >>> target = MomentumTarget(encoder)
        >>> z_target = target(images)                 # no graph, no gradient
        >>> target.update(encoder, momentum=0.99)
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        if not isinstance(online, nn.Module):
            raise ValueError(f"online must be an nn.Module, got {type(online).__name__}")
        self.module = copy.deepcopy(online)
        self.module.requires_grad_(False)

    def update(self, online: nn.Module, momentum: float) -> None:
        """``target ← m·target + (1 − m)·online`` (see :func:`update_momentum`)."""
        update_momentum(self.module, online, momentum)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)
