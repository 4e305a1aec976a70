"""Generative-model math: the flow-matching interpolant, Fréchet distance, manifold precision/recall,
and VA-VAE's adaptive loss weight.

    import alignkit.functional as AF
    x_t, v = AF.linear_interpolant(x, noise, t)         # SiT / REPA: x_t = (1−t)·x + t·ε, v = ε − x
    fd = AF.frechet_distance(real_features, fake_features)
    p, r = AF.manifold_precision_recall(real_features, fake_features, k=3)
    w = AF.adaptive_loss_weight(rec_loss, vf_loss, encoder_last_weight, scale=0.1)

* Flow matching with the linear interpolant (Lipman et al. 2023; Ma et al. 2024, SiT; the convention of
  Yu et al. 2024, REPA): data at t = 0, Gaussian noise at t = 1, ``x_t = (1 − t)·x + t·ε``; the model
  predicts the velocity ``v = dx_t/dt = ε − x`` and is sampled by integrating from t = 1 to t = 0.
* Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
  Local Nash Equilibrium"; FID when the features are Inception's): the 2-Wasserstein distance between
  Gaussians fitted to two feature sets,
  ``FD = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}``.
* Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models"): each set's manifold is the union of balls around its points with
  radius the distance to the point's k-th nearest neighbour in its own set; precision is the fraction
  of generated points inside the real manifold, recall the fraction of real points inside the
  generated manifold.
* VA-VAE's adaptive weight (Yao et al. 2025, "Reconstruction vs. Generation: Taming Optimization
  Dilemma in Latent Diffusion Models", eq. 5): ``w_adaptive = ‖∇L_rec‖ / ‖∇L_vf‖`` at the encoder's last
  layer, so that the vision-foundation loss moves that layer as much as reconstruction does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.functional._checks import (
    check_features,
    check_int,
    check_positive,
    check_same_device,
    one_device,
    shape_str,
)

__all__ = [
    "adaptive_loss_weight",
    "frechet_distance",
    "frechet_distance_from_moments",
    "gaussian_moments",
    "linear_interpolant",
    "manifold_precision_recall",
]


@one_device
def linear_interpolant(x: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The linear (rectified-flow) interpolant and its velocity: ``x_t = (1 − t)·x + t·ε``, ``v = ε − x``.

    Data at t = 0, noise at t = 1 (SiT's ``Linear`` path with REPA's orientation). Training regresses a
    model ``v_θ(x_t, t)`` on ``v`` (mean squared error); sampling integrates ``dx/dt = v_θ`` from t = 1 to 0.

    Args:
        x: (B, ...) data.
        noise: (B, ...) standard Gaussian noise, the shape of x.
        t: (B,) times in [0, 1] (broadcast over the trailing axes of x).

    Returns:
        ``(x_t, v)``, both the shape of x. O(x.numel()) time and memory.
    """
    if not isinstance(x, Tensor) or not isinstance(noise, Tensor) or not isinstance(t, Tensor):
        raise ValueError("x, noise and t must be torch.Tensors")
    if noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x {shape_str(x)}, got {shape_str(noise)}")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {shape_str(t)}")
    check_same_device(("x", x), ("noise", noise), ("t", t))
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (1 - tt) * x + tt * noise, noise - x


def gaussian_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (d,) and unbiased covariance (d, d) of features (N, d), in float64 (N ≥ 2).

    The covariance divides by N − 1, as ``numpy.cov`` (and pytorch-fid / clean-fid). O(N·d²) time,
    O(N·d + d²) memory.
    """
    check_features(features, "features", min_rows=2)
    f = features.detach().to(torch.float64)
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Symmetric PSD square root by eigen-decomposition (negative round-off eigenvalues clipped)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


@one_device
def frechet_distance_from_moments(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2·Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}`` (Heusel et al. 2017), float64.

    ``Tr (Σ₁Σ₂)^{1/2}`` equals the trace of the symmetric PSD matrix ``(Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}``
    (same eigenvalues), computed by two symmetric eigen-decompositions: no complex round-off as with a
    general ``sqrtm`` of the non-symmetric product. O(d³) time, O(d²) memory.

    Args:
        mu1, mu2: (d,) means.
        sigma1, sigma2: (d, d) symmetric positive semi-definite covariances.

    Returns:
        a float64 scalar ≥ 0 (up to round-off).
    """
    for name, mu in (("mu1", mu1), ("mu2", mu2)):
        if not isinstance(mu, Tensor) or mu.dim() != 1:
            raise ValueError(f"{name} must be a (d,) tensor, got {getattr(mu, 'shape', type(mu).__name__)}")
    d = mu1.shape[0]
    if mu2.shape[0] != d:
        raise ValueError(f"mu2 must have shape ({d},) like mu1, got {shape_str(mu2)}")
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if not isinstance(s, Tensor) or s.shape != (d, d):
            got = getattr(s, "shape", type(s).__name__)
            raise ValueError(f"{name} must have shape ({d}, {d}), got {got}")
    mu1, mu2, sigma1, sigma2 = (v.detach().to(torch.float64) for v in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    vals = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0)
    diff = mu1 - mu2
    return diff @ diff + sigma1.trace() + sigma2.trace() - 2 * vals.sqrt().sum()


