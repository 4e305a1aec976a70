"""REPA: align the hidden tokens of one block of a model with a frozen encoder's features.

Yu et al. 2024, "Representation Alignment for Generation: Training Diffusion Transformers Is Easier
Than You Think" (REPA): the hidden tokens ``h`` of an early block of the model being trained are
projected by a small MLP ``h_φ`` to the width of a frozen, pretrained encoder (DINOv2) and pulled
towards its patch features ``y*`` token by token,

    ``L_REPA = −(1/N) Σ_n cos(y*_n, h_φ(h_n))``,

added to the model's own loss with weight λ (0.5 in the paper). Yao et al. 2025, "Reconstruction vs.
Generation: Taming Optimization Dilemma in Latent Diffusion Models" (VA-VAE) align a VAE latent with a
frozen foundation model through two margin losses instead: a marginal cosine term (mcos, margin
m₁ = 0.5) and a marginal distance-matrix term (mdms, margin m₂ = 0.25).

:class:`REPARegularizer` wraps any ``nn.Module``: it hooks the named block (a forward hook, as
:class:`alignkit.nn.FeatureExtractor`), keeps the block's output of the last forward pass, and
``loss(target)`` returns the weighted alignment loss. Only the hooked block and the blocks before it
receive gradient from the regulariser; its own parameters are the projector's only. Example::

    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, batch_first=True), 4)
    reg = REPARegularizer(model, "layers.1", target_dim=384, hidden_dim=512)
    out = model(x)                                   # (B, 256, 64); the hook keeps layers.1's tokens
    with torch.no_grad():
        target = frozen_encoder(images)              # (B, 256, 384), or (B, T', 384): resampled
    loss = task_loss(out) + reg.loss(target)         # λ · repa_loss
    reg.remove()                                     # or use ``with REPARegularizer(...) as reg:``
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_int,
    check_positive,
    check_same_device,
    compute_dtype,
    shape_str,
)
from alignkit.functional.losses import marginal_cosine_loss, repa_loss
from alignkit.functional.structural import mdms_loss
from alignkit.nn.features import _first_tensor
from alignkit.nn.heads import ProjectionHead

__all__ = ["REPA_FORMS", "REPARegularizer", "resample_tokens"]

REPA_FORMS = ("repa", "vavae")


def _as_tokens(x: Tensor, name: str) -> Tensor:
    """(B, T, d) as is; a channels-first map (B, C, H, W) (or (B, C, D, H, W)) as (B, H·W, C) tokens."""
    if isinstance(x, Tensor) and x.dim() >= 4:
        return x.flatten(2).transpose(1, 2)
    check_features(x, name, ndim=3, finite=False)
    return x


def resample_tokens(tokens: Tensor, num_tokens: int) -> Tensor:
    """Resample a token sequence (B, T', d) to (B, T, d) by interpolation along the tokens.

    * T' = T: returned unchanged.
    * T' and T both perfect squares: the tokens are taken as a row-major ``√T' × √T'`` grid (ViT /
      DiT patch order) and resized to ``√T × √T`` by bilinear interpolation
      (``F.interpolate(mode="bilinear", align_corners=False)``, no antialiasing), then flattened back in
      row-major order.
    * otherwise: 1-D linear interpolation along the sequence
      (``F.interpolate(mode="linear", align_corners=False)``).

    Prefix tokens (a CLS token, registers) must be removed before: they have no place on the grid.
    Half precision is interpolated in float32 and returned in the input's dtype.

    Args:
        tokens: (B, T', d).
        num_tokens: T ≥ 1.

    Returns:
        (B, T, d). Time and memory O(B·T·d).
    """
    check_features(tokens, "tokens", ndim=3, finite=False)
    check_int(num_tokens, "num_tokens", 1)
    batch, have, width = tokens.shape
    if have == num_tokens:
        return tokens
    if have == 0:
        raise ValueError(f"tokens must have at least one token to resample, got shape {shape_str(tokens)}")
    x = tokens.to(compute_dtype(tokens)).transpose(1, 2)  # (B, d, T')
    side_in, side_out = math.isqrt(have), math.isqrt(num_tokens)
    if side_in * side_in == have and side_out * side_out == num_tokens:
        grid = x.reshape(batch, width, side_in, side_in)
        out = F.interpolate(grid, size=(side_out, side_out), mode="bilinear", align_corners=False)
        out = out.flatten(2)
    else:
        out = F.interpolate(x, size=num_tokens, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(tokens.dtype)


def _infer_width(module: nn.Module) -> int | None:
    """The output width of a block, read from its last width-defining sub-module (in registration
    order): a Linear, LayerNorm, convolution, GroupNorm, Embedding or MultiheadAttention."""
    for m in reversed(list(module.modules())):
        if isinstance(m, nn.Linear):
            return m.out_features
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            return int(m.normalized_shape[0])
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.out_channels
        if isinstance(m, nn.GroupNorm):
            return m.num_channels
        if isinstance(m, nn.Embedding):
            return m.embedding_dim
        if isinstance(m, nn.MultiheadAttention):
            return m.embed_dim
    return None


class REPARegularizer(nn.Module):
    """λ·(REPA or VA-VAE) alignment of one hooked block's tokens with frozen encoder features.

    ``form="repa"`` (Yu et al. 2024, REPA)::

        L = λ · repa_loss(h_φ(h), y*) = −λ · mean_{b,n} cos(h_φ(h_{b,n}), y*_{b,n})

    ``form="vavae"`` (Yao et al. 2025, VA-VAE, with margins ``(m₁, m₂)`` and weights ``(w₁, w₂)``)::

        L = λ · ( w₁ · mean_{b,n} ReLU(1 − m₁ − cos(h_φ(h_{b,n}), y*_{b,n}))            (mcos)
                + w₂ · mean_b (1/T²) Σ_ij ReLU(|cos(ĥ_i, ĥ_j) − cos(y*_i, y*_j)| − m₂) )  (mdms)

    where ``h`` (B, T, d_model) are the tokens the block ``layer`` of ``model`` returned in the last
    forward pass, ``h_φ`` the projector and ``y*`` (B, T, target_dim) the frozen encoder's features.
    VA-VAE projects the latent linearly (``hidden_dim=None``); REPA uses ``ProjectionHead.repa``, a
    Linear-SiLU-Linear-SiLU-Linear MLP (``hidden_dim=2048`` in the paper).

    Hooked output: the first tensor the block returns (a tuple's first element, a mapping's first
    value), batch first: (B, T, d_model) tokens, or a channels-first map (B, C, H, W) taken as
    (B, H·W, C) tokens. ``num_prefix_tokens`` leading tokens (CLS, registers) are dropped before the
    projection. If the block runs several times in one forward, the last run is kept.

    Target: (B, T', target_dim) features (or a (B, target_dim, H, W) map, flattened to tokens in
    row-major order), computed by the caller from a frozen encoder and **detached** here (stop-gradient).
    Token counts must match or are resampled to the model's T by :func:`resample_tokens`: bilinear on
    a square grid when T' and T are both perfect squares, else linear along the sequence.

    Gradient: the loss depends only on the hooked output, so the blocks after ``layer`` receive no
    gradient from it and the blocks up to it do. The regulariser's parameters are the projector's
    only; ``model`` is *not* registered as a sub-module (``reg.parameters()`` / ``reg.state_dict()`` /
    ``reg.to()`` concern the projector): optimise ``[*model.parameters(), *reg.parameters()]``.

    Args:
        model: any ``nn.Module``.
        layer: the name of the block in ``model.named_modules()`` (``""`` is the model itself).
        target_dim: width of the frozen encoder's features.
        hidden_dim: projector hidden width (``ProjectionHead.repa``); ``None``: a linear projection.
        weight: λ ≥ 0 (REPA: 0.5).
        form: ``"repa"`` | ``"vavae"``.
        margins: ``(m₁, m₂)`` of the VA-VAE form, m₁ ∈ [0, 2), m₂ ≥ 0 (VA-VAE: 0.5, 0.25).
        vavae_weights: ``(w₁, w₂)`` ≥ 0 of the mcos and mdms terms.
        source_dim: width d_model of the hooked tokens; ``None``: read from the block's last Linear /
            LayerNorm / convolution (checked against the tokens at the first loss).
        num_prefix_tokens: leading tokens of the hooked output to drop (≥ 0).

    Cost per ``loss``: the projector, O(B·T·(d_model·h + h² + h·target_dim)); ``"repa"`` O(B·T·target_dim),
    ``"vavae"`` O(B·T²·target_dim) time and O(B·block·T + B·T·target_dim) memory for mdms. The hook
    keeps one (B, T, d_model) output (with its graph) until ``loss`` or the next forward.

    Example::

        with REPARegularizer(sit, "blocks.7", target_dim=768, weight=0.5) as reg:
            opt = torch.optim.AdamW([*sit.parameters(), *reg.parameters()], lr=1e-4)
            pred = sit(x_t, t, y)
            with torch.no_grad():
                target = dinov2(images)[:, 1:]          # patch tokens, CLS dropped
            loss = F.mse_loss(pred, v) + reg.loss(target)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        target_dim: int,
        hidden_dim: int | None = 2048,
        weight: float = 0.5,
        form: str = "repa",
        margins: Sequence[float] = (0.5, 0.25),
        vavae_weights: Sequence[float] = (1.0, 1.0),
        source_dim: int | None = None,
        num_prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(layer, str):
            raise ValueError(f"layer must be a sub-module name (str), got {layer!r}")
        modules = dict(model.named_modules())
        if layer not in modules:
            close = difflib.get_close_matches(layer, list(modules), n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            some = [n for n in modules if n][:8]
            raise ValueError(
                f"layer: {type(model).__name__} has no sub-module {layer!r}{hint} "
                f"(names as in model.named_modules(), e.g. {', '.join(repr(n) for n in some)})"
            )
        check_int(target_dim, "target_dim", 1)
        if hidden_dim is not None:
            check_int(hidden_dim, "hidden_dim", 1)
        check_positive(float(weight), "weight", allow_zero=True)
        check_choice(form, "form", REPA_FORMS)
        m1, m2 = self._pair(margins, "margins")
        check_positive(m1, "margins[0] (m1, the mcos margin)", allow_zero=True)
        if not m1 < 2.0:
            raise ValueError(f"margins[0] (m1, the mcos margin) must be in [0, 2), got {m1}")
        check_positive(m2, "margins[1] (m2, the mdms margin)", allow_zero=True)
        w1, w2 = self._pair(vavae_weights, "vavae_weights")
        check_positive(w1, "vavae_weights[0]", allow_zero=True)
        check_positive(w2, "vavae_weights[1]", allow_zero=True)
        if form == "vavae" and w1 == 0 and w2 == 0:
            raise ValueError(f"vavae_weights must not both be 0, got {(w1, w2)}")
        check_int(num_prefix_tokens, "num_prefix_tokens", 0)
        inferred = source_dim is None
        if inferred:
            source_dim = _infer_width(modules[layer])
            if source_dim is None:
                raise ValueError(
                    f"source_dim: cannot read the output width of layer {layer!r} "
                    f"({type(modules[layer]).__name__}) from its sub-modules; pass source_dim=d_model"
                )
        check_int(source_dim, "source_dim", 1)

        self.layer = layer
        self.source_dim = int(source_dim)  # type: ignore[arg-type]
        self.target_dim = target_dim
        self.hidden_dim = hidden_dim
        self.weight = float(weight)
        self.form = form
        self.margins = (m1, m2)
        self.vavae_weights = (w1, w2)
        self.num_prefix_tokens = num_prefix_tokens
        self._source_dim_inferred = inferred
        if hidden_dim is None:
            self.projector = ProjectionHead.linear(self.source_dim, target_dim, bias=True)
        else:
            self.projector = ProjectionHead.repa(self.source_dim, target_dim, hidden_dim=hidden_dim)
        # Not a registered sub-module: the caller owns and optimises the model.
        self.__dict__["model"] = model
        self._tokens: Tensor | None = None
        self._handle: Any = modules[layer].register_forward_hook(self._hook)

    @staticmethod
    def _pair(values: Sequence[float], name: str) -> tuple[float, float]:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 2:
            raise ValueError(f"{name} must be a pair of numbers (a, b), got {values!r}")
        try:
            return float(values[0]), float(values[1])
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a pair of numbers (a, b), got {values!r}") from None

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._tokens = _first_tensor(output, self.layer)

    @property
    def active(self) -> bool:
        """Whether the hook is still on the model."""
        return self._handle is not None

    def tokens(self) -> Tensor:
        """The hooked block's tokens of the last forward pass, (B, T, d_model), prefix tokens dropped."""
        if self._handle is None:
            raise ValueError("this REPARegularizer's hook was removed; create a new one")
        if self._tokens is None:
            raise ValueError(
                f"layer {self.layer!r} has not run since the last loss(): call the model's forward "
                "before reg.loss(target)"
            )
        raw = self._tokens
        h = _as_tokens(raw, f"the output of layer {self.layer!r}")
        if h.shape[-1] != self.source_dim:
            how = " (inferred from the block's last Linear/LayerNorm)" if self._source_dim_inferred else ""
            raise ValueError(
                f"source_dim={self.source_dim}{how} does not match layer {self.layer!r}'s output "
                f"{shape_str(raw)} of width {h.shape[-1]}; pass source_dim={h.shape[-1]}"
            )
        if h.shape[1] <= self.num_prefix_tokens:
            raise ValueError(
                f"num_prefix_tokens={self.num_prefix_tokens} leaves no token of layer {self.layer!r}'s "
                f"output {shape_str(raw)}"
            )
        return h[:, self.num_prefix_tokens :]

    def project(self, tokens: Tensor) -> Tensor:
        """``h_φ(tokens)``: (B, T, d_model) → (B, T, target_dim), computed in the projector's dtype."""
        param = next(self.projector.parameters())
        if tokens.device != param.device:
            raise ValueError(
                f"the hooked tokens are on {tokens.device} but the projector is on {param.device}; "
                "call reg.to(device)"
            )
        return self.projector(tokens.to(param.dtype))

    def _target(self, target: Tensor, h: Tensor) -> Tensor:
        """Validate the target against the hooked tokens h (B, T, ·); detach, flatten, resample to T."""
        batch, num_tokens = h.shape[0], h.shape[1]
        if isinstance(target, Tensor) and target.dim() >= 4:
            if target.shape[1] != self.target_dim:
                raise ValueError(
                    "target as a channels-first map must have shape "
                    f"(B, target_dim={self.target_dim}, H, W), got {shape_str(target)}"
                )
            target = target.flatten(2).transpose(1, 2)
        check_features(target, "target", ndim=3)
        if target.shape[0] != batch or target.shape[-1] != self.target_dim:
            raise ValueError(
                f"target must have shape (B={batch}, T', target_dim={self.target_dim}), "
                f"got {shape_str(target)}"
            )
        if target.shape[1] == 0:
            raise ValueError(f"target must have at least one token, got shape {shape_str(target)}")
        check_same_device(("the hooked tokens", h), ("target", target))
        return resample_tokens(target.detach(), num_tokens)

    def loss(self, target: Tensor) -> Tensor:
        """λ · the alignment loss between the tokens of the last forward pass and ``target``.

        Args:
            target: (B, T', target_dim) frozen features (detached here); resampled to T tokens when
                T' ≠ T (see :func:`resample_tokens`).

        Returns:
            a scalar, in the promoted dtype of the projector and the target. The captured tokens are
            released afterwards (a second call needs a new forward pass).
        """
        h = self.tokens()
        target = self._target(target, h)
        self._tokens = None
        projected = self.project(h)
        if self.form == "repa":
            value = repa_loss(projected, target)
        else:
            (m1, m2), (w1, w2) = self.margins, self.vavae_weights
            value = w1 * marginal_cosine_loss(projected, target, margin=m1) + w2 * mdms_loss(
                projected, target, margin=m2
            )
        return self.weight * value

    def forward(self, inputs: Any, target: Tensor, **kwargs: Any) -> tuple[Any, Tensor]:
        """Run ``model(inputs, **kwargs)`` (a tuple / list ``inputs`` is unpacked as positional
        arguments) and return ``(model output, self.loss(target))``."""
        if self._handle is None:
            raise ValueError("this REPARegularizer's hook was removed; create a new one")
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        self._tokens = None
        output = self.model(*args, **kwargs)
        return output, self.loss(target)

    def remove(self) -> None:
        """Take the hook off the model and release the captured tokens (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._tokens = None

    def __enter__(self) -> REPARegularizer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def extra_repr(self) -> str:
        text = (
            f"layer={self.layer!r}, source_dim={self.source_dim}, target_dim={self.target_dim}, "
            f"hidden_dim={self.hidden_dim}, weight={self.weight}, form={self.form!r}"
        )
        if self.form == "vavae":
            text += f", margins={self.margins}, vavae_weights={self.vavae_weights}"
        if self.num_prefix_tokens:
            text += f", num_prefix_tokens={self.num_prefix_tokens}"
        return text + ("" if self.active else ", removed")
