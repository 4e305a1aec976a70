"""The ``frozen`` tower: precomputed features passed through unchanged (identity), ``out_dim`` given.

    tower = FrozenFeatures(768)
    tower(tower.prepare(features))   # (N, 768), the same values as float32

The trainable part of a system built on it is the projection head after it (LiT-style locked
features: Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from alignkit.functional._checks import check_int
from alignkit.towers.base import Tower, _as_float_tensor

__all__ = ["FrozenFeatures"]


class FrozenFeatures(Tower):
    """Identity on precomputed (N, out_dim) features; no parameters, ``frozen = True``.

    ``prepare`` accepts a tensor, numpy array or nested list of numbers and returns a float tensor
    (float16 / bfloat16 / integers widened to float32, float64 kept); ``forward`` checks the width.

    Cost: free (no copy beyond the dtype conversion).
    """

    frozen = True
    cacheable = False

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = check_int(out_dim, "out_dim", 1)

    def prepare(self, items: Any) -> Tensor:
        x = _as_float_tensor(items, "features")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        self._check(x)
        return x

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.out_dim:
            raise ValueError(f"features must have shape (N, {self.out_dim}), got {tuple(x.shape)}")

    def forward(self, inputs: Tensor) -> Tensor:
        if not isinstance(inputs, Tensor):
            raise ValueError(f"features must be a tensor, got {type(inputs).__name__}")
        self._check(inputs)
        return inputs

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}"
