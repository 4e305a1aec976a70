"""Tensors on two devices: every public functional refuses them with a ``ValueError`` naming the devices,
*before* the finiteness scan calls ``.item()`` (which raised RuntimeError / NotImplementedError before).

No GPU here: one argument lives on the ``meta`` device, where any ``.item()`` fails — so a functional
that scanned values before comparing devices fails this test with a non-ValueError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import alignkit.functional as AF

N, D = 12, 4


def _t(device: str, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    if dtype.is_floating_point:
        return torch.randn(*shape, dtype=dtype, device="cpu").to(device)
    return (torch.arange(shape[0]) % 3).to(device)


# name -> call(dev_first, dev_second): the first tensor argument on dev_first, another one on dev_second.
CALLS: dict[str, Callable[[str, str], object]] = {
    "clip_loss": lambda a, b: AF.clip_loss(_t(a, N, D), _t(b, N, D), 10.0),
    "info_nce": lambda a, b: AF.info_nce(_t(a, N, D), _t(b, N, D)),
    "supcon_loss": lambda a, b: AF.supcon_loss(_t(a, N, D), _t(b, N, dtype=torch.long)),
    "memory_projection": lambda a, b: AF.memory_projection(_t(a, N, D), _t(b, N, D)),
    "nearest_candidates": lambda a, b: AF.nearest_candidates(_t(a, N, D), _t(b, N, D)),
    "subspace_contrastive_loss": lambda a, b: AF.subspace_contrastive_loss(_t(a, N, D), _t(b, N, D), 2),
    "batch_triplet_loss": lambda a, b: AF.batch_triplet_loss(_t(a, N, D), _t(b, N, dtype=torch.long)),
    "byol_loss": lambda a, b: AF.byol_loss(_t(a, N, D), _t(b, N, D)),
    "marginal_cosine_loss": lambda a, b: AF.marginal_cosine_loss(_t(a, N, D), _t(b, N, D)),
    "nce_loss": lambda a, b: AF.nce_loss(_t(a, N, D), _t(b, N, D), _t(b, N, 3, D)),
    "pair_contrastive_loss": lambda a, b: AF.pair_contrastive_loss(
        _t(a, N, D), _t(b, N, D), (torch.arange(N) % 2 == 0).to(b)
    ),
    "repa_loss": lambda a, b: AF.repa_loss(_t(a, N, D), _t(b, N, D)),
    "soft_nn_kl_loss": lambda a, b: AF.soft_nn_kl_loss(_t(a, N, D), _t(b, N, D)),
    "triplet_loss": lambda a, b: AF.triplet_loss(_t(a, N, D), _t(b, N, D), _t(b, N, D)),
    "cknna": lambda a, b: AF.cknna(_t(a, N, D), _t(b, N, D), k=3),
    "csls": lambda a, b: AF.csls(_t(a, N, D), _t(b, N, D), k=3),
    "csls_retrieve": lambda a, b: AF.csls_retrieve(_t(a, N, D), _t(b, N, D), k=3),
    "knn": lambda a, b: AF.knn(_t(a, N, D), 3, _t(b, N, D)),
    "mutual_knn": lambda a, b: AF.mutual_knn(_t(a, N, D), _t(b, N, D), k=3),
    "alignment_uniformity": lambda a, b: AF.alignment_uniformity(_t(a, N, D), _t(b, N, D)),
    "linear_probe": lambda a, b: AF.linear_probe(
        _t(a, N, D), _t(b, N, dtype=torch.long), _t(a, N, D), _t(a, N, dtype=torch.long), max_iter=5
    ),
    "recall_at_k": lambda a, b: AF.recall_at_k(_t(a, N, D), _t(b, N, D), k=1),
    "ridge_fit": lambda a, b: AF.ridge_fit(_t(a, N, D), _t(b, N, D), 0.1),
    "procrustes_fit": lambda a, b: AF.procrustes_fit(_t(a, N, D), _t(b, N, D), scale=True),
    "ridge_gcv": lambda a, b: AF.ridge_gcv(_t(a, N, D), _t(b, N, D)),
    "ridge_kfold": lambda a, b: AF.ridge_kfold(_t(a, N, D), _t(b, N, D), folds=3),
    "paired_distance": lambda a, b: AF.paired_distance(_t(a, N, D), _t(b, N, D)),
    "pairwise_distance": lambda a, b: AF.pairwise_distance(_t(a, N, D), _t(b, N, D)),
    "score": lambda a, b: AF.score(_t(a, N, D), _t(b, N, D)),
    "canonical_correlations": lambda a, b: AF.canonical_correlations(_t(a, N, D), _t(b, N, D)),
    "cka": lambda a, b: AF.cka(_t(a, N, D), _t(b, N, D)),
    "cka_from_cross_covariance": lambda a, b: AF.cka_from_cross_covariance(
        _t(a, D, D), _t(b, D, D), _t(b, D, D)
    ),
    "hsic_from_kernel_sums": lambda a, b: AF.hsic_from_kernel_sums(_t(a, 1)[0], _t(b, N), _t(a, N), N, True),
    "procrustes_distance": lambda a, b: AF.procrustes_distance(_t(a, N, D), _t(b, N, D)),
    "pwcca": lambda a, b: AF.pwcca(_t(a, N, D), _t(b, N, D)),
    "rsa": lambda a, b: AF.rsa(_t(a, N, D), _t(b, N, D)),
    "svcca": lambda a, b: AF.svcca(_t(a, N, D), _t(b, N, D)),
    "laplacian_loss": lambda a, b: AF.laplacian_loss(_t(a, N, D), torch.ones(N, N, device=b)),
    "mdms_loss": lambda a, b: AF.mdms_loss(_t(a, N, D), _t(b, N, D)),
    "structure_loss": lambda a, b: AF.structure_loss(_t(a, N, D), _t(b, N, D)),
    "nt_xent_loss": lambda a, b: AF.nt_xent_loss(_t(a, N, D), _t(b, N, D)),
    "topk_overlap": lambda a, b: AF.topk_overlap(
        torch.randint(0, N, (N, 3)).to(a), torch.randint(0, N, (N, 3)).to(b)
    ),
    "bootstrap_interval": lambda a, b: AF.bootstrap_interval(AF.cka, _t(a, N, D), _t(b, N, D), resamples=5),
    "permutation_test": lambda a, b: AF.permutation_test(AF.cka, _t(a, N, D), _t(b, N, D), permutations=5),
    "frechet_distance": lambda a, b: AF.frechet_distance(_t(a, N, D), _t(b, N, D)),
    "frechet_distance_from_moments": lambda a, b: AF.frechet_distance_from_moments(
        _t(a, D), torch.eye(D, device=a), _t(b, D), torch.eye(D, device=b)
    ),
    "linear_interpolant": lambda a, b: AF.linear_interpolant(
        _t(a, N, D), _t(b, N, D), torch.rand(N, device="cpu").to(a)
    ),
    "manifold_precision_recall": lambda a, b: AF.manifold_precision_recall(_t(a, N, D), _t(b, N, D), k=3),
    "adaptive_loss_weight": lambda a, b: _adaptive_loss_weight(a, b),
    "sample_hard_negatives": lambda a, b: AF.sample_hard_negatives(
        _t(a, N, N), torch.eye(N, dtype=torch.bool, device=b)
    ),
    "rerank_top_k": lambda a, b: AF.rerank_top_k(torch.randperm(N).repeat(N, 1).to(a), _t(b, N, 3)),
    "reranked_recall_at_k": lambda a, b: AF.reranked_recall_at_k(
        torch.randperm(N).repeat(N, 1).to(a), _t(b, N, 3), *[torch.arange(N, device=b)] * 2, k=1
    ),
}


def _adaptive_loss_weight(a: str, b: str) -> object:
    """The losses are scalars (a 0-dim CPU tensor may sit beside any device, as in torch), so the mismatch
    is a scalar on ``meta`` against the CPU parameter."""
    p = torch.randn(3, requires_grad=True)
    main = (p**2).sum() if a == "cpu" else torch.zeros((), device=a)
    aux = (p * 3).sum() if b == "cpu" else torch.zeros((), device=b)
    return AF.adaptive_loss_weight(main, aux, p)


def _tensor_parameters(fn: Callable[..., object]) -> int:
    return sum("Tensor" in str(p.annotation) for p in inspect.signature(fn).parameters.values())


def test_every_two_tensor_functional_is_covered() -> None:
    """A new public functional taking two or more tensors must be added to CALLS."""
    public = {
        name
        for name in AF.__all__
        if inspect.isfunction(getattr(AF, name)) and _tensor_parameters(getattr(AF, name)) >= 2
    }
    assert public - set(CALLS) == set()
    assert set(CALLS) - set(AF.__all__) == set()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("meta_first", [False, True], ids=["second_on_meta", "first_on_meta"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_device_mismatch_is_a_value_error_before_any_scan(name: str, meta_first: bool) -> None:
    call = CALLS[name]
    call("cpu", "cpu")  # the call itself is valid on one device
    devices = ("meta", "cpu") if meta_first else ("cpu", "meta")
    with pytest.raises(ValueError, match=r"one device.*(cpu.*meta|meta.*cpu)"):
        call(*devices)


def test_zero_dim_cpu_tensor_may_sit_beside_others() -> None:
    """As torch allows: a 0-dim CPU logit scale with (here: CPU) features is never a mismatch."""
    a = torch.nn.functional.normalize(torch.randn(N, D), dim=1)
    assert torch.isfinite(AF.clip_loss(a, a, torch.tensor(10.0)))
