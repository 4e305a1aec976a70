"""Cosine-based losses and metrics are exact at any finite magnitude: |x| = 1e20 (‖x‖² overflows float32)
and |x| = 1e-20 (‖x‖ falls below the EPS clamp) give the result of the unscaled input.

Before the scaled normalisation (``alignkit.functional._checks.l2_normalize``) every case below failed:
chance-level mutual kNN, CKNNA 0, InfoNCE = log N, cosine distances of 1.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import alignkit.functional as AF
from alignkit.functional._checks import l2_normalize

_LABELS = torch.arange(32) % 4


def _values(out: object) -> Tensor:
    if isinstance(out, dict):
        return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in out.values()])
    if not isinstance(out, Tensor) and hasattr(out, "indices"):  # Neighbors
        return torch.cat([out.indices.double().flatten(), out.values.double().flatten()])
    out = torch.as_tensor(out)
    return (out.to_dense() if out.is_sparse else out).double()


# Every public functional whose value depends on its inputs only through cosines (so it is invariant to a
# common positive scale). clip_loss is not here: it takes already-normalised inputs (documented).
CASES: dict[str, Callable[[Tensor, Tensor, Tensor], object]] = {
    "info_nce": lambda a, b, c: AF.info_nce(a, b),
    "info_nce_negatives": lambda a, b, c: AF.info_nce(a, b, negatives=c, symmetric=False),
    "supcon_loss": lambda a, b, c: AF.supcon_loss(a, _LABELS),
    "nt_xent_loss": lambda a, b, c: AF.nt_xent_loss(a, b),
    "soft_nn_kl_loss": lambda a, b, c: AF.soft_nn_kl_loss(a, b),
    "repa_loss": lambda a, b, c: AF.repa_loss(a, b),
    "marginal_cosine_loss": lambda a, b, c: AF.marginal_cosine_loss(a, b, margin=0.1),
    "byol_loss": lambda a, b, c: AF.byol_loss(a, b),
    "subspace_contrastive_loss": lambda a, b, c: AF.subspace_contrastive_loss(a, b, 2),
    "structure_loss": lambda a, b, c: AF.structure_loss(a, b),
    "mdms_loss": lambda a, b, c: AF.mdms_loss(a, b),
    "mutual_knn": lambda a, b, c: AF.mutual_knn(a, b, k=5),
    "cknna": lambda a, b, c: AF.cknna(a, b, k=5),
    "csls": lambda a, b, c: AF.csls(a, b, k=5),
    "csls_retrieve": lambda a, b, c: AF.csls_retrieve(a, b, k=5, topk=2),
    "knn": lambda a, b, c: AF.knn(a, 3, b),
    "knn_graph": lambda a, b, c: AF.knn_graph(a, k=3),
    "recall_at_k": lambda a, b, c: AF.recall_at_k(a, b, k=(1, 5), metric="cosine"),
    "alignment_uniformity": lambda a, b, c: AF.alignment_uniformity(a, b),
    "memory_projection": lambda a, b, c: AF.memory_projection(a, b),
    "nearest_candidates": lambda a, b, c: AF.nearest_candidates(a, b),
    "noise_injection": lambda a, b, c: AF.noise_injection(a, 0.0),
    "pairwise_distance": lambda a, b, c: AF.pairwise_distance(a, b, metric="cosine"),
    "paired_distance": lambda a, b, c: AF.paired_distance(a, b, metric="cosine"),
    "score": lambda a, b, c: AF.score(a, b, kind="cosine"),
    "triplet_loss": lambda a, b, c: AF.triplet_loss(a, b, c, distance="cosine"),
    "pair_contrastive_loss": lambda a, b, c: AF.pair_contrastive_loss(
        a, b, _LABELS % 2 == 0, margin=0.5, distance="cosine"
    ),
    "batch_triplet_loss": lambda a, b, c: AF.batch_triplet_loss(a, _LABELS, distance="cosine"),
    "rsa": lambda a, b, c: AF.rsa(a, b),
}


@pytest.mark.parametrize("scale", [1e20, 1e-20])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cosine_functionals_exact_at_extreme_magnitudes(name: str, scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    y = x + 0.5 * torch.randn(32, 8, generator=g)
    z = torch.randn(32, 8, generator=g)
    call = CASES[name]
    reference = _values(call(x.double(), y.double(), z.double()))  # float64, unscaled
    scaled = _values(call(x * scale, y * scale, z * scale))  # float32, |x| ~ 1e20 or 1e-20
    assert torch.isfinite(scaled).all()
    torch.testing.assert_close(scaled, reference, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("scale", [1.0, 1e20, 1e-20, 1e-38])
def test_l2_normalize_is_exact_and_keeps_zero_rows(scale: float) -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]) * scale
    out = l2_normalize(x)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]))


def test_l2_normalize_gradient_matches_the_plain_formula() -> None:
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: l2_normalize(t), (x,))
    weight = torch.randn(5, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad((l2_normalize(x) * weight).sum(), x)
    (plain,) = torch.autograd.grad((x / x.norm(dim=1, keepdim=True) * weight).sum(), x)
    torch.testing.assert_close(grad, plain)


def test_structure_loss_gradient_exact_for_tiny_rows() -> None:
    """The custom backward of structure_loss follows the scaled normalisation (no EPS cut-off)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    y = torch.randn(6, 4, dtype=torch.float64, generator=g)
    xs = (x * 1e-12).requires_grad_()
    (grad_small,) = torch.autograd.grad(AF.structure_loss(xs, y), xs)
    xr = x.clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(AF.structure_loss(xr, y), xr)
    torch.testing.assert_close(grad_small * 1e-12, grad_ref)  # d/d(sx) = (1/s)·d/dx
