"""Projection and prediction heads: small MLPs that map a tower's features into an alignment space.

One configurable :class:`ProjectionHead` (depth, width, activation, normalisation) with presets for
the heads used by the systems this library composes:

* :meth:`ProjectionHead.linear` — CLIP's linear projection (Radford et al. 2021);
* :meth:`ProjectionHead.repa` — REPA's Linear-SiLU-Linear-SiLU-Linear projector (Yu et al. 2024);
* :meth:`ProjectionHead.byol` and :class:`PredictionHead` — BYOL's Linear-BN-ReLU-Linear MLPs
  (Grill et al. 2020).

Every head takes features as rows, ``(N, in_dim)``, or tokens, ``(B, T, in_dim)`` (any leading axes);
batch normalisation then normalises over all leading axes flattened together (every token of every
sample is one row).
"""

from __future__ import annotations

from torch import Tensor, nn

from alignkit.functional._checks import check_choice, check_int, shape_str

__all__ = ["ACTIVATIONS", "NORMS", "PredictionHead", "ProjectionHead"]

ACTIVATIONS = ("relu", "gelu", "silu")
NORMS = (None, "batch", "layer")

_ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def _norm_layer(norm: str | None, dim: int) -> nn.Module | None:
    if norm == "batch":
        return nn.BatchNorm1d(dim)
    if norm == "layer":
        return nn.LayerNorm(dim)
    return None


