"""A head that maps a representation into k named sub-spaces, one small branch each.

The embedding ``z = [z_1 ‖ z_2 ‖ … ‖ z_k]`` is the concatenation of per-factor sub-spaces, as in
Conditional Similarity Networks (Veit et al. 2017, "Conditional Similarity Networks"), where each
notion of similarity lives in its own block of the embedding. Losses such as
:func:`alignkit.functional.subspace_contrastive_loss` and
:func:`alignkit.functional.decorrelation_loss` act on the blocks; :meth:`SubspaceHead.split` names them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from alignkit.functional._checks import check_int, shape_str

__all__ = ["SubspaceHead"]


class SubspaceHead(nn.Module):
    """One branch per named sub-space; the output is their concatenation, in the mapping's order.

    ``z_i = W_i x + b_i`` (or ``z_i = W'_i ReLU(W_i x + b_i) + b'_i`` when ``hidden_dim`` is given) and
    ``z = [z_1 ‖ … ‖ z_k]`` with ``z_i ∈ R^{d_i}``.

    Args:
        in_dim: input width (> 0).
        subspaces: ``{name: width}`` with widths > 0, e.g. ``{"shape": 16, "color": 16}``; names are
            non-empty strings without ``"."``. Order matters: it is the order of the output blocks.
        hidden_dim: hidden width of each branch (> 0); ``None``: each branch is one Linear.

    ``forward(x (..., in_dim)) → (..., Σ d_i)``; ``split(z (..., Σ d_i)) → {name: (..., d_i)}``.

    Attributes:
        names: the sub-space names, in order.
        widths: their widths ``d_i``.
        out_dim: ``Σ d_i``.
        branches: an :class:`~torch.nn.ModuleDict` of the branches.

    Cost: O(R·in_dim·Σ d_i) time for R rows (O(R·k·h·(in_dim + d̄)) with a hidden width h), O(R·Σ d_i)
    memory.

    Example:
        >>> head = SubspaceHead(128, {"content": 32, "style": 16})
        >>> z = head(torch.randn(8, 128))          # (8, 48)
        >>> parts = head.split(z)                  # {"content": (8, 32), "style": (8, 16)}
    """

    def __init__(self, in_dim: int, subspaces: Mapping[str, int], hidden_dim: int | None = None) -> None:
        super().__init__()
        check_int(in_dim, "in_dim", 1)
        if hidden_dim is not None:
            check_int(hidden_dim, "hidden_dim", 1)
        if not isinstance(subspaces, Mapping) or len(subspaces) == 0:
            raise ValueError(f"subspaces must be a non-empty mapping {{name: width}}, got {subspaces!r}")
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.names: list[str] = []
        self.widths: list[int] = []
        self.branches = nn.ModuleDict()
        for name, width in subspaces.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"subspaces names must be non-empty strings without '.', got {name!r}")
            check_int(width, f"subspaces[{name!r}]", 1, what=" (the sub-space width)")
            branch: nn.Module
            if hidden_dim is None:
                branch = nn.Linear(in_dim, width)
            else:
                branch = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, width))
            try:
                self.branches[name] = branch
            except KeyError as err:  # a name that clashes with an nn.Module attribute
                raise ValueError(f"subspaces name {name!r} cannot be used as a module name: {err}") from None
            self.names.append(name)
            self.widths.append(width)
        self.out_dim = sum(self.widths)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(
                f"x must be a torch.Tensor of shape (..., {self.in_dim}), got {type(x).__name__}"
            )
        if x.dim() < 1 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have shape (..., {self.in_dim}) (in_dim), got {shape_str(x)}")
        return torch.cat([self.branches[name](x) for name in self.names], dim=-1)

    def split(self, z: Tensor) -> dict[str, Tensor]:
        """Cut a ``(..., Σ d_i)`` embedding into its named sub-spaces (views, no copy)."""
        if not isinstance(z, Tensor):
            raise ValueError(
                f"z must be a torch.Tensor of shape (..., {self.out_dim}), got {type(z).__name__}"
            )
        if z.dim() < 1 or z.shape[-1] != self.out_dim:
            raise ValueError(
                f"z must have shape (..., {self.out_dim}) (the sum of the sub-space widths {self.widths}), "
                f"got {shape_str(z)}"
            )
        return dict(zip(self.names, torch.split(z, self.widths, dim=-1), strict=True))

    def extra_repr(self) -> str:
        parts = ", ".join(f"{n}={w}" for n, w in zip(self.names, self.widths, strict=True))
        return f"in_dim={self.in_dim}, subspaces=({parts}), hidden_dim={self.hidden_dim}"