@one_device
def frechet_distance(x: Tensor, y: Tensor) -> Tensor:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula on any features).

    Args:
        x: (N, d) features, N ≥ 2 (e.g. a classifier's penultimate layer on real images).
        y: (M, d) features, M ≥ 2, same d.

    Returns:
        a float64 scalar (see :func:`frechet_distance_from_moments`). FD is biased upwards at small N:
        compare values computed with the same N, M and features only.

    Cost: O((N + M)·d² + d³) time, O((N + M)·d + d²) memory.
    """
    check_features(x, "x", min_rows=2)
    check_features(y, "y", min_rows=2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same width, got {shape_str(x)} and {shape_str(y)}")
    return frechet_distance_from_moments(*gaussian_moments(x), *gaussian_moments(y))


def _kth_radius(z: Tensor, k: int, block: int) -> Tensor:
    """Distance from each row of z to its k-th nearest other row (self excluded), in blocks."""
    out = []
    n = z.shape[0]
    for start in range(0, n, block):
        d = torch.cdist(z[start : start + block], z)
        rows = torch.arange(start, min(start + block, n), device=z.device)
        d[rows - start, rows] = float("inf")
        out.append(d.kthvalue(k, dim=1).values)
    return torch.cat(out)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, block: int) -> Tensor:
    """Whether each point lies in at least one ball (centre_j, radius_j), in blocks of points."""
    out = []
    for start in range(0, points.shape[0], block):
        d = torch.cdist(points[start : start + block], centres)
        out.append((d <= radii).any(dim=1))
    return torch.cat(out)


@one_device
def manifold_precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), k-NN manifolds in Euclidean distance.

    ``precision = (1/M) Σ_j 1[∃i: ‖f_j − r_i‖ ≤ NN_k(r_i)]``,
    ``recall = (1/N) Σ_i 1[∃j: ‖r_i − f_j‖ ≤ NN_k(f_j)]``, where ``NN_k(r_i)`` is the distance from r_i to
    its k-th nearest neighbour among the other real points (likewise for fake). The paper uses k = 3.

    Args:
        real: (N, d) features of real samples, N > k.
        fake: (M, d) features of generated samples, M > k.
        k: neighbourhood size ≥ 1.
        chunk_size: rows per distance block.

    Returns:
        ``(precision, recall)``, float64 scalars in [0, 1].

    Cost: O((N + M)²·d) time; O(chunk_size·max(N, M)) memory (never an (N+M)² matrix).
    """
    check_int(k, "k", 1)
    check_int(chunk_size, "chunk_size", 1)
    check_features(real, "real", min_rows=k + 1)
    check_features(fake, "fake", min_rows=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake must have the same width, got {shape_str(real)} and {shape_str(fake)}"
        )
    check_same_device(("real", real), ("fake", fake))
    r, f = real.detach().to(torch.float64), fake.detach().to(torch.float64)
    r_radius, f_radius = _kth_radius(r, k, chunk_size), _kth_radius(f, k, chunk_size)
    precision = _inside(f, r, r_radius, chunk_size).to(torch.float64).mean()
    recall = _inside(r, f, f_radius, chunk_size).to(torch.float64).mean()
    return precision, recall


@one_device
def adaptive_loss_weight(
    main_loss: Tensor,
    aux_loss: Tensor,
    parameter: Tensor,
    scale: float = 1.0,
    eps: float = 1e-4,
    max_weight: float = 1e8,
) -> Tensor:
    """VA-VAE's adaptive weight ``scale · ‖∇_p L_main‖ / (‖∇_p L_aux‖ + eps)``, clamped, detached.

    Yao et al. 2025 (VA-VAE, eq. 5) balance the vision-foundation loss ``L_vf`` against the
    reconstruction loss ``L_rec`` by the ratio of their gradient norms at the encoder's last layer ``p``
    (the LightningDiT code: ``eps = 1e-4``, clamp to [0, 1e8], then times ``vf_weight``), as the VQGAN
    adaptive GAN weight (Esser et al. 2021) does at the decoder's. Use it as
    ``loss = L_rec + adaptive_loss_weight(L_rec, L_vf, enc.last.weight, w) · L_vf``.

    Both losses must depend on ``parameter`` through a graph; the graph is kept (``retain_graph``) for
    the caller's backward. When ``L_aux`` does not reach ``parameter`` its gradient is 0 and the weight is
    ``scale · ‖∇L_main‖ / eps`` (clamped).

    Args:
        main_loss: scalar (e.g. reconstruction).
        aux_loss: scalar (e.g. mcos + mdms).
        parameter: a leaf tensor both losses depend on (requires_grad).
        scale: the base weight w ≥ 0.
        eps: > 0, added to the auxiliary gradient norm.
        max_weight: upper clamp of the ratio (before ``scale``).

    Returns:
        a detached scalar in the dtype of ``main_loss``. Cost: two backward passes to ``parameter``.
    """
    for name, value in (("main_loss", main_loss), ("aux_loss", aux_loss)):
        if not isinstance(value, Tensor) or value.numel() != 1:
            got = getattr(value, "shape", type(value).__name__)
            raise ValueError(f"{name} must be a scalar tensor, got {got}")
    if not isinstance(parameter, Tensor) or not parameter.requires_grad:
        raise ValueError("parameter must be a tensor that requires grad (e.g. the encoder's last weight)")
    check_positive(float(scale), "scale", allow_zero=True)
    check_positive(float(eps), "eps")
    check_positive(float(max_weight), "max_weight")
    (g_main,) = torch.autograd.grad(main_loss, parameter, retain_graph=True, allow_unused=True)
    (g_aux,) = torch.autograd.grad(aux_loss, parameter, retain_graph=True, allow_unused=True)
    if g_main is None:
        raise ValueError("main_loss does not depend on parameter; pass the layer both losses reach")
    n_aux = g_aux.norm() if g_aux is not None else torch.zeros((), dtype=g_main.dtype, device=g_main.device)
    ratio = (g_main.norm() / (n_aux + eps)).clamp(0.0, max_weight)
    return (ratio * scale).detach().to(main_loss.dtype)