class ProjectionHead(nn.Module):
    """An MLP of ``num_layers`` Linears: ``[Linear → norm → act] × (num_layers − 1) → Linear → last_norm``.

    ``h_0 = x``, ``h_{l} = act(norm(W_l h_{l−1} + b_l))`` for the hidden layers and
    ``y = last_norm(W_L h_{L−1} + b_L)``; ``num_layers=1`` is a single Linear ``y = W x + b``.

    Args:
        in_dim: input width (> 0).
        out_dim: output width (> 0).
        hidden_dim: width of the hidden layers (> 0); ``None``: ``in_dim``. Unused when
            ``num_layers == 1``.
        num_layers: number of Linear layers (≥ 1).
        activation: ``"relu"`` | ``"gelu"`` | ``"silu"``, after each hidden Linear (and its norm).
        norm: ``None`` | ``"batch"`` | ``"layer"``, between each hidden Linear and its activation.
        last_norm: ``None`` | ``"batch"`` | ``"layer"``, applied to the output (e.g. SimSiam / NNCLR
            put a BatchNorm on the projector's output).
        bias: whether the Linear layers have a bias.

    ``forward(x (..., in_dim)) → (..., out_dim)``, in the parameters' dtype. Leading axes are
    flattened into rows and restored afterwards, so ``(B, T, in_dim)`` tokens work with BatchNorm
    (statistics over all ``B·T`` tokens). In training mode BatchNorm needs more than one row.

    Cost: O(R·(in_dim·h + (L−2)·h² + h·out_dim)) time for R rows and hidden width h, O(R·h)
    activation memory.

    Example:
        >>> head = ProjectionHead(768, 256, hidden_dim=1024, num_layers=2, activation="gelu")
        >>> head(torch.randn(4, 768)).shape
        torch.Size([4, 256])
        >>> ProjectionHead.repa(384, 768)(torch.randn(2, 16, 384)).shape   # tokens
        torch.Size([2, 16, 768])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int | None = None,
        num_layers: int = 2,
        activation: str = "relu",
        norm: str | None = None,
        last_norm: str | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_int(in_dim, "in_dim", 1)
        check_int(out_dim, "out_dim", 1)
        if hidden_dim is not None:
            check_int(hidden_dim, "hidden_dim", 1)
        check_int(num_layers, "num_layers", 1)
        check_choice(activation, "activation", ACTIVATIONS)
        check_choice(norm, "norm", NORMS)
        check_choice(last_norm, "last_norm", NORMS)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden_dim = in_dim if hidden_dim is None else hidden_dim
        self.num_layers = num_layers
        self.activation = activation
        self.norm = norm
        self.last_norm = last_norm

        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, self.hidden_dim, bias=bias))
            hidden_norm = _norm_layer(norm, self.hidden_dim)
            if hidden_norm is not None:
                layers.append(hidden_norm)
            layers.append(_ACTIVATION_LAYERS[activation]())
            width = self.hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=bias))
        output_norm = _norm_layer(last_norm, out_dim)
        if output_norm is not None:
            layers.append(output_norm)
        self.layers = nn.Sequential(*layers)

    @classmethod
    def linear(cls, in_dim: int, out_dim: int, bias: bool = False) -> ProjectionHead:
        """CLIP's projection: one Linear layer ``y = W x`` (Radford et al. 2021, "Learning Transferable
        Visual Models From Natural Language Supervision": "we use only a linear projection to map from
        each encoder's representation to the multi-modal embedding space"). CLIP's projection has no
        bias; pass ``bias=True`` for one."""
        return ProjectionHead(in_dim, out_dim, num_layers=1, bias=bias)

    @classmethod
    def repa(cls, in_dim: int, out_dim: int, hidden_dim: int = 2048) -> ProjectionHead:
        """REPA's projector: Linear-SiLU-Linear-SiLU-Linear (Yu et al. 2024, "Representation Alignment
        for Generation: Training Diffusion Transformers Is Easier Than You Think": a three-layer MLP with
        SiLU activations, hidden width 2048), mapping diffusion-transformer tokens to the width of
        the frozen encoder's features."""
        return ProjectionHead(in_dim, out_dim, hidden_dim=hidden_dim, num_layers=3, activation="silu")

    @classmethod
    def byol(cls, in_dim: int, out_dim: int = 256, hidden_dim: int = 4096) -> ProjectionHead:
        """BYOL's projector: Linear-BN-ReLU-Linear (Grill et al. 2020, "Bootstrap Your Own Latent: A New
        Approach to Self-Supervised Learning": "a linear layer with output size 4096 followed by batch
        normalization, rectified linear units (ReLU), and a final linear layer with output dimension
        256")."""
        return ProjectionHead(
            in_dim, out_dim, hidden_dim=hidden_dim, num_layers=2, activation="relu", norm="batch"
        )

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(
                f"x must be a torch.Tensor of shape (..., {self.in_dim}), got {type(x).__name__}"
            )
        if x.dim() < 1 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have shape (..., {self.in_dim}) (in_dim), got {shape_str(x)}")
        lead = x.shape[:-1]
        y = self.layers(x.reshape(-1, self.in_dim))
        return y.reshape(*lead, self.out_dim)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, "
            f"num_layers={self.num_layers}, activation={self.activation!r}, norm={self.norm!r}, "
            f"last_norm={self.last_norm!r}"
        )


class PredictionHead(ProjectionHead):
    """BYOL's predictor ``q_θ``: Linear-BN-ReLU-Linear on top of the online projection.

    Grill et al. 2020, "Bootstrap Your Own Latent": the predictor q_θ has the projector g_θ's
    architecture — a Linear of width ``hidden_dim`` (4096), BatchNorm, ReLU, and a Linear back to
    ``out_dim`` (default ``dim``, the projection width, 256 in the paper). The online branch predicts
    the target projection, ``loss = byol_loss(q_θ(z_θ), z'_ξ)``.

    Args:
        dim: input width (the projection width).
        hidden_dim: hidden width.
        out_dim: output width; ``None``: ``dim`` (so the prediction lives where the target does).

    ``forward(x (..., dim)) → (..., out_dim)``. Cost as :class:`ProjectionHead`.

    Example:
        >>> predictor = PredictionHead(256, hidden_dim=1024)
        >>> predictor(torch.randn(8, 256)).shape
        torch.Size([8, 256])
    """

    def __init__(self, dim: int, hidden_dim: int = 4096, out_dim: int | None = None) -> None:
        check_int(dim, "dim", 1)
        super().__init__(
            dim,
            dim if out_dim is None else out_dim,
            hidden_dim=hidden_dim,
            num_layers=2,
            activation="relu",
            norm="batch",
        )
