"""The :class:`Metric` base: states with declared reductions, merged across processes on demand.

Modelled on torchmetrics' ``Metric`` (update / compute / reset, states declared with
``add_state`` and merged by their reduction), but small and dependency-free:

* a state is either a tensor merged by ``"sum"``, ``"max"`` or ``"min"`` (``all_reduce``), or a
  list of tensors merged by ``"cat"`` (rows of every rank, gathered in rank order; ranks may hold
  different numbers of rows — sizes are exchanged first and rows padded to the largest count, so
  it works on gloo as well as NCCL);
* a tensor state's default may be a 0-d tensor (e.g. ``torch.tensor(0.0)``) that the first update
  replaces by broadcasting (``state + (d, d) batch``); a rank that never updated then contributes
  its default, broadcast to the other ranks' shape — so defaults must be the identity of their
  reduction (0 for sum, −inf for max, +inf for min);
* :meth:`Metric.compute` merges the states first when ``torch.distributed`` is initialised with more
  than one process (``sync_on_compute=True``) and restores the local states afterwards, so later
  updates keep accumulating locally. It is therefore a collective call: every rank must call it.

Subclasses declare states in ``__init__``, implement :meth:`Metric.update` (reading and replacing
states as attributes) and :meth:`Metric._compute` (the value from the — possibly merged — states)::

    class Mean(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("total", torch.tensor(0.0, dtype=torch.float64), "sum")
            self.add_state("count", torch.tensor(0), "sum")

        def update(self, x: Tensor) -> None:
            self.total = self.total + x.sum(dtype=torch.float64)
            self.count = self.count + x.numel()

        def _compute(self) -> Tensor:
            return self.total / self.count
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from alignkit.distributed import world_size
from alignkit.functional._checks import check_choice

__all__ = ["Metric"]

_REDUCTIONS = ("sum", "max", "min", "cat")
_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}
# dtypes a state may have, by code, for the shape/dtype exchange before merging.
_DTYPES = (
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
_MAX_DIMS = 6

StateValue = Tensor | list[Tensor]


class Metric(ABC):
    """Base class of streaming, distributable metrics (update / compute / reset / sync).

    Args:
        sync_on_compute: merge the states of all processes in :meth:`compute` when
            ``torch.distributed`` is initialised with more than one process.
        process_group: the group to merge over (``None``: the default group).

    Cost of :meth:`sync`: one small all-gather of shapes, then one ``all_reduce`` per tensor state
    and, per ``"cat"`` state, an all-gather of the row counts and one of the padded rows
    (O(world_size · max rows · width) memory on every rank).
    """

    def __init__(self, *, sync_on_compute: bool = True, process_group: Any | None = None) -> None:
        if not isinstance(sync_on_compute, bool):
            raise ValueError(f"sync_on_compute must be a bool, got {sync_on_compute!r}")
        self.sync_on_compute = sync_on_compute
        self.process_group = process_group
        self._defaults: dict[str, StateValue] = {}
        self._reductions: dict[str, str] = {}
        self._local: dict[str, StateValue] | None = None  # the local states while synced
        self._updated = False  # any update since construction / reset (decides automatic placement)
        self._device = torch.device("cpu")

    # ---------------------------------------------------------------------------------------------
    # States

    def add_state(self, name: str, default: StateValue, reduction: str = "sum") -> None:
        """Declare a state ``name`` (an attribute), its value after :meth:`reset` and how it merges.

        Args:
            name: attribute name (a Python identifier, not already used).
            default: a tensor for ``"sum"`` / ``"max"`` / ``"min"`` (the identity of the reduction;
                a 0-d default broadcasts to the shape of the first update), an empty list for ``"cat"``.
            reduction: ``"sum"`` | ``"max"`` | ``"min"`` | ``"cat"``.
        """
        check_choice(reduction, "reduction", _REDUCTIONS)
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"name must be a public Python identifier, got {name!r}")
        if name in self._reductions or hasattr(type(self), name) or name in self.__dict__:
            raise ValueError(f"name {name!r} is already a state or attribute of {type(self).__name__}")
        if reduction == "cat":
            if not isinstance(default, list) or default:
                raise ValueError(f"default of a 'cat' state must be an empty list, got {default!r}")
        elif not isinstance(default, Tensor):
            raise ValueError(
                f"default of a {reduction!r} state must be a tensor, got {type(default).__name__}"
            )
        elif default.dtype not in _DTYPES or default.dim() > _MAX_DIMS:
            raise ValueError(
                f"default must have one of the dtypes {_DTYPES} and at most {_MAX_DIMS} dimensions, "
                f"got {default.dtype} with shape {tuple(default.shape)}"
            )
        value = [] if reduction == "cat" else default.detach().clone().to(self._device)
        self._defaults[name] = value
        self._reductions[name] = reduction
        setattr(self, name, copy.copy(value) if reduction == "cat" else value.clone())

    @property
    def device(self) -> torch.device:
        """The device the states live on."""
        return self._device

    def _state(self, name: str) -> StateValue:
        return getattr(self, name)  # type: ignore[no-any-return]

    def _tensor(self, name: str) -> Tensor:
        """A tensor state by name (for states whose names are built at run time)."""
        value = getattr(self, name)
        assert isinstance(value, Tensor), name
        return value

    def _place(self, *named: tuple[str, Tensor]) -> None:
        """Check the update's tensors are on the states' device; before the first update after
        construction or :meth:`reset`, move the states to the tensors' device instead."""
        device = named[0][1].device
        if not self._updated:
            if device != self._device:
                self.to(device)
            self._updated = True
        elif device != self._device:
            name = named[0][0]
            raise ValueError(
                f"{name} is on {device} but {type(self).__name__}'s state is on {self._device}; "
                f"call .to({str(device)!r}) before updating (or reset())"
            )

    # ---------------------------------------------------------------------------------------------
    # The interface

    @abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate one batch into the local states."""

    @abstractmethod
    def _compute(self) -> Any:
        """The metric's value from the current (possibly merged) states."""

    def compute(self) -> Any:
        """The metric over everything accumulated since the last :meth:`reset`, on every process.

        With ``sync_on_compute`` and an initialised process group of more than one process the
        states are merged (:meth:`sync`) first and restored to the local ones afterwards; every rank
        must then call :meth:`compute`.
        """
        synced = self.sync_on_compute and self._local is None and world_size(self.process_group) > 1
        if synced:
            self.sync()
        try:
            return self._compute()
        finally:
            if synced:
                self.unsync()

    def reset(self) -> None:
        """Restore every state to its default (and leave any synced view)."""
        self._local = None
        for name, default in self._defaults.items():
            setattr(self, name, [] if isinstance(default, list) else default.clone())
        self._updated = False

    def to(self, device: torch.device | str) -> Metric:
        """Move every state (and default) to ``device``; returns ``self``."""
        device = torch.device(device)
        for name in self._reductions:
            for store in (self.__dict__, self._defaults):
                value = store[name]
                store[name] = [t.to(device) for t in value] if isinstance(value, list) else value.to(device)
        if self._local is not None:
            self._local = {
                k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device)
                for k, v in self._local.items()
            }
        self._device = device
        return self

    # ---------------------------------------------------------------------------------------------
    # Checkpoints

    def state_dict(self) -> dict[str, StateValue]:
        """A copy of the local states (tensors; lists of tensors for ``"cat"`` states)."""
        states = self._local if self._local is not None else {n: self._state(n) for n in self._reductions}
        return {
            name: [t.detach().clone() for t in value] if isinstance(value, list) else value.detach().clone()
            for name, value in states.items()
        }

    def load_state_dict(self, state_dict: Mapping[str, StateValue]) -> None:
        """Replace the states by those of :meth:`state_dict`, moved to this metric's device."""
        missing = set(self._reductions) - set(state_dict)
        extra = set(state_dict) - set(self._reductions)
        if missing or extra:
            raise ValueError(
                f"state_dict must hold exactly the states {sorted(self._reductions)}, "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        for name, reduction in self._reductions.items():
            value = state_dict[name]
            if reduction == "cat":
                if not isinstance(value, list) or not all(isinstance(t, Tensor) for t in value):
                    raise ValueError(f"state_dict[{name!r}] must be a list of tensors ('cat' state)")
            elif not isinstance(value, Tensor):
                raise ValueError(f"state_dict[{name!r}] must be a tensor, got {type(value).__name__}")
        self._local = None
        for name in self._reductions:
            value = state_dict[name]
            if isinstance(value, list):
                setattr(self, name, [t.detach().clone().to(self._device) for t in value])
            else:
                setattr(self, name, value.detach().clone().to(self._device))
        self._updated = True

    # ---------------------------------------------------------------------------------------------
    # Distributed merging

    def sync(self, process_group: Any | None = None) -> None:
        """Replace the local states by their merge over all processes of ``process_group``.

        ``"sum"`` / ``"max"`` / ``"min"`` states are all-reduced; ``"cat"`` states become one tensor
        holding every rank's rows in rank order (sizes are gathered first, rows padded to the largest
        count, then trimmed). A state still at its 0-d default on some rank is broadcast to the
        shape the other ranks hold. The local states are kept for :meth:`unsync`. Does nothing
        without an initialised process group of more than one process. Collective: every rank of
        the group must call it, with the same states declared.
        """
        group = process_group if process_group is not None else self.process_group
        if self._local is not None:
            raise RuntimeError(f"{type(self).__name__} is already synced; call unsync() first")
        if world_size(group) <= 1:
            return
        names = list(self._reductions)
        local = {n: (list(v) if isinstance(v, list) else v) for n, v in ((n, self._state(n)) for n in names)}
        flat = {n: (torch.cat(v) if v else None) if isinstance(v, list) else v for n, v in local.items()}
        meta = _gather_meta(flat, names, self._device, group)
        merged: dict[str, StateValue] = {}
        for i, name in enumerate(names):
            reduction = self._reductions[name]
            shapes, dtypes = meta[i]
            value = flat[name]
            if reduction == "cat":
                merged[name] = _gather_rows(name, value, shapes, dtypes, self._device, group)
            else:
                assert isinstance(value, Tensor)
                merged[name] = _all_reduce(name, value, reduction, shapes, dtypes, group)
        self._local = local
        for name, value in merged.items():
            setattr(self, name, value)

    def unsync(self) -> None:
        """Restore the local states saved by :meth:`sync` (no-op when not synced)."""
        if self._local is None:
            return
        for name, value in self._local.items():
            setattr(self, name, value)
        self._local = None

    def __repr__(self) -> str:
        extra = self.extra_repr()
        return f"{type(self).__name__}({extra})"

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return ""


def _gather_meta(
    flat: dict[str, Tensor | None], names: list[str], device: torch.device, group: Any
) -> list[tuple[list[tuple[int, ...] | None], list[torch.dtype | None]]]:
    """Every rank's (shape, dtype) of every state, in one all-gather: per state and rank, the shape
    (None for an empty 'cat' state) and dtype."""
    rows = torch.full((len(names), 2 + _MAX_DIMS), -1, dtype=torch.int64)
    for i, name in enumerate(names):
        t = flat[name]
        if t is None:
            continue
        if t.dim() > _MAX_DIMS or t.dtype not in _DTYPES:
            raise ValueError(f"state {name!r} has unsupported shape {tuple(t.shape)} or dtype {t.dtype}")
        rows[i, 0] = t.dim()
        rows[i, 1] = _DTYPES.index(t.dtype)
        rows[i, 2 : 2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    rows = rows.to(device)
    parts = [torch.empty_like(rows) for _ in range(world_size(group))]
    dist.all_gather(parts, rows, group=group)
    table = torch.stack(parts).cpu()  # (world, states, 2 + dims)
    out = []
    for i in range(len(names)):
        shapes: list[tuple[int, ...] | None] = []
        dtypes: list[torch.dtype | None] = []
        for r in range(table.shape[0]):
            ndim = int(table[r, i, 0])
            shapes.append(None if ndim < 0 else tuple(int(s) for s in table[r, i, 2 : 2 + ndim]))
            dtypes.append(None if ndim < 0 else _DTYPES[int(table[r, i, 1])])
        out.append((shapes, dtypes))
    return out


def _promoted(dtypes: list[torch.dtype | None]) -> torch.dtype | None:
    found = [d for d in dtypes if d is not None]
    if not found:
        return None
    out = found[0]
    for d in found[1:]:
        out = torch.promote_types(out, d)
    return out


def _all_reduce(
    name: str,
    value: Tensor,
    reduction: str,
    shapes: list[tuple[int, ...] | None],
    dtypes: list[torch.dtype | None],
    group: Any,
) -> Tensor:
    """The all-reduced state; 0-d states (defaults) are broadcast to the common shape first."""
    full = {s for s in shapes if s}
    if len(full) > 1:
        raise ValueError(f"state {name!r} has different shapes on different ranks: {shapes}")
    shape = next(iter(full)) if full else ()
    dtype = _promoted(dtypes)
    assert dtype is not None
    out = value.to(dtype).expand(shape).clone() if value.dim() == 0 else value.to(dtype).clone()
    if tuple(out.shape) != shape:
        raise ValueError(f"state {name!r} has different shapes on different ranks: {shapes}")
    dist.all_reduce(out, op=getattr(dist.ReduceOp, _REDUCE_OPS[reduction]), group=group)
    return out


def _gather_rows(
    name: str,
    value: Tensor | None,
    shapes: list[tuple[int, ...] | None],
    dtypes: list[torch.dtype | None],
    device: torch.device,
    group: Any,
) -> list[Tensor]:
    """Every rank's rows of a 'cat' state, in rank order, as a one-element list ([] if all empty)."""
    present = [s for s in shapes if s is not None]
    if not present:
        return []
    trailing = {s[1:] for s in present}
    if len(trailing) > 1:
        raise ValueError(f"'cat' state {name!r} has rows of different shapes on different ranks: {shapes}")
    tail = next(iter(trailing))
    dtype = _promoted(dtypes)
    assert dtype is not None
    counts = [0 if s is None else s[0] for s in shapes]
    longest = max(counts)
    local = value.to(dtype) if value is not None else torch.empty((0, *tail), dtype=dtype, device=device)
    padded = torch.zeros((longest, *tail), dtype=dtype, device=device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return [torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])]
