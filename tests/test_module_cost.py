"""The loss modules add no tensor work to their functionals: for every contrastive loss of the
registry, ``losses.build(name)(…)`` forward + backward writes exactly as many tensor elements as the
functional called by hand (the definitions ``bench/app.py`` times), so what a module costs on top is a
per-call constant of Python, which ``python bench/app.py`` measures in µs. No timings here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from alignkit import losses as L


def _bench_app() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "app.py"
    spec = importlib.util.spec_from_file_location("bench_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


APP = _bench_app()


class _Work(TorchDispatchMode):
    """Counts the elements of every tensor an aten operation returns, and the operations."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        self.ops += 1
        return out


def _work(name: str, by_hand: bool, n: int = 256, d: int = 64) -> _Work:
    step = APP._loss_step(name, n, d, "cpu", by_hand)
    step()  # first call: lazily built buffers do not count
    with _Work() as work:
        step()
    return work


def test_every_contrastive_loss_is_benchmarked() -> None:
    """Each loss class of ``alignkit.losses.contrastive`` has a row in the timed table."""
    from alignkit.losses import contrastive

    covered = {type(L.build(name, **APP.LOSSES[name][0])).__name__ for name in APP.LOSSES}
    losses = {name for name in contrastive.__all__ if name.endswith("Loss")}
    assert losses <= covered, losses - covered


@pytest.mark.parametrize("name", sorted(APP.LOSSES))
def test_module_does_the_functionals_tensor_work(name: str) -> None:
    module, by_hand = _work(name, by_hand=False), _work(name, by_hand=True)
    assert module.elements <= by_hand.elements + 8, (module.elements, by_hand.elements)  # a few scalars
    assert module.ops <= by_hand.ops + 4 * APP.REPEATS.get(name, 1)
    assert module.elements > 256 * 64  # the count sees the work (B × d at least)
