"""AdamW for the Trainer: ``torch.optim.AdamW`` without its first-use import of ``torch._dynamo``.

``torch.optim.Optimizer`` wraps ``add_param_group``, ``zero_grad``, ``state_dict``,
``load_state_dict`` (``torch._disable_dynamo``) and every ``step`` (``_use_grad_for_differentiable``)
in decorators that import ``torch._dynamo`` on their first call, so that ``torch.compile`` does not
trace into them. That import costs about as much as ``import torch`` itself (1-2 s on two CPU cores)
and is the largest part of a short ``alignkit train``'s start-up, although nothing is compiled.

:class:`AdamW` is ``torch.optim.AdamW`` — the same update, state, ``state_dict`` and hooks, and an
instance of it — whose five methods call the undecorated functions while ``torch._dynamo`` has not
been imported (nothing can be compiling then), and torch's decorated ones once it has (so a
``torch.compile`` of a training loop still sees the optimiser exactly as torch ships it).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["AdamW"]


def _plain(method: Callable[..., Any]) -> Callable[..., Any]:
    """The function under torch's decorators (``functools.wraps`` keeps it as ``__wrapped__``)."""
    return inspect.unwrap(method)


def _unhooked(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` without the step-hook wrapper that ``Optimizer.__init__`` puts around the ``step`` of
    each class it meets (``profile_hook_step``, marked ``hooked``): :class:`AdamW`'s own ``step`` gets
    one, so the hooks must not run a second time inside it."""
    while getattr(method, "hooked", False):
        method = method.__wrapped__  # type: ignore[attr-defined]
    return method


_STEP = _plain(torch.optim.Adam.step)
_STEP_FOR_DYNAMO = _unhooked(torch.optim.Adam.step)  # torch's, with its dynamo decorator
_ZERO_GRAD = _plain(torch.optim.Optimizer.zero_grad)
_ADD_PARAM_GROUP = _plain(torch.optim.Optimizer.add_param_group)
_STATE_DICT = _plain(torch.optim.Optimizer.state_dict)
_LOAD_STATE_DICT = _plain(torch.optim.Optimizer.load_state_dict)


def _compiling_possible() -> bool:
    return "torch._dynamo" in sys.modules


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (Loshchilov & Hutter 2019) that does not import ``torch._dynamo`` (see the
    module docstring); every argument, result and state is torch's. Cost per step: torch's."""

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if _compiling_possible():
            return _STEP_FOR_DYNAMO(self, closure)
        # what torch's _use_grad_for_differentiable does around the step, minus the graph breaks
        enabled = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return _STEP(self, closure)
        finally:
            torch.set_grad_enabled(enabled)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if _compiling_possible():
            return super().zero_grad(set_to_none)
        return _ZERO_GRAD(self, set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if _compiling_possible():
            return super().add_param_group(param_group)
        return _ADD_PARAM_GROUP(self, param_group)

    def state_dict(self) -> dict[str, Any]:
        if _compiling_possible():
            return super().state_dict()
        return _STATE_DICT(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if _compiling_possible():
            return super().load_state_dict(state_dict)
        return _LOAD_STATE_DICT(self, state_dict)
