from __future__ import annotations

import pytest
import torch

import alignkit.functional as AF
from alignkit import losses

# Every objective issue #2 asks for must be buildable by name.
REQUIRED = [
    "repa", "marginal_cosine", "soft_nn_kl", "pair_contrastive", "triplet", "batch_triplet", "nce",
    "info_nce", "clip", "siglip", "supcon", "byol", "subspace_contrastive", "decorrelation",
    "structure", "mdms", "laplacian", "joint",
]  # fmt: skip


def test_every_objective_is_registered() -> None:
    missing = set(REQUIRED) - set(losses.available())
    assert not missing, f"not registered: {sorted(missing)}"


def test_build_rejects_unknown_names_and_arguments() -> None:
    with pytest.raises(ValueError, match=r"unknown loss .nope.; expected one of: .*info_nce"):
        losses.build("nope")
    with pytest.raises(ValueError, match=r"bad arguments for loss .info_nce.*accepted: .*temperature"):
        losses.build("info_nce", tempreature=0.1)


def test_joint_loss_is_the_weighted_sum_and_reports_parts() -> None:
    x, y = torch.randn(12, 5), torch.randn(12, 7)
    joint = losses.JointLoss(
        {"soft_nn_kl": {"weight": 1.0, "temperature": 0.2}, "macro": {"loss": "structure", "weight": 0.5}}
    )
    x8 = torch.randn(12, 7)
    total, parts = joint(x8, y, return_parts=True)
    micro = AF.soft_nn_kl_loss(x8, y, temperature=0.2)
    macro = AF.structure_loss(x8, y)
    torch.testing.assert_close(parts["soft_nn_kl"], micro)
    torch.testing.assert_close(parts["macro"], macro)
    torch.testing.assert_close(total, micro + 0.5 * macro)
    torch.testing.assert_close(joint(x8, y), total)
    # per-term inputs: a term that needs different tensors
    total2 = joint(x8, y, term_inputs={"macro": (x, y)})
    torch.testing.assert_close(total2, micro + 0.5 * AF.structure_loss(x, y))


def test_joint_loss_weights_override_and_modules_as_terms() -> None:
    x, y = torch.randn(10, 4), torch.randn(10, 4)
    joint = losses.JointLoss({"a": losses.build("repa"), "b": losses.build("byol")}, weights={"b": 3.0})
    torch.testing.assert_close(joint(x, y), AF.repa_loss(x, y) + 3.0 * AF.byol_loss(x, y))
    assert "b=3" in repr(joint)


def test_joint_loss_gradients_flow_to_learnable_terms() -> None:
    joint = losses.build("joint", terms={"clip": {"weight": 2.0}, "structure": {"weight": 1.0}})
    x = torch.randn(8, 6, requires_grad=True)
    y = torch.randn(8, 6)
    joint(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert next(joint.terms["clip"].parameters()).grad is not None


def test_joint_loss_bad_configuration() -> None:
    with pytest.raises(ValueError, match="non-empty mapping"):
        losses.JointLoss({})
    with pytest.raises(ValueError, match="weights names unknown term 'c'"):
        losses.JointLoss({"repa": {}}, weights={"c": 1.0})
    with pytest.raises(ValueError, match="unknown loss 'bogus'"):
        losses.JointLoss({"x": {"loss": "bogus"}})
    with pytest.raises(ValueError, match=r"terms\['x'\] must be an nn.Module"):
        losses.JointLoss({"x": 3})
    with pytest.raises(ValueError, match="weight of term 'repa' must be finite"):
        losses.JointLoss({"repa": {"weight": float("nan")}})
    joint = losses.JointLoss({"repa": {}})
    with pytest.raises(ValueError, match="term_inputs names unknown"):
        joint(torch.randn(3, 2), torch.randn(3, 2), term_inputs={"zzz": ()})
