"""A user's own encoder by import path: ``"my_pkg.towers:build"`` called with the config's kwargs.

    # my_pkg/towers.py
    def build(width=64):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width))
        net.out_dim = width          # optional: otherwise inferred by a dry run on `example`
        return net

    tower = ImportedTower("my_pkg.towers:build", kwargs={"width": 32})

The target is ``"module.path:attribute"`` (the attribute may be dotted, ``"pkg.mod:Factory.create"``)
or ``"module.path.attribute"``. The module is imported with :func:`importlib.import_module` (so it
must be importable: installed, or on ``sys.path`` / ``PYTHONPATH``); the attribute is called with
``kwargs`` and must return an ``nn.Module`` (a class that subclasses ``nn.Module`` works too).

The returned module is wrapped: ``forward`` is the module's; ``prepare`` / ``select`` are the
module's own when it defines them, else the defaults (a float tensor; row slicing); ``out_dim`` is
the module's ``out_dim`` attribute, or the width of its output on ``example`` (a dry run in eval
mode under ``no_grad``). Every problem — module not found, attribute missing, not callable, not a
module, a builder that rejects the kwargs or fails, a dry run that does not give (N, d) — raises a
one-line ``ValueError``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.towers.base import Inputs, Tower, _as_float_tensor, _select

__all__ = ["ImportedTower", "load_object"]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def load_object(target: str) -> Any:
    """The object named by ``"module.path:attr.sub"`` (or ``"module.path.attr"``); one-line errors."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"import path must be 'module.path:attribute', got {target!r}")
    if ":" in target:
        module_name, _, attr = target.partition(":")
    else:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr or ":" in attr:
        raise ValueError(f"import path must be 'module.path:attribute', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ValueError(
                f"module {module_name!r} (from {target!r}) not found; install it or put it on PYTHONPATH"
            ) from None
        raise ValueError(
            f"importing module {module_name!r} (from {target!r}) failed: {_one_line(err)}"
        ) from None
    except Exception as err:  # the user's module raised while being imported
        raise ValueError(
            f"importing module {module_name!r} (from {target!r}) failed: "
            f"{type(err).__name__}: {_one_line(err)}"
        ) from None
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = module_name + "".join("." + p for p in attr.split(".")[:i])
            raise ValueError(f"{where!r} has no attribute {part!r} (from {target!r})")
        obj = getattr(obj, part)
    return obj


class ImportedTower(Tower):
    """A user module built by an import path, following the tower contract.

    Args:
        path: ``"module.path:attribute"`` of a callable returning an ``nn.Module``.
        kwargs: keyword arguments for the call (the config's ``kwargs``).
        frozen: lock the module (no gradients, always eval mode, forward under ``no_grad``).
        example: raw items (or prepared inputs) for a dry run when the module has no ``out_dim``.
        out_dim: the output width when known (overrides the module's attribute and the dry run).

    Attributes: ``module`` (the user's module), ``out_dim``, ``frozen``, ``path``.
    """

    def __init__(
        self,
        path: str,
        kwargs: Mapping[str, Any] | None = None,
        frozen: bool = False,
        example: Any = None,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(frozen, bool):
            raise ValueError(f"frozen must be a bool, got {frozen!r}")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError(f"kwargs must be a mapping of names to values, got {type(kwargs).__name__}")
        builder = load_object(path)
        if not callable(builder):
            kind = type(builder).__name__
            raise ValueError(f"{path!r} is not callable (type {kind}); it must build an nn.Module")
        try:
            module = builder(**kwargs)
        except TypeError as err:
            raise ValueError(
                f"calling {path!r} with kwargs {sorted(kwargs)} failed: {_one_line(err)}"
            ) from None
        except Exception as err:
            raise ValueError(f"calling {path!r} failed: {type(err).__name__}: {_one_line(err)}") from None
        if not isinstance(module, nn.Module):
            raise ValueError(f"{path!r} returned an object of type {type(module).__name__}, not an nn.Module")
        self.path = path
        self.module = module
        self.frozen = frozen
        self.module.requires_grad_(not frozen)
        self.out_dim = self._find_out_dim(out_dim, example)
        self.train(False)

    def _find_out_dim(self, out_dim: int | None, example: Any) -> int:
        if out_dim is None:
            out_dim = getattr(self.module, "out_dim", None)
        if out_dim is not None:
            if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
                raise ValueError(f"out_dim of {self.path!r} must be an integer ≥ 1, got {out_dim!r}")
            return out_dim
        if example is None:
            raise ValueError(
                f"{self.path!r} built a module without an out_dim attribute; give out_dim or an example "
                "input for a dry run"
            )
        was_training = self.module.training
        self.module.eval()
        try:
            inputs = example if isinstance(example, (Tensor, dict)) else self.prepare(example)
            with torch.no_grad():
                out = self.module(inputs)
        except ValueError:
            raise
        except Exception as err:
            raise ValueError(
                f"dry run of {self.path!r} on the example failed: {type(err).__name__}: {_one_line(err)}"
            ) from None
        finally:
            self.module.train(was_training)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] < 1:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{self.path!r} must return (N, d) features, got {shape} on the example")
        return int(out.shape[1])

    def train(self, mode: bool = True) -> ImportedTower:
        super().train(mode)
        if self.frozen:
            self.module.eval()
        return self

    def prepare(self, items: Any) -> Inputs:
        prepare = getattr(self.module, "prepare", None)
        return prepare(items) if callable(prepare) else _as_float_tensor(items)

    def select(self, inputs: Inputs, rows: Any) -> Inputs:
        select = getattr(self.module, "select", None)
        return select(inputs, rows) if callable(select) else _select(inputs, rows)

    def forward(self, inputs: Inputs) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.module(inputs)
        return self.module(inputs)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, out_dim={self.out_dim}, frozen={self.frozen}"
