"""Disentangled contrastive learning: one named sub-space per factor of variation.

An encoder's representation is mapped by a :class:`alignkit.nn.SubspaceHead` into
``z = [z_1 ‖ … ‖ z_k]``, one block per factor. Sub-space i is trained contrastively with the
positives of factor i — two samples that share the value of factor i are positives there, whatever
their other factors (the supervised contrastive loss of Khosla et al. 2020 per sub-space; the
per-factor form of disentangled contrastive learning, Wang et al. 2023) — and an independence
penalty between the blocks keeps each one from carrying the other factors: the cross-sub-space
correlation, or a kernel dependence measure (linear CKA, a normalised HSIC; Gretton et al. 2005).
:meth:`DisentangledContrastive.probe_report` measures the result: how well a linear probe predicts
each factor from each sub-space (high on the diagonal, chance elsewhere when disentangled).
Example::

    model = DisentangledContrastive(encoder, in_dim=256, subspaces={"shape": 16, "color": 16})
    loss = model.loss(view1, view2, factors)          # factors (N, 2): shape id, color id
    model.probe_report(x_tr, f_tr, x_te, f_te)
    # {'shape': {'shape': 0.98, 'color': 0.27}, 'color': {'shape': 0.26, 'color': 0.99}}
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_int,
    check_positive,
    check_same_device,
    shape_str,
)
from alignkit.functional.disentangle import decorrelation_loss, subspace_contrastive_loss
from alignkit.functional.retrieval import linear_probe
from alignkit.functional.similarity import cka
from alignkit.nn.subspace import SubspaceHead

__all__ = ["INDEPENDENCE_PENALTIES", "DisentangledContrastive"]

INDEPENDENCE_PENALTIES = ("correlation", "cka")


class DisentangledContrastive(nn.Module):
    """Per-factor contrastive sub-spaces with an independence penalty, and a probe report.

    With ``z = head(encoder(x))`` split into sub-spaces ``z_1 … z_k`` (widths ``d_i``) and two views
    ``x¹, x²`` of the same N samples::

        L = (1/k) Σ_i L_i(z¹_i, z²_i)  +  λ · R([z¹; z²])

    * ``L_i``: with ``factors`` (N, k), the supervised contrastive loss (Khosla et al. 2020, L_out,
      temperature τ) over the 2N views with labels ``factors[:, i]``: every view of every sample that
      shares factor i is a positive in sub-space i. Without factors, symmetric InfoNCE between the two
      views (only the same sample is positive). See :func:`alignkit.functional.subspace_contrastive_loss`.
    * ``R`` on the 2N stacked views:
      ``"correlation"``: the mean squared correlation between the columns of different sub-spaces
      (:func:`alignkit.functional.decorrelation_loss`);
      ``"cka"``: the mean linear CKA over every pair of sub-spaces,
      ``(2/(k(k−1))) Σ_{i<j} CKA(z_i, z_j)`` — HSIC with linear kernels normalised to [0, 1]
      (Kornblith et al. 2019; Gretton et al. 2005), zero only when the sub-spaces are linearly
      uncorrelated. The biased estimator is used (≥ 0; inflated by about d/N for independent data).

    Args:
        encoder: ``x → (N, in_dim)``; ``None``: the inputs are already (N, in_dim) features.
        in_dim: width of the encoder's output.
        subspaces: ``{factor name: width}``, at least two, in the order of the columns of ``factors``.
        hidden_dim: hidden width of each sub-space branch; ``None``: one Linear per branch.
        temperature: τ > 0 of the contrastive losses.
        independence: ``"correlation"`` | ``"cka"``.
        independence_weight: λ ≥ 0.

    Cost per loss: the encoder on 2N inputs; O(N²·Σd_i) for the contrastive terms; the penalty
    O(N·(Σd_i)²) (correlation) or O(N·Σ_{i<j}(d_i + d_j)²) (cka, feature-space form when N > d).

    Example::

        model = DisentangledContrastive(cnn, 512, {"digit": 16, "style": 16}, independence="cka")
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        loss = model.loss(augment(x), augment(x), torch.stack([digit, style], 1))
    """

    def __init__(
        self,
        encoder: nn.Module | None,
        in_dim: int,
        subspaces: Mapping[str, int],
        hidden_dim: int | None = None,
        temperature: float = 0.1,
        independence: str = "correlation",
        independence_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be a torch.nn.Module or None, got {type(encoder).__name__}")
        check_int(in_dim, "in_dim", 1)
        if not isinstance(subspaces, Mapping) or len(subspaces) < 2:
            raise ValueError(
                f"subspaces must map at least 2 factor names to widths (one sub-space per factor), "
                f"got {subspaces!r}"
            )
        check_positive(float(temperature), "temperature")
        check_choice(independence, "independence", INDEPENDENCE_PENALTIES)
        check_positive(float(independence_weight), "independence_weight", allow_zero=True)
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.in_dim = in_dim
        self.head = SubspaceHead(in_dim, subspaces, hidden_dim)
        self.temperature = float(temperature)
        self.independence = independence
        self.independence_weight = float(independence_weight)

    @property
    def names(self) -> list[str]:
        """The sub-space (factor) names, in order."""
        return list(self.head.names)

    @property
    def widths(self) -> list[int]:
        """The sub-space widths, in order."""
        return list(self.head.widths)

    def forward(self, x: Any) -> Tensor:
        """``z = head(encoder(x))``: (N, Σ d_i), the sub-spaces concatenated in order."""
        if isinstance(self.encoder, nn.Identity):
            check_features(x, "x")
            if x.shape[-1] != self.in_dim:
                raise ValueError(
                    f"x must have shape (N, in_dim={self.in_dim}) when there is no encoder, "
                    f"got {shape_str(x)}"
                )
        h = self.encoder(x)
        if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[-1] != self.in_dim:
            got = shape_str(h) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"the encoder's output must have shape (N, in_dim={self.in_dim}), got {got}")
        return self.head(h)

    def encode(self, x: Any) -> dict[str, Tensor]:
        """``{name: z_i}``, each (N, d_i)."""
        return self.head.split(self(x))

    def independence_loss(self, z: Tensor) -> Tensor:
        """The penalty ``R(z)`` for (N, Σ d_i) embeddings, N ≥ 2 (see the class docstring)."""
        check_features(z, "z", min_rows=2)
        if z.shape[-1] != self.head.out_dim:
            raise ValueError(f"z must have shape (N, {self.head.out_dim}) (Σ d_i), got {shape_str(z)}")
        if self.independence == "correlation":
            return decorrelation_loss(z, self.widths)
        parts = list(self.head.split(z).values())
        pairs = [cka(a, b) for a, b in itertools.combinations(parts, 2)]
        return torch.stack(pairs).mean()

    def _factor_matrix(self, factors: Tensor | Mapping[str, Tensor], rows: int, name: str) -> Tensor:
        """(N, k) integer labels in sub-space order, from a tensor or a ``{name: (N,)}`` mapping."""
        k = len(self.names)
        if isinstance(factors, Mapping):
            if set(factors) != set(self.names):
                raise ValueError(
                    f"{name} as a mapping must have exactly the sub-space names {self.names}, "
                    f"got {list(factors)}"
                )
            columns = []
            for key in self.names:
                col = factors[key]
                if not isinstance(col, Tensor) or col.shape != (rows,):
                    got = shape_str(col) if isinstance(col, Tensor) else type(col).__name__
                    raise ValueError(f"{name}[{key!r}] must have shape ({rows},), got {got}")
                columns.append(col)
            factors = torch.stack(columns, dim=1)
        if not isinstance(factors, Tensor) or factors.shape != (rows, k):
            got = shape_str(factors) if isinstance(factors, Tensor) else type(factors).__name__
            raise ValueError(
                f"{name} must have shape (N, k) = ({rows}, {k}), one column per sub-space {self.names}, "
                f"got {got}"
            )
        if factors.is_floating_point() or factors.is_complex() or factors.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer labels, got dtype {factors.dtype}")
        return factors

    def loss(
        self,
        x1: Any,
        x2: Any,
        factors: Tensor | Mapping[str, Tensor] | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """``(1/k) Σ_i L_i + λ·R`` on two views of N ≥ 2 samples.

        Args:
            x1, x2: two views of the same N samples (inputs of the encoder).
            factors: (N, k) integer labels, column i for sub-space i, or ``{name: (N,)}``; ``None``:
                InfoNCE between views in each sub-space.
            output_dict: return ``{"loss", "contrastive", "independence"}``.
        """
        z1, z2 = self(x1), self(x2)
        if z1.shape != z2.shape:
            raise ValueError(
                f"x1 and x2 must be views of the same N samples, got embeddings {shape_str(z1)} and "
                f"{shape_str(z2)}"
            )
        if z1.shape[0] < 2:
            raise ValueError(f"x1 must hold at least 2 samples for a contrastive loss, got {z1.shape[0]}")
        check_same_device(("x1's embedding", z1), ("x2's embedding", z2))
        labels = None if factors is None else self._factor_matrix(factors, z1.shape[0], "factors")
        if labels is not None and labels.device != z1.device:
            raise ValueError(f"factors is on {labels.device} but the embeddings are on {z1.device}")
        contrastive = subspace_contrastive_loss(z1, z2, self.widths, self.temperature, labels)
        independence = self.independence_loss(torch.cat([z1, z2], dim=0))
        total = contrastive + self.independence_weight * independence
        if output_dict:
            return {"loss": total, "contrastive": contrastive, "independence": independence}
        return total

    @torch.no_grad()
    def probe_report(
        self,
        x_train: Any,
        factors_train: Tensor | Mapping[str, Tensor],
        x_test: Any,
        factors_test: Tensor | Mapping[str, Tensor],
        weight_decay: float = 1e-4,
        max_iter: int = 1000,
    ) -> dict[str, dict[str, float]]:
        """Linear-probe accuracy of every factor from every sub-space.

        The model is run in eval mode (its previous mode restored afterwards) without gradient; for
        each factor f and sub-space s a multinomial logistic regression is fitted on the training
        embeddings ``z_s`` with labels f (:func:`alignkit.functional.linear_probe`) and scored on the
        test set.

        Args:
            x_train, x_test: encoder inputs (N and M samples).
            factors_train, factors_test: (N, k) / (M, k) integer labels, one column per sub-space (the
                factors are named after the sub-spaces), or ``{factor name: (N,)}`` mappings with any
                names (the same names for train and test).
            weight_decay, max_iter: passed to ``linear_probe``.

        Returns:
            ``{factor: {subspace: accuracy}}``; disentangled means high accuracy for a factor from its
            own sub-space and chance (1 / number of classes) from the others.

        Cost: the encoder on N + M inputs and F·k probes of O(max_iter·N·d_s·C) each.
        """
        was_training = self.training
        self.eval()
        try:
            z_train, z_test = self.encode(x_train), self.encode(x_test)
        finally:
            self.train(was_training)
        train = self._named_factors(factors_train, next(iter(z_train.values())).shape[0], "factors_train")
        test = self._named_factors(factors_test, next(iter(z_test.values())).shape[0], "factors_test")
        if list(train) != list(test):
            raise ValueError(
                "factors_train and factors_test must name the same factors, "
                f"got {list(train)} and {list(test)}"
            )
        report: dict[str, dict[str, float]] = {}
        for factor in train:
            report[factor] = {
                space: linear_probe(
                    z_train[space],
                    train[factor].to(z_train[space].device),
                    z_test[space],
                    test[factor].to(z_test[space].device),
                    weight_decay=weight_decay,
                    max_iter=max_iter,
                )
                for space in self.names
            }
        return report

    def _named_factors(
        self, factors: Tensor | Mapping[str, Tensor], rows: int, name: str
    ) -> dict[str, Tensor]:
        if isinstance(factors, Mapping):
            if not factors:
                raise ValueError(f"{name} must name at least one factor, got an empty mapping")
            out = {}
            for key, col in factors.items():
                if not isinstance(col, Tensor) or col.shape != (rows,):
                    got = shape_str(col) if isinstance(col, Tensor) else type(col).__name__
                    raise ValueError(f"{name}[{key!r}] must have shape ({rows},), got {got}")
                out[str(key)] = col
            return out
        matrix = self._factor_matrix(factors, rows, name)
        return {n: matrix[:, i] for i, n in enumerate(self.names)}

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, independence={self.independence!r}, "
            f"independence_weight={self.independence_weight}"
        )
