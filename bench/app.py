"""The application's own costs, each against what a user would write without it (rows of bench/run.py):

* **CLI start-up**: ``alignkit --help``, and ``alignkit train`` (the demo's clip recipe, one epoch, no
  report) to its first progress line and to its first epoch line, against ``python -c "import torch"``
  — the floor of any command that trains. Each is a fresh interpreter (``subprocess``).
* **Trainer step**: ``Trainer.fit`` of one epoch into a new run directory (the clip recipe's system
  on digits-shaped random data, batch 128, the recipe's settings: AdamW, warm-up + cosine, a step
  record every 5 steps, and at the epoch's end its ``best`` and ``last`` checkpoints, written with
  fsync) against the same steps written by hand (the same system, batches, AdamW and schedule; no
  log, no checkpoint). Both start from the same weights and seeds, so both print the same mean loss.
* **Loss modules**: ``losses.build(name)`` against its functional called by hand, forward + backward,
  for every contrastive loss of the registry; ``python bench/app.py`` prints the module path's cost
  per call on tiny inputs (B = 64, d = 32), where the Python around the kernels shows.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import alignkit.functional as AF
from alignkit import losses as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------------------------------
# CLI start-up


def _until(argv: list[str], first: str | None) -> float:
    """Seconds from starting ``argv`` until a stderr line containing ``first`` (the process is then
    stopped), or until it exits when ``first`` is None."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if first is not None and first in line:
                return time.perf_counter() - start
        if proc.wait() != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} … exited with {proc.returncode}")
        if first is not None:
            raise RuntimeError(f"{' '.join(argv[:4])} … never printed {first!r}")
        return time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def import_torch(device: str) -> Callable[[], None]:
    """``python -c "import torch"`` until it says so (not its exit: tearing torch down takes a while,
    and the other rows stop at a line too): the floor of every command that trains."""
    code = "import sys, torch; print('imported', file=sys.stderr, flush=True)"
    return lambda: _until([sys.executable, "-c", code], "imported") and None


def cli_help(device: str) -> Callable[[], None]:
    return lambda: _until([sys.executable, "-m", "alignkit", "--help"], None) and None


def _train_argv(out: str) -> list[str]:
    return [sys.executable, "-m", "alignkit", "train", "train.epochs=1", "-o", out, "--no-report"]


def cli_train_first_line(device: str) -> Callable[[], None]:
    """``alignkit train`` until its first progress line (``alignkit train: training recipe clip …``)."""
    out = tempfile.mkdtemp(prefix="bench-cli-")
    return lambda: _until([*_train_argv(out), "train.device=" + device], "training recipe") and None


def cli_train_first_epoch(device: str) -> Callable[[], None]:
    """``alignkit train`` until the line of its first epoch (data, towers, one epoch, validation)."""
    out = tempfile.mkdtemp(prefix="bench-cli-")
    return lambda: _until([*_train_argv(out), "train.device=" + device], "epoch 1/1") and None


# --------------------------------------------------------------------------------------------------
# the Trainer against a hand-written loop


def _recipe_system(n: int, device: str) -> tuple[Any, list[torch.Tensor], dict[str, Any]]:
    """The clip recipe's system, built for digits-shaped random data: (n, 8, 8) images in [0, 1] and
    (n, 384) text features; returns (system, [images, text], train settings)."""
    from alignkit.recipes.config import load_config
    from alignkit.recipes.data import RecipeData
    from alignkit.recipes.systems import build_system

    cfg = load_config(None, ["recipe=clip"])
    g = torch.Generator().manual_seed(0)
    images, text = torch.rand(n, 8, 8, generator=g), torch.randn(n, 384, generator=g)
    rows = torch.arange(n)
    data = RecipeData(a=images, b=text, splits={"train": rows, "val": rows[:0], "test": rows[:0]})
    torch.manual_seed(0)
    system = build_system(cfg, data).to(device)
    return system, [images.to(device), text.to(device)], cfg["train"]


def trainer_fit(steps: int, batch: int, device: str) -> Callable[[], float]:
    """``Trainer.fit``: one epoch of ``steps`` steps; returns the epoch's mean training loss."""
    from alignkit.train import Trainer

    system, tensors, t = _recipe_system(steps * batch, device)
    initial = {k: v.clone() for k, v in system.state_dict().items()}
    root = tempfile.mkdtemp(prefix="bench-trainer-")
    runs = iter(range(1_000_000))

    def step() -> float:
        system.load_state_dict(initial)
        trainer = Trainer(  # a fresh run directory each call, as a new run gets
            system, tensors, epochs=1, lr=t["lr"], out_dir=f"{root}/run-{next(runs)}", batch_size=batch,
            weight_decay=t["weight_decay"], warmup_fraction=t["warmup_fraction"],
            min_lr_ratio=t["min_lr_ratio"], log_every=t["log_every"], progress=False, seed=0, device=device,
        )
        return float(trainer.fit().epochs[0]["train_loss"])

    return step


