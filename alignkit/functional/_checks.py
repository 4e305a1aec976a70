"""Input validation and dtype handling shared by every function in :mod:`alignkit.functional`.

Every public function validates its tensors through these helpers so that a bad call fails with a
``ValueError`` that names the argument, its shape and what was expected, and so that half-precision
input is computed in float32 and returned in the caller's dtype.

Finiteness checks cost one reduction (and, on an accelerator, one host synchronisation) per input.
They are on by default; a training loop that has already validated its data can switch them off::

    with alignkit.functional.validation(False):
        loss = AF.info_nce(q, k)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "EPS",
    "check_choice",
    "check_dropout",
    "check_features",
    "check_finite",
    "check_int",
    "check_positive",
    "check_reduction",
    "check_same_device",
    "check_same_rows",
    "check_same_shape",
    "compute_dtype",
    "l2_normalize",
    "one_device",
    "reduce",
    "shape_str",
    "validation",
]

EPS = 1e-8
_FINITE_CHECKS = True
_REDUCTIONS = ("mean", "sum", "none")


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Turn the finiteness checks of every ``alignkit.functional`` call on or off inside a block.

    Shape, dtype and device checks are free and always run; only the NaN/Inf scan is switched.
    The previous setting is restored when the block ends (also on an exception); blocks nest.

    With the scan off, non-finite input is the caller's responsibility: nothing detects it and every
    result is unspecified — not only for the rows that hold the NaN/Inf. One such row can change other
    rows' results silently, yield placeholder values, or make a call raise an exception from torch
    instead of the ``ValueError``. For example, :func:`~alignkit.functional.knn` on float32 rows one
    of which is all NaN (CPU, torch backend) was observed to return index N — the searched set's size,
    "no neighbour found" — with score −inf for that row and for other rows, other rows' neighbours
    inexact, or a ``RuntimeError`` from torch ("selected index k out of range"), depending on the
    metric and on whether the NaN row is a query, in the gallery, or both (a self-search). Turn the
    scan off only for data known to be finite (e.g. checked once, outside the loop).
    """
    global _FINITE_CHECKS
    previous = _FINITE_CHECKS
    _FINITE_CHECKS = enabled
    try:
        yield
    finally:
        _FINITE_CHECKS = previous


def shape_str(x: Tensor) -> str:
    """``(2, 3)``; a 1-D shape as ``(5,)``, as Python writes a 1-tuple."""
    return str(tuple(x.shape))


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: float64 if any input is float64, else float32 (fp16/bf16 upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x / ‖x‖`` along ``dim``, exact for every finite magnitude; a zero vector stays zero.

    Computed as ``(x/s) / ‖x/s‖`` with ``s = max|x|`` along ``dim`` (detached: the result does not
    depend on ``s``, so the gradient is exactly that of ``x/‖x‖``). Scaling first keeps ``‖x‖²`` from
    overflowing (|x| ≈ 1e20 in float32 gives ``‖x‖ = inf`` and an all-zero result with a plain
    ``F.normalize``) and from underflowing below the ``EPS`` clamp (|x| ≈ 1e-20 gives vectors of norm
    ≈ 1e-12 instead of 1). Every cosine in :mod:`alignkit.functional` goes through it.

    Cost: one extra read of ``x`` (the max) and one elementwise division, O(N·d).
    """
    return F.normalize(x / _max_scale(x, dim), dim=dim, eps=EPS)


def _max_scale(x: Tensor, dim: int) -> Tensor:
    """max|x| along ``dim`` (kept), 1 where it is 0; detached."""
    scale = x.detach().abs().amax(dim=dim, keepdim=True)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


@torch.no_grad()
def l2_row_factors(x: Tensor, rows: int = 8192) -> tuple[Tensor, Tensor]:
    """(s, n), each (N, 1), with ``(x_i / s_i) / n_i`` bitwise row i of ``l2_normalize(x)`` for (N, d) x:
    ``s`` = max|x_i| (1 for a zero row), ``n = max(‖x_i/s_i‖, EPS)``. For normalising rows a block at a
    time (no normalised copy of x). Cost: O(N·d) over chunks of ``rows`` rows, O(rows·d) extra memory."""
    starts = range(0, x.shape[0], rows)
    scale = torch.cat([_max_scale(x[i : i + rows], 1) for i in starts])
    norm = torch.cat([(x[i : i + rows] / scale[i : i + rows]).norm(dim=1, keepdim=True) for i in starts])
    return scale, norm.clamp_min_(EPS)


def check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or Inf.

    Fast path: one sum (a single read of ``x``, accumulated in at least float32); a sum is finite
    whenever every entry is, so only a non-finite sum — a NaN/Inf entry, or a float32 overflow of
    huge finite values — triggers the exact element-wise scan.
    """
    if not _FINITE_CHECKS or not x.numel():
        return
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(x.detach().sum(dtype=acc))):
        return
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or Inf) in shape {shape_str(x)}")


