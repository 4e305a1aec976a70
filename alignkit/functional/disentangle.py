"""Disentangled contrastive objectives: one contrastive loss per sub-space, and independence
penalties between sub-spaces (MISSION §4).

A representation ``z = [z_1 … z_k]`` is split along its feature dimension into k sub-spaces, one per
factor of variation. Sub-space i is trained contrastively with the positives of factor i (two samples
that share factor i are positives there), and a penalty keeps the sub-spaces statistically
independent (Locatello et al. 2019 discuss why the factors must be supervised or weakly supervised;
the per-factor contrastive form follows Wang et al. 2023, "Disentangled Representation Learning").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from alignkit.functional._checks import (
    EPS,
    check_features,
    check_same_device,
    check_same_shape,
    compute_dtype,
    one_device,
    shape_str,
)
from alignkit.functional.contrastive import info_nce, supcon_loss

__all__ = ["decorrelation_loss", "split_subspaces", "subspace_contrastive_loss"]


@one_device
def split_subspaces(z: Tensor, num_subspaces: int | Sequence[int], name: str = "z") -> list[Tensor]:
    """Split (N, d) features into sub-spaces along dim -1.

    ``num_subspaces`` is either k (d must be divisible by k: k equal sub-spaces) or the list of
    sub-space widths, which must sum to d.
    """
    d = z.shape[-1]
    if isinstance(num_subspaces, int):
        if num_subspaces < 1 or d % num_subspaces:
            raise ValueError(
                f"num_subspaces must be a positive divisor of {name}'s width {d} ({name} has shape "
                f"{shape_str(z)}), got {num_subspaces}"
            )
        widths = [d // num_subspaces] * num_subspaces
    else:
        widths = [int(w) for w in num_subspaces]
        if not widths or min(widths) < 1 or sum(widths) != d:
            raise ValueError(
                f"num_subspaces as widths must be positive and sum to {name}'s width {d}, got {widths}"
            )
    return list(torch.split(z, widths, dim=-1))


@one_device
def subspace_contrastive_loss(
    z1: Tensor,
    z2: Tensor,
    num_subspaces: int | Sequence[int],
    temperature: float = 0.1,
    factors: Tensor | None = None,
) -> Tensor:
    """Mean over sub-spaces of a contrastive loss computed inside each sub-space.

    Args:
        z1, z2: (N, d) two views of the same N samples (or two modalities), same shape.
        num_subspaces: k, or the sub-space widths (summing to d).
        temperature: softmax temperature τ.
        factors: optional (N, k) integer labels, column i the value of factor i. When given,
            sub-space i uses the supervised contrastive loss (Khosla et al. 2020, L_out) with
            positives = every view of every sample sharing factor i; when ``None``, sub-space i uses
            symmetric InfoNCE between the views (only the other view of the same sample is positive).

    Returns:
        ``(1/k) Σ_i L_i`` as a scalar.

    Cost: O(N²·d) time; memory that of the underlying contrastive loss per sub-space.
    """
    check_features(z1, "z1")
    check_features(z2, "z2")
    check_same_shape(z1, z2, "z1", "z2")
    check_same_device(("z1", z1), ("z2", z2))
    parts1 = split_subspaces(z1, num_subspaces, "z1")
    parts2 = split_subspaces(z2, num_subspaces, "z2")
    k = len(parts1)
    if factors is not None:
        if not isinstance(factors, Tensor) or factors.shape != (z1.shape[0], k):
            got = shape_str(factors) if isinstance(factors, Tensor) else type(factors).__name__
            raise ValueError(f"factors must have shape ({z1.shape[0]}, {k}) (N, num_subspaces), got {got}")
        if factors.is_floating_point():
            raise ValueError(f"factors must hold integer labels, got dtype {factors.dtype}")
    losses = []
    for i, (a, b) in enumerate(zip(parts1, parts2, strict=True)):
        if factors is None:
            losses.append(info_nce(a, b, temperature=temperature, symmetric=True))
        else:
            losses.append(supcon_loss(torch.stack([a, b], dim=1), factors[:, i], temperature=temperature))
    return torch.stack(losses).mean()


@one_device
def decorrelation_loss(z: Tensor, num_subspaces: int | Sequence[int], penalty: str = "correlation") -> Tensor:
    """Dependence between sub-spaces: mean squared cross-sub-space (cross-)correlation.

    With columns of ``z`` centred over the batch (and, for ``"correlation"``, scaled to unit
    variance), ``C = ZᵀZ / N`` is the d×d correlation (or covariance) matrix; the loss is the mean of
    ``C_ab²`` over every pair of columns a, b that lie in *different* sub-spaces. Within-sub-space
    entries are free. ``"covariance"`` equals Σ_{i≠j} HSIC_linear(z_i, z_j) up to the count of
    entries: HSIC with linear kernels is ‖Cov(z_i, z_j)‖_F² (Gretton et al. 2005).

    Args:
        z: (N, d) features, N ≥ 2.
        num_subspaces: k, or the sub-space widths (summing to d).
        penalty: ``"correlation"`` (scale-free, default) or ``"covariance"``.

    Cost: O(N·d²) time, O(d²) memory; no N×N matrix.
    """
    check_features(z, "z", min_rows=2)
    if penalty not in ("correlation", "covariance"):
        raise ValueError(f"penalty must be 'correlation' or 'covariance', got {penalty!r}")
    parts = split_subspaces(z, num_subspaces)
    if len(parts) < 2:
        raise ValueError(f"decorrelation_loss needs at least 2 sub-spaces, got num_subspaces={num_subspaces}")
    x = z.to(compute_dtype(z))
    x = x - x.mean(dim=0, keepdim=True)
    if penalty == "correlation":
        # a constant column is all zeros once centred: it stays 0, with a finite gradient
        x = x * x.pow(2).mean(dim=0, keepdim=True).clamp_min(EPS**2).rsqrt()
    c = x.T @ x / x.shape[0]
    ids = torch.cat([torch.full((p.shape[-1],), i, device=z.device) for i, p in enumerate(parts)])
    cross = ids[:, None] != ids[None, :]
    return c.pow(2)[cross].mean().to(z.dtype)