def hand_loop(steps: int, batch: int, device: str) -> Callable[[], float]:
    """The same steps by hand: the Trainer's batches (``randperm`` of a generator seeded 0), AdamW over
    the same parameter groups, the same warm-up + cosine schedule; the mean loss read once at the end."""
    from alignkit.train import parameter_groups, seed_everything
    from alignkit.train.schedule import warmup_cosine

    n = steps * batch
    system, tensors, t = _recipe_system(n, device)
    initial = {k: v.clone() for k, v in system.state_dict().items()}
    warmup = round(t["warmup_fraction"] * steps)

    def step() -> float:
        system.load_state_dict(initial)
        opt = torch.optim.AdamW(parameter_groups(system, t["weight_decay"]), lr=t["lr"])
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: warmup_cosine(k, steps, warmup, t["min_lr_ratio"])
        )
        seed_everything(0)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        system.train()
        total = torch.zeros((), device=device)
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch].to(device)
            loss = system.training_step([x[idx] for x in tensors])["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.detach()
        return float(total) / steps

    return step


# --------------------------------------------------------------------------------------------------
# loss modules against their functionals


def _unit(n: int, d: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device).requires_grad_()
    b = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device).requires_grad_()
    return a, b


def _labels(n: int, device: str) -> torch.Tensor:
    return torch.randint(0, max(2, n // 8), (n,), generator=torch.Generator().manual_seed(1)).to(device)


def _pairs(n: int, device: str) -> torch.Tensor:
    return (torch.rand(n, generator=torch.Generator().manual_seed(2)) < 0.5).to(device)


#: name → (module keyword arguments, inputs(n, d, device), the functional by hand(module, *inputs))
#: (a loss in ``REPEATS`` is called that many times per timed call: one call takes milliseconds)
LOSSES: dict[str, tuple[dict[str, Any], Callable[..., tuple], Callable[..., torch.Tensor]]] = {
    "clip": (
        {},
        lambda n, d, dev: _unit(n, d, dev),
        lambda m, a, b: AF.clip_loss(
            F.normalize(a, dim=-1), F.normalize(b, dim=-1),
            m.temperature.log_scale.clamp(max=math.log(100.0)).exp(),
        ),
    ),
    "siglip": (
        {},
        lambda n, d, dev: _unit(n, d, dev),
        lambda m, a, b: AF.clip_loss(
            F.normalize(a, dim=-1), F.normalize(b, dim=-1),
            m.temperature.log_scale.clamp(max=math.log(100.0)).exp(), m.logit_bias,
        ),
    ),
    "info_nce": (
        {"temperature": 0.07, "symmetric": True},
        lambda n, d, dev: _unit(n, d, dev),
        lambda m, a, b: AF.info_nce(a, b, temperature=0.07, symmetric=True),
    ),
    "ntxent": (
        {"temperature": 0.1},
        lambda n, d, dev: _unit(n, d, dev),
        lambda m, a, b: AF.nt_xent_loss(a, b, 0.1),
    ),
    "supcon": (
        {"temperature": 0.1},
        lambda n, d, dev: (torch.stack(_unit(n, d, dev), 1).detach().requires_grad_(), _labels(n, dev)),
        lambda m, x, y: AF.supcon_loss(x, y, 0.1),
    ),
    "subspace_contrastive": (
        {"num_subspaces": 4, "temperature": 0.1},
        lambda n, d, dev: _unit(n, d, dev),
        lambda m, a, b: AF.subspace_contrastive_loss(a, b, 4, 0.1),
    ),
    "pair_contrastive": (
        {"margin": 1.0},
        lambda n, d, dev: (*_unit(n, d, dev), _pairs(n, dev)),
        lambda m, a, b, pos: AF.pair_contrastive_loss(a, b, pos, margin=1.0),
    ),
}


REPEATS = {"pair_contrastive": 50}


def _loss_step(name: str, n: int, d: int, device: str, by_hand: bool) -> Callable[[], float]:
    kwargs, make, functional = LOSSES[name]
    module = L.build(name, **kwargs).to(device)
    inputs = make(n, d, device)
    leaves = [x for x in (*inputs, *module.parameters()) if x.requires_grad]

    def step() -> float:
        for _ in range(REPEATS.get(name, 1)):
            for x in leaves:
                x.grad = None
            loss = functional(module, *inputs) if by_hand else module(*inputs)
            loss.backward()
        return loss.item()

    return step


def module_loss(n: int, d: int, device: str, name: str = "clip") -> Callable[[], float]:
    """``losses.build(name)(…)``, forward + backward."""
    return _loss_step(name, n, d, device, by_hand=False)


def functional_loss(n: int, d: int, device: str, name: str = "clip") -> Callable[[], float]:
    """What the module computes, by hand: the functional (after the same normalisation and scale)."""
    return _loss_step(name, n, d, device, by_hand=True)


def module_overhead(n: int = 64, d: int = 32, calls: int = 300) -> dict[str, float]:
    """Per-call cost of the module path over the functional, in µs, on inputs small enough that the
    Python around the kernel shows: median over ``calls`` alternating calls (forward + backward)."""
    out = {}
    for name in LOSSES:
        sides = (module_loss(n, d, "cpu", name=name), functional_loss(n, d, "cpu", name=name))
        times: tuple[list[float], list[float]] = ([], [])
        for i in range(calls + 20):
            for side, step in zip(times, sides, strict=True):
                start = time.perf_counter()
                step()
                if i >= 20:
                    side.append(time.perf_counter() - start)
        module, functional = (statistics.median(t) / REPEATS.get(name, 1) * 1e6 for t in times)
        out[name] = module - functional
        print(f"{name:22s} module {module:8.1f} µs  functional {functional:8.1f} µs  "
              f"module − functional {module - functional:+7.1f} µs per call", flush=True)
    return out


if __name__ == "__main__":  # python bench/app.py: the module path's cost per call on tiny inputs
    torch.set_num_threads(1)
    module_overhead()
