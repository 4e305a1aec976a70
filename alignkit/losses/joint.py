"""Weighted sums of named alignment objectives: ``λ1·L_micro + λ2·L_macro + …``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from alignkit.losses.registry import build, register

__all__ = ["JointLoss"]


@register("joint")
class JointLoss(nn.Module):
    """Sum of named loss terms with weights, reporting each part.

    ``L = Σ_k λ_k · L_k(*inputs)`` — e.g. a point-to-point term and a structural term
    (``λ1·L_micro + λ2·L_macro``, MISSION §2). Every term receives the same positional and keyword
    inputs unless the call names per-term inputs.

    Args:
        terms: name → either a loss module, or a config mapping
            ``{"loss": registered_name, "weight": λ, **constructor_kwargs}`` (``loss`` defaults to the
            term's name, ``weight`` to 1).
        weights: optional name → λ, overriding weights given in ``terms``.

    Example::

        joint = JointLoss({"soft_nn_kl": {"weight": 1.0, "temperature": 0.1},
                           "structure": {"weight": 0.5}})
        total, parts = joint(x, y, return_parts=True)   # parts: {"soft_nn_kl": …, "structure": …}
    """

    def __init__(
        self,
        terms: Mapping[str, nn.Module | Mapping[str, Any]],
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError(f"terms must be a non-empty mapping of name → loss, got {terms!r}")
        modules: dict[str, nn.Module] = {}
        resolved: dict[str, float] = {}
        for name, spec in terms.items():
            if isinstance(spec, nn.Module):
                modules[name], resolved[name] = spec, 1.0
            elif isinstance(spec, Mapping):
                config = dict(spec)
                resolved[name] = float(config.pop("weight", 1.0))
                modules[name] = build(str(config.pop("loss", name)), **config)
            else:
                raise ValueError(
                    f"terms[{name!r}] must be an nn.Module or a config mapping, got {type(spec).__name__}"
                )
        for name, weight in (weights or {}).items():
            if name not in modules:
                raise ValueError(f"weights names unknown term {name!r}; terms are: {', '.join(modules)}")
            resolved[name] = float(weight)
        for name, weight in resolved.items():
            if not math.isfinite(weight):
                raise ValueError(f"weight of term {name!r} must be finite, got {weight}")
        self.terms = nn.ModuleDict(modules)
        self.weights = resolved

    def forward(
        self,
        *inputs: Any,
        term_inputs: Mapping[str, tuple[Any, ...]] | None = None,
        return_parts: bool = False,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Weighted total; with ``return_parts=True`` also the unweighted value of each term.

        ``term_inputs`` maps a term name to its own positional inputs, for terms that need
        different tensors (e.g. token features for REPA and pooled features for CKA).
        """
        term_inputs = term_inputs or {}
        unknown = set(term_inputs) - set(self.terms)
        if unknown:
            raise ValueError(
                f"term_inputs names unknown term(s) {sorted(unknown)}; terms are: {list(self.terms)}"
            )
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, term in self.terms.items():
            args = term_inputs.get(name, inputs)
            value = term(*args, **({} if name in term_inputs else kwargs))
            if isinstance(value, Mapping):  # modules with output_dict=True
                value = value["loss"]
            parts[name] = value
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        assert total is not None
        return (total, parts) if return_parts else total

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={weight:g}" for name, weight in self.weights.items())
