"""``alignkit.functional.validation``: the NaN/Inf scan is off inside the block and only there (restored
after it, also on an exception, and per nesting level); shape checks run either way."""

from __future__ import annotations

import math

import pytest
import torch

import alignkit.functional as AF


def _nan_rows() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    x[2, 1] = math.nan
    return x, y


def test_scan_is_off_only_inside_the_block() -> None:
    x, y = _nan_rows()
    with pytest.raises(ValueError, match="source has 1 non-finite"):
        AF.repa_loss(x, y)
    with AF.validation(False):
        assert torch.isnan(AF.repa_loss(x, y))  # computed, not rejected
        with pytest.raises(ValueError, match="target"):  # shapes are still checked
            AF.repa_loss(x, y[:3])
        with AF.validation(True), pytest.raises(ValueError, match="non-finite"):
            AF.repa_loss(x, y)
        assert torch.isnan(AF.repa_loss(x, y))  # the inner block restored "off"
    with pytest.raises(ValueError, match="non-finite"):
        AF.repa_loss(x, y)


def test_scan_is_restored_after_an_exception_in_the_block() -> None:
    x, y = _nan_rows()
    with pytest.raises(RuntimeError, match="inside"), AF.validation(False):
        raise RuntimeError("inside")
    with pytest.raises(ValueError, match="non-finite"):
        AF.repa_loss(x, y)
