"""Capture the outputs of named intermediate layers with forward hooks.

from alignkit.nn import FeatureExtractor
with FeatureExtractor(bert, ["embeddings", "encoder.layer.5"]) as extract:
    feats = extract(input_ids=ids, attention_mask=am, mask=am)   # {"embeddings": (B, 384), ...}
# hooks removed here
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from torch import Tensor, nn

__all__ = ["FLATTEN_MODES", "FeatureExtractor", "reduce_features"]

FLATTEN_MODES = ("mean", "flatten", "cls", "none")


def _shape(x: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def _first_tensor(output: Any, layer: str) -> Tensor:
    """The tensor a module returned: itself, the first element of a tuple / list (HF blocks,
    ``nn.MultiheadAttention``, ``nn.LSTM``), or the first value of a mapping (HF ``ModelOutput``)."""
    seen = output
    while not isinstance(seen, Tensor):
        if isinstance(seen, (tuple, list)) and seen:
            seen = seen[0]
        elif isinstance(seen, Mapping) and seen:
            seen = next(iter(seen.values()))
        else:
            raise ValueError(
                f"layer {layer!r} returned {type(output).__name__}, which holds no tensor to capture"
            )
    return seen


def reduce_features(features: Tensor, flatten: str = "mean", mask: Tensor | None = None) -> Tensor:
    """Turn one layer's output into one row per sample, as :class:`FeatureExtractor` does.

    * (B, d) is returned as is, (B,) as (B, 1) (except ``"none"``: everything as is).
    * Token outputs (B, T, d) — batch first: ``"mean"`` averages over tokens, over the tokens where
      ``mask`` (B, T) is non-zero when a mask is given (a row with no token left gives a zero vector);
      ``"cls"`` takes token 0; ``"flatten"`` reshapes to (B, T·d) with masked-out tokens set to 0 (so
      padding does not leak into the features; rows only line up when all inputs share T).
    * Spatial outputs (B, C, H, W) — channels first, and likewise (B, C, D, H, W): ``"mean"``
      averages over the spatial axes to (B, C); ``"flatten"`` reshapes to (B, C·H·W); ``"cls"`` is an
      error. ``mask`` applies to token outputs only and is ignored for spatial ones.
    * ``"none"`` returns the output unchanged.

    Args:
        features: a layer's output, batch first.
        flatten: ``"mean"`` | ``"flatten"`` | ``"cls"`` | ``"none"``.
        mask: optional (B, T) attention mask (bool or 0/1), 1 for real tokens.

    Returns:
        (B, d') features (or the input for ``"none"``), in the input's dtype.

    Cost: O(B·T·d) time, one (B, d') output.
    """
    if flatten not in FLATTEN_MODES:
        raise ValueError(f"flatten must be one of {FLATTEN_MODES}, got {flatten!r}")
    if not isinstance(features, Tensor):
        raise ValueError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if flatten == "none":
        return features
    if features.dim() == 0:
        raise ValueError("features must have a batch axis, got a 0-d tensor")
    if features.dim() == 1:
        return features[:, None]
    if features.dim() == 2:
        return features
    if features.dim() == 3:
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.shape != features.shape[:2]:
                got = _shape(mask) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(
                    f"mask must have shape (B, T) = ({features.shape[0]}, {features.shape[1]}) to match "
                    f"token features {_shape(features)}, got {got}"
                )
            weight = (mask != 0).to(device=features.device, dtype=features.dtype)[..., None]
        if flatten == "cls":
            return features[:, 0]
        if flatten == "flatten":
            out = features if mask is None else features * weight
            return out.reshape(features.shape[0], -1)
        if mask is None:
            return features.mean(1)
        return (features * weight).sum(1) / weight.sum(1).clamp_min(1)
    if flatten == "cls":
        raise ValueError(
            f"flatten='cls' takes token 0 of (B, T, d) outputs; got a spatial output {_shape(features)}, "
            "use 'mean' or 'flatten'"
        )
    if flatten == "flatten":
        return features.reshape(features.shape[0], -1)
    return features.mean(dim=tuple(range(2, features.dim())))


class FeatureExtractor:
    """Forward hooks on named sub-modules that return their outputs, one row per sample.

    ``layers`` are names as in ``model.named_modules()`` (``"encoder.layer.3"``, ``"4"`` in an
    ``nn.Sequential``; ``""`` is the model itself). Calling the extractor runs the model and returns
    ``{layer: features}`` in the order of ``layers``, each reduced by :func:`reduce_features`
    according to ``flatten``:

    * a module that returns a tuple or list (Hugging Face blocks in older transformers,
      ``nn.MultiheadAttention``, ``nn.LSTM``) is captured through its *first* element; a mapping
      (a ``ModelOutput``) through its first value;
    * token outputs (B, T, d) must be batch first (``nn.TransformerEncoderLayer`` needs
      ``batch_first=True``): ``"mean"`` over tokens, honouring ``mask=`` (B, T) when given — pass
      the attention mask, since padded positions carry arbitrary values; ``"cls"`` token 0;
      ``"flatten"`` (B, T·d);
    * spatial outputs (B, C, H, W): ``"mean"`` over H, W, or ``"flatten"`` (B, C·H·W);
    * ``"none"``: the raw output.

    If a module runs several times in one forward (shared weights), the last call is kept. Outputs
    keep their autograd graph unless ``detach=True`` (so a REPA-style loss can use them); for
    measurement, call under ``torch.no_grad()``.

    Use it as a context manager, or call :meth:`remove`, to take the hooks off the model.

    Args:
        model: any ``nn.Module``.
        layers: sub-module names (at least one, no repeats).
        flatten: ``"mean"`` | ``"flatten"`` | ``"cls"`` | ``"none"``.
        detach: detach the captured outputs.

    Example::

        with FeatureExtractor(net, ["layer1", "layer2"], flatten="mean") as extract, torch.no_grad():
            feats = extract(images)          # {"layer1": (B, C1), "layer2": (B, C2)}

    Cost: one forward of the model; memory of the captured outputs until the call returns.
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[str], flatten: str = "mean", detach: bool = False
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise ValueError(f"layers must be a sequence of module names, got {type(layers).__name__}")
        if not layers:
            raise ValueError("layers must name at least one sub-module, got an empty sequence")
        if flatten not in FLATTEN_MODES:
            raise ValueError(f"flatten must be one of {FLATTEN_MODES}, got {flatten!r}")
        modules = dict(model.named_modules())
        for name in layers:
            if not isinstance(name, str):
                raise ValueError(f"layers must be module names (str), got {name!r}")
            if name not in modules:
                close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                some = [n for n in modules if n][:8]
                raise ValueError(
                    f"layers: {type(model).__name__} has no sub-module {name!r}{hint} "
                    f"(names as in model.named_modules(), e.g. {', '.join(repr(n) for n in some)})"
                )
        repeated = sorted({n for n in layers if list(layers).count(n) > 1})
        if repeated:
            raise ValueError(
                f"layers must not repeat a name, got {', '.join(repr(n) for n in repeated)} twice"
            )
        self.model = model
        self.layers = tuple(layers)
        self.flatten = flatten
        self.detach = bool(detach)
        self._captured: dict[str, Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = _first_tensor(output, name)
            self._captured[name] = tensor.detach() if self.detach else tensor

        return hook

    def __call__(self, *inputs: Any, mask: Tensor | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """Run ``model(*inputs, **kwargs)`` and return ``{layer: features}``.

        ``mask`` (B, T) is used by the token reduction and is *not* passed to the model (pass the
        model's own ``attention_mask=`` as well when it needs one).
        """
        if not self._handles:
            raise ValueError("this FeatureExtractor's hooks were removed; create a new one")
        self._captured = {}
        try:
            self.model(*inputs, **kwargs)
            missing = [n for n in self.layers if n not in self._captured]
            if missing:
                raise ValueError(
                    f"layers {', '.join(repr(n) for n in missing)} did not run in the model's forward"
                )
            return {name: reduce_features(self._captured[name], self.flatten, mask) for name in self.layers}
        finally:
            self._captured = {}

    def remove(self) -> None:
        """Take the hooks off the model (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._handles else "removed"
        return (
            f"FeatureExtractor({type(self.model).__name__}, layers={list(self.layers)}, "
            f"flatten={self.flatten!r}, {state})"
        )