def check_features(
    x: object,
    name: str,
    ndim: int | Sequence[int] = 2,
    min_rows: int = 1,
    finite: bool = True,
) -> Tensor:
    """Check that ``x`` is a floating tensor of the expected rank with at least ``min_rows`` rows.

    Returns ``x`` unchanged so it can be used inline.
    """
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    expected = " or ".join(_rank_name(d) for d in dims)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{name} must have shape {expected}, got {shape_str(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s), got shape {shape_str(x)}")
    if x.dim() > 1 and x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one feature column, got shape {shape_str(x)}")
    if finite:
        check_finite(x, name)
    return x


def _rank_name(d: int) -> str:
    return {1: "(N,)", 2: "(N, d)", 3: "(B, T, d)", 4: "(B, C, H, W)"}.get(d, f"{d}-D")


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {shape_str(a)} and {shape_str(b)}"
        )


def check_same_rows(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of rows, got {shape_str(a)} and {shape_str(b)}"
        )


def check_same_device(*named: tuple[str, Tensor]) -> None:
    devices = {t.device for _, t in named}
    if len(devices) > 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in named)
        raise ValueError(f"all tensors must be on one device, got {where}")


_F = TypeVar("_F", bound=Callable[..., Any])


def one_device(fn: _F) -> _F:
    """Decorator for public functionals: every tensor argument (also inside a list / tuple argument)
    must be on one device, checked *before* the body runs — so before any finiteness scan calls
    ``.item()`` on a tensor of another device — else ``ValueError`` naming the arguments and devices.
    0-dim CPU tensors (a learnable temperature, a logit scale) may sit beside accelerator tensors,
    as torch allows. Cost: a loop over the arguments, no device synchronisation.
    """
    names = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found: list[tuple[str, Tensor]] = []
        devices: set[torch.device] = set()
        for name, value in (*zip(names, args, strict=False), *kwargs.items()):
            items = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if isinstance(item, Tensor) and (item.dim() or item.device.type != "cpu"):
                    found.append((name, item))
                    devices.add(item.device)
        if len(devices) > 1:
            check_same_device(*found)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_positive(value: float, name: str, allow_zero: bool = False) -> None:
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


def check_choice(value: object, name: str, allowed: Sequence[Any]) -> None:
    """``value`` must be one of ``allowed`` (a ValueError lists them)."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_dropout(value: object, name: str = "dropout") -> float:
    """``value`` must be a number (not a bool) in [0, 1): a dropout probability."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_int(value: object, name: str, low: int, high: int | None = None, what: str = "") -> int:
    """``value`` must be an int (not a bool) in ``[low, high]``; ``what`` explains the bound."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high  # type: ignore[operator]
    if not ok:
        span = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {span}{what}, got {value!r}")
    return value  # type: ignore[return-value]


def check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` ("mean" | "sum" | "none") to a per-sample loss."""
    check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
