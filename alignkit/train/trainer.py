"""The training engine: AdamW + warm-up/cosine, seeded and resumable mid-epoch, DDP-ready.

The Trainer knows nothing about particular models: it trains any ``nn.Module`` that follows
:class:`TrainableSystem`::

    class MySystem(nn.Module):
        def training_step(self, batch) -> dict[str, Tensor]:     # must hold "loss"; other scalars are logged
            a, b = batch
            return {"loss": self.loss(self.tower_a(a), self.tower_b(b))}

        def after_optimizer_step(self, step: int, max_steps: int) -> None:   # optional, e.g. an EMA update
            ...

    trainer = Trainer(MySystem(), (x_a, x_b), batch_size=256, epochs=10, lr=1e-3, out_dir="runs/x",
                      evaluate=lambda m: {"val_loss": ...}, monitor="val_loss", mode="min")
    result = trainer.fit()            # Trainer(..., resume=True).fit() continues a killed run

Determinism: :func:`seed_everything` seeds Python, numpy and torch (CPU and CUDA) at the start of a fresh
run (``seed + rank``); the epoch order comes from a dedicated ``torch.Generator`` seeded with ``seed``. A
checkpoint holds that generator's state at the start of the current epoch, the position in the epoch and
every RNG state, so a resumed run rebuilds the epoch's permutation, skips the batches already seen and
continues the same loss curve.

Files in ``out_dir``: ``metrics.jsonl`` (one JSON object per logged step, epoch, resume; appended and
flushed line by line) and ``checkpoints/{last,best}.json`` with their safetensors files (see
:mod:`alignkit.train.checkpoint`). In a distributed run only rank 0 writes files and shows a progress bar.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Sampler, TensorDataset

from alignkit.functional._checks import check_choice, check_int, check_positive
from alignkit.io import json_safe
from alignkit.progress import Progress
from alignkit.train.checkpoint import Checkpoint, load_checkpoint, remove_checkpoint, save_checkpoint
from alignkit.train.distributed import DistInfo, all_reduce_mean, dist_info, setup_distributed, shard_batches
from alignkit.train.optim import AdamW
from alignkit.train.schedule import warmup_cosine

__all__ = [
    "FitResult",
    "TrainableSystem",
    "Trainer",
    "parameter_groups",
    "read_metrics",
    "seed_everything",
]


@runtime_checkable
class TrainableSystem(Protocol):
    """What the :class:`Trainer` needs from a model (an ``nn.Module``).

    ``training_step(batch)`` returns a mapping that holds the scalar tensor ``"loss"`` to minimise; every
    other entry that is a number or a one-element tensor is logged (averaged over ranks). An optional
    ``after_optimizer_step(step, max_steps)`` runs after each optimiser step, with ``step`` the 0-based
    index of the step just taken and ``max_steps`` the run's total (e.g. BYOL's momentum update).
    """

    def training_step(self, batch: Any) -> Mapping[str, Any]: ...


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        steps: the step records logged by this call (also in ``metrics.jsonl``).
        epochs: the epoch records of this call (train loss, evaluation metrics, ``best``).
        global_step: optimiser steps taken in total (including those before a resume).
        best_value: best value of the monitored metric so far (``None`` if none was finite).
        best_epoch: 1-based epoch of ``best_value``.
        last_checkpoint: ``out_dir/checkpoints/last.json``.
        best_checkpoint: ``out_dir/checkpoints/best.json`` (``None`` if no best was saved).
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    check_int(seed, "seed", 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices and kernels only.

    Rule: a trainable parameter with ``ndim ≤ 1`` — biases, LayerNorm / BatchNorm scales and shifts,
    scalar temperatures and logit scales/biases — gets no weight decay; every other trainable parameter
    gets ``weight_decay``. (Decaying a temperature or a norm gain pulls it towards 0, which is never
    intended; Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", for AdamW itself.)
    Frozen parameters (``requires_grad=False``) are left out; a parameter shared between submodules is
    listed once.

    Returns:
        Up to two groups, ``{"name": "decay", "params": […], "weight_decay": weight_decay}`` and
        ``{"name": "no_decay", "params": […], "weight_decay": 0.0}``; empty groups are omitted.
        Cost: O(#params).
    """
    check_positive(float(weight_decay), "weight_decay", allow_zero=True)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = []
    if decay:
        groups.append({"name": "decay", "params": decay, "weight_decay": float(weight_decay)})
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0})
    return groups


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (an unfinished last line, from a killed writer, is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            records.append(json.loads(line))
    return records


class _StepModule(nn.Module):
    """Routes ``training_step`` through ``forward`` so that DistributedDataParallel sees the call."""

    def __init__(self, system: nn.Module) -> None:
        super().__init__()
        self.system = system

    def forward(self, batch: Any) -> Any:
        return self.system.training_step(batch)


class _ListBatchSampler(Sampler[list[int]]):
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Train a :class:`TrainableSystem` with AdamW, linear warm-up + cosine decay, per-epoch evaluation,
    a ``metrics.jsonl`` log, best / last checkpoints, exact mid-epoch resume and DDP.

    Optimiser: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019; as :class:`alignkit.train.optim.AdamW`,
    which skips torch's import of ``torch._dynamo``) over :func:`parameter_groups` — no weight
    decay for parameters with ``ndim ≤ 1``. Learning rate at step ``k``:
    ``lr · warmup_cosine(k, total_steps, warmup, min_lr_ratio)`` (:mod:`alignkit.train.schedule`).

    Data: ``train_data`` is a ``Dataset`` (map-style), a sequence of tensors with the same number of rows
    (a ``TensorDataset``; batches are ``[x_1[idx], x_2[idx], …]``), or a ``DataLoader`` whose dataset,
    batch size (per process: the global batch is ``batch_size × world_size``), collate function,
    shuffling, ``drop_last`` and worker count are reused. Batches are always
    drawn through the Trainer's own deterministic order (:func:`~alignkit.train.distributed.shard_batches`
    over a ``torch.randperm`` from a seeded generator), which is what makes resume exact.

    Distributed: if the environment describes a ``torchrun`` launch (``WORLD_SIZE > 1``) and no process
    group exists, :func:`~alignkit.train.distributed.setup_distributed` is called (the caller ends it with
    :func:`~alignkit.train.distributed.cleanup`). With more than one process the system is wrapped in
    ``DistributedDataParallel``, ``batch_size`` is the *global* batch (each rank gets ``batch_size /
    world_size`` rows of it) and only rank 0 writes files. Exact resume needs the same world size.

    Args:
        system: the model (see :class:`TrainableSystem`); moved to ``device``.
        train_data: dataset, tensors or ``DataLoader`` (see above).
        epochs: number of epochs ``≥ 1``.
        lr: peak learning rate ``> 0``.
        out_dir: run directory (created).
        batch_size: global batch size (required unless ``train_data`` is a ``DataLoader``).
        weight_decay: AdamW decoupled weight decay for ``ndim ≥ 2`` parameters.
        warmup_steps, warmup_fraction: warm-up length in steps, or as a fraction of all steps (at most one;
            neither: no warm-up).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        betas, eps: AdamW's.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping; the norm is then
            not logged).
        evaluate: ``evaluate(system) -> {name: number}``, called after each epoch on every rank (in eval
            mode, under ``torch.no_grad``); its numbers go into the epoch record.
        monitor: the epoch-record key that selects the best checkpoint (``"val_loss"`` by default; without
            ``evaluate`` the epoch's mean ``train_loss`` is used).
        mode: ``"min"`` or ``"max"``: whether smaller or larger ``monitor`` is better.
        seed: seeds the run (global RNGs: ``seed + rank``; data order: ``seed``).
        shuffle, drop_last, collate_fn, num_workers: data loading (``None``: from the ``DataLoader``, else
            ``True``, ``True``, the default collate, ``0``).
        log_every: write a step record every this many steps (the mean of the steps since the last record).
        checkpoint_every: also save ``last`` every this many steps inside an epoch (``None`` or 0: only at
            epoch ends).
        progress: show progress on rank 0: a tqdm bar when stderr is a terminal, otherwise one
            flushed line per epoch on stderr (``epoch 3/20 loss 1.234 val_loss 1.456``). A string
            is a label put before each line / the bar (``"[2/6] byol: "``); ``False`` or ``""``:
            silent.
        resume: continue from ``out_dir/checkpoints/last.json`` if it exists (a fresh run otherwise).
        device: where to train (default: ``cuda:LOCAL_RANK`` in a NCCL run, else where the system's
            parameters already are — pass ``"cuda"`` to train a CPU-built model on the GPU).
        find_unused_parameters: passed to ``DistributedDataParallel``.
    """

    def __init__(
        self,
        system: nn.Module,
        train_data: Dataset[Any] | DataLoader[Any] | Sequence[Tensor],
        *,
        epochs: int,
        lr: float,
        out_dir: str | os.PathLike[str],
        batch_size: int | None = None,
        weight_decay: float = 0.01,
        warmup_steps: int | None = None,
        warmup_fraction: float | None = None,
        min_lr_ratio: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        grad_clip: float | None = None,
        evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
        monitor: str = "val_loss",
        mode: str = "min",
        seed: int = 0,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int | None = None,
        log_every: int = 10,
        checkpoint_every: int | None = 1000,
        progress: bool | str = True,
        resume: bool = False,
        device: str | torch.device | None = None,
        find_unused_parameters: bool = False,
    ) -> None:
        if not isinstance(system, nn.Module):
            raise ValueError(f"system must be an nn.Module, got {type(system).__name__}")
        if not callable(getattr(system, "training_step", None)):
            raise ValueError(
                f"system ({type(system).__name__}) must define training_step(batch) -> dict with a 'loss'"
            )
        self.epochs = check_int(epochs, "epochs", 1)
        check_positive(float(lr), "lr")
        check_positive(float(weight_decay), "weight_decay", allow_zero=True)
        if grad_clip is not None:
            check_positive(float(grad_clip), "grad_clip")
        if not (isinstance(min_lr_ratio, (int, float)) and 0.0 <= min_lr_ratio <= 1.0):
            raise ValueError(f"min_lr_ratio must be a number in [0, 1], got {min_lr_ratio!r}")
        check_choice(mode, "mode", ("min", "max"))
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be a metric name, got {monitor!r}")
        if evaluate is not None and not callable(evaluate):
            raise ValueError(f"evaluate must be a callable(system) -> dict, got {type(evaluate).__name__}")
        self.seed = check_int(seed, "seed", 0)
        self.log_every = check_int(log_every, "log_every", 1)
        self.checkpoint_every = (
            0 if checkpoint_every is None else check_int(checkpoint_every, "checkpoint_every", 0)
        )

        # ---- processes and device
        if (
            os.environ.get("WORLD_SIZE", "1") not in ("", "1")
            and dist.is_available()
            and not dist.is_initialized()
        ):
            setup_distributed()
        self.dist: DistInfo = dist_info()
        if device is None:
            if self.dist.distributed:
                device = self.dist.device
            else:
                first = next(iter(system.parameters()), None)
                device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)

        # ---- data
        loader_shuffle: bool | None = None
        if isinstance(train_data, DataLoader):
            loader = train_data
            if isinstance(loader.dataset, IterableDataset):
                raise ValueError("train_data: an IterableDataset cannot be resumed; pass a map-style Dataset")
            if batch_size is None:
                if loader.batch_size is None:
                    raise ValueError("batch_size is required: the DataLoader has a custom batch_sampler")
                batch_size = loader.batch_size * self.dist.world_size
            loader_shuffle = isinstance(loader.sampler, RandomSampler)
            drop_last = loader.drop_last if drop_last is None else drop_last
            if collate_fn is None and loader.collate_fn is not torch.utils.data.default_collate:
                collate_fn = loader.collate_fn
            num_workers = loader.num_workers if num_workers is None else num_workers
            dataset: Any = loader.dataset
        elif (
            isinstance(train_data, (list, tuple))
            and train_data
            and all(isinstance(t, Tensor) for t in train_data)
        ):
            rows = {t.shape[0] if t.dim() else -1 for t in train_data}
            if len(rows) != 1 or -1 in rows:
                shapes = ", ".join(str(tuple(t.shape)) for t in train_data)
                raise ValueError(f"train_data tensors must have the same number of rows, got shapes {shapes}")
            dataset = TensorDataset(*train_data)
        elif isinstance(train_data, Dataset) or (
            hasattr(train_data, "__getitem__") and hasattr(train_data, "__len__")
        ):
            dataset = train_data
        else:
            raise ValueError(
                "train_data must be a map-style Dataset, a DataLoader or a sequence of tensors, "
                f"got {type(train_data).__name__}"
            )
        self.dataset = dataset
        self.num_samples = len(dataset)
        if self.num_samples < 1:
            raise ValueError("train_data is empty")
        if batch_size is None:
            raise ValueError("batch_size is required when train_data is not a DataLoader")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        if self.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size (the global batch) must be a multiple of world_size = {self.dist.world_size}, "
                f"got {self.batch_size}"
            )
        if shuffle is None:
            shuffle = True if loader_shuffle is None else loader_shuffle
        self.shuffle = bool(shuffle)
        self.drop_last = True if drop_last is None else bool(drop_last)
        self.collate_fn = collate_fn
        self.num_workers = 0 if num_workers is None else check_int(num_workers, "num_workers", 0)
        self.steps_per_epoch = len(
            shard_batches(range(self.num_samples), self.batch_size, 0, self.dist.world_size, self.drop_last)
        )
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size = {self.batch_size} with drop_last leaves no batch "
                f"from {self.num_samples} samples"
            )
        self.total_steps = self.epochs * self.steps_per_epoch
        if warmup_steps is not None and warmup_fraction is not None:
            raise ValueError("give warmup_steps or warmup_fraction, not both")
        if warmup_fraction is not None:
            if not (isinstance(warmup_fraction, (int, float)) and 0.0 <= warmup_fraction <= 1.0):
                raise ValueError(f"warmup_fraction must be a number in [0, 1], got {warmup_fraction!r}")
            warmup_steps = round(warmup_fraction * self.total_steps)
        self.warmup_steps = 0 if warmup_steps is None else check_int(warmup_steps, "warmup_steps", 0)
        if self.warmup_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps must be ≤ the total number of steps {self.total_steps}, "
                f"got {self.warmup_steps}"
            )

        # ---- model, optimiser, schedule
        self.system = system.to(self.device)
        groups = parameter_groups(system, weight_decay)
        if not groups:
            raise ValueError(f"system ({type(system).__name__}) has no trainable parameters")
        self.optimizer = AdamW(groups, lr=float(lr), betas=betas, eps=eps)
        total, warmup, min_ratio = self.total_steps, self.warmup_steps, float(min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda k: warmup_cosine(k, total, warmup, min_ratio)
        )
        self._step_module: nn.Module = _StepModule(system)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._step_module = DistributedDataParallel(
                self._step_module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
            )
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.evaluate = evaluate
        self.monitor = monitor
        self.mode = mode
        self.progress = progress
        self.resume = resume

        # ---- files
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.last_path = self.checkpoint_dir / "last.json"
        self.best_path = self.checkpoint_dir / "best.json"
        if self.dist.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

        # ---- loop state (set by _fresh_start / _restore)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._gen = torch.Generator()
        self._epoch_gen_state = self._gen.get_state()
        self._epoch_sums: dict[str, float] = {}
        self._epoch_count = 0
        self._window_sums: dict[str, float] = {}
        self._window_count = 0

    # ------------------------------------------------------------------------------------------ public

    @property
    def config(self) -> dict[str, Any]:
        """What must not change between a run and its resume."""
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def fit(self, resume: bool | None = None) -> FitResult:
        """Train to the last epoch; with ``resume`` (default: the constructor's) continue from
        ``checkpoints/last.json`` when it exists. Returns a :class:`FitResult`.

        Raises:
            ValueError: a corrupt checkpoint, a checkpoint from an incompatible configuration, or a
                ``training_step`` / ``evaluate`` result of the wrong form.
            FloatingPointError: the loss became NaN or infinite (the message gives the step).
        """
        resume = self.resume if resume is None else resume
        if resume and self.last_path.is_file():
            self._restore(load_checkpoint(self.last_path))
        else:
            self._fresh_start()
        result = FitResult(global_step=self.step)
        label = self.progress if isinstance(self.progress, str) else ""
        # a bar of steps in a terminal, else one line per epoch (printed at each epoch's end); rank 0 only
        shown = Progress(
            self.total_steps,
            label,
            unit="step",
            enabled=bool(self.progress) and self.dist.is_main,
            lines=0,
            initial=self.step,
            leave=True,
        )
        if self.step:  # --resume must not look like a fresh run
            shown.say(f"resumed after epoch {self.epoch}/{self.epochs}, step {self.step}")
        try:
            self.system.train()
            while self.epoch < self.epochs:
                self._run_epoch(shown, result)
        finally:
            shown.close()
        if self.dist.distributed:
            dist.barrier()
        result.global_step = self.step
        result.best_value = self.best_value
        result.best_epoch = self.best_epoch
        result.last_checkpoint = self.last_path if self.last_path.is_file() else None
        result.best_checkpoint = self.best_path if self.best_path.is_file() else None
        return result

    def load_best(self) -> Checkpoint:
        """Load ``checkpoints/best.json``'s weights into the system and return the checkpoint."""
        ckpt = load_checkpoint(self.best_path)
        ckpt.load_into(self.system)
        return ckpt

    # ------------------------------------------------------------------------------------- the loop

    def _run_epoch(self, shown: Progress, result: FitResult) -> None:
        epoch = self.epoch
        self._epoch_gen_state = self._gen.get_state()
        order = (
            torch.randperm(self.num_samples, generator=self._gen)
            if self.shuffle
            else torch.arange(self.num_samples)
        )
        batches = shard_batches(order, self.batch_size, self.dist.rank, self.dist.world_size, self.drop_last)
        shown.describe(f"{shown.prefix}epoch {epoch + 1}/{self.epochs}")
        window_start = time.perf_counter()
        window_rows = 0
        for b, batch in enumerate(
            self._iterate(batches[self.batch_in_epoch :], epoch), start=self.batch_in_epoch
        ):
            values, lr = self._train_step(batch)
            self.batch_in_epoch = b + 1
            rows = len(batches[b]) * self.dist.world_size
            window_rows += rows
            for k, v in values.items():
                self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
                self._window_sums[k] = self._window_sums.get(k, 0.0) + v
            self._epoch_count += 1
            self._window_count += 1
            logged = self.step % self.log_every == 0 or self.step == self.total_steps
            if logged or shown.drawing:
                elapsed = time.perf_counter() - window_start
                rate = window_rows / elapsed if elapsed > 0 else float("nan")
            if shown.drawing:  # a bar only in a terminal: no formatting otherwise
                shown.update(1, loss=f"{values['loss']:.4f}", samples_s=f"{rate:.0f}")
            if logged:
                record = {
                    "type": "step",
                    "step": self.step,
                    "epoch": epoch + 1,
                    **{k: v / self._window_count for k, v in self._window_sums.items()},
                    "lr": lr,
                    "samples_per_s": rate,
                }
                self._log(record)
                result.steps.append(record)
                self._window_sums, self._window_count = {}, 0
                window_start, window_rows = time.perf_counter(), 0
            if (
                self.checkpoint_every
                and self.step % self.checkpoint_every == 0
                and self.batch_in_epoch < len(batches)
            ):
                self._save_last()
        # ---- epoch end
        record: dict[str, Any] = {"type": "epoch", "epoch": epoch + 1, "step": self.step}
        count = max(1, self._epoch_count)
        record.update({f"train_{k}": v / count for k, v in self._epoch_sums.items()})
        record.update(self._run_evaluate())
        key = self.monitor if (self.evaluate is not None or self.monitor in record) else "train_loss"
        if key not in record:
            available = sorted(k for k in record if k not in ("type", "epoch", "step"))
            raise ValueError(f"monitor {self.monitor!r} is not among the epoch's metrics {available}")
        value = record[key]
        improved = (
            isinstance(value, (int, float))
            and math.isfinite(value)
            and (
                self.best_value is None
                or (value < self.best_value if self.mode == "min" else value > self.best_value)
            )
        )
        record["monitor"] = key
        record["best"] = bool(improved)
        self.epoch = epoch + 1
        self.batch_in_epoch = 0
        self._epoch_sums, self._epoch_count = {}, 0
        if improved:
            self.best_value, self.best_epoch = float(value), epoch + 1
        self._log(record)
        result.epochs.append(record)
        if shown.plain:
            values = " ".join(
                f"{'loss' if k == 'train_loss' else k} {v:.4g}"
                for k, v in record.items()
                if (k == "train_loss" or k.startswith("val_")) and isinstance(v, float)
            )
            shown.line(f"epoch {self.epoch}/{self.epochs} {values}")
        if improved and self.dist.is_main:
            save_checkpoint(
                self.best_path,
                self.system,
                state={
                    "epoch": self.epoch,
                    "step": self.step,
                    "monitor": key,
                    "value": float(value),
                    "metrics": {k: v for k, v in record.items() if isinstance(v, (int, float))},
                },
            )
        self._save_last()

    def _iterate(self, batches: list[list[int]], epoch: int) -> Iterator[Any]:
        dataset = self.dataset
        if isinstance(dataset, TensorDataset) and self.num_workers == 0 and self.collate_fn is None:
            # one list → tensor conversion per epoch (per batch it was the largest per-step cost)
            flat = torch.tensor([i for idx in batches for i in idx], dtype=torch.long)
            for index in torch.split(flat, [len(idx) for idx in batches]):
                yield [t[index] for t in dataset.tensors]  # what default_collate gives for tuples
            return
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        loader = DataLoader(
            dataset,
            batch_sampler=_ListBatchSampler(batches),
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_seed_worker,
            generator=generator,  # base seed of the workers; keeps the global RNG untouched
        )
        yield from loader

    def _train_step(self, batch: Any) -> tuple[dict[str, float], float]:
        """One optimiser step; returns the step's scalars (averaged over ranks) and its learning rate."""
        batch = _to_device(batch, self.device)
        out = self._step_module(batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise ValueError(
                f"training_step must return a mapping with a 'loss' entry, got {type(out).__name__}"
                + (f" with keys {sorted(out)}" if isinstance(out, Mapping) else "")
            )
        loss = out["loss"]
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            raise ValueError(
                f"training_step's 'loss' must be a floating scalar tensor, got "
                f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, Tensor) else ''}"
            )
        if not loss.requires_grad:
            raise ValueError(
                "training_step's 'loss' does not require grad: no trainable parameter reaches it"
            )
        names, scalars = ["loss"], [loss.detach().reshape(()).float()]
        for k, v in out.items():
            if k == "loss":
                continue
            if isinstance(v, Tensor) and v.numel() == 1:
                names.append(str(k))
                scalars.append(v.detach().reshape(()).float().to(loss.device))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                names.append(str(k))
                scalars.append(torch.tensor(float(v), device=loss.device))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            names.append("grad_norm")
            scalars.append(torch.nn.utils.clip_grad_norm_(params, self.grad_clip).detach().float())
        reduced = all_reduce_mean(torch.stack(scalars)).tolist()
        values = dict(zip(names, reduced, strict=True))
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(
                f"the loss is {values['loss']} at step {self.step + 1} (epoch {self.epoch + 1}, "
                f"batch {self.batch_in_epoch + 1}); the weights were not updated"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        hook = getattr(self.system, "after_optimizer_step", None)
        if callable(hook):
            hook(self.step - 1, self.total_steps)
        return values, lr

    def _run_evaluate(self) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        self.system.eval()
        try:
            with torch.no_grad():
                metrics = self.evaluate(self.system)
        finally:
            self.system.train()
        if not isinstance(metrics, Mapping):
            raise ValueError(
                f"evaluate must return a mapping of metric names to numbers, got {type(metrics).__name__}"
            )
        out = {}
        for k, v in metrics.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"evaluate returned a non-numeric value for {k!r}: {v!r:.60}") from None
        return out

    # ------------------------------------------------------------------------------- files and state

    def _log(self, record: Mapping[str, Any]) -> None:
        if not self.dist.is_main:
            return
        clean = json_safe(record)
        line = json.dumps(clean, allow_nan=False)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def _state(self) -> dict[str, Any]:
        rng = _rng_state(self.device)
        if self.dist.distributed:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "world_size": self.dist.world_size,
            "config": self.config,
            # the shuffling generator at the start of the current epoch: rebuilds its permutation
            "loader_generator": self._gen.get_state() if self.batch_in_epoch == 0 else self._epoch_gen_state,
            "rng": rngs,
            "best": {
                "monitor": self.monitor,
                "mode": self.mode,
                "value": self.best_value,
                "epoch": self.best_epoch,
            },
            "epoch_sums": dict(self._epoch_sums),
            "epoch_count": self._epoch_count,
            "window_sums": dict(self._window_sums),
            "window_count": self._window_count,
        }

    def _save_last(self) -> None:
        state = self._state()  # a collective in DDP: every rank takes part
        if self.dist.is_main:
            save_checkpoint(
                self.last_path, self.system, optimizer=self.optimizer, scheduler=self.scheduler, state=state
            )

    def _fresh_start(self) -> None:
        seed_everything(self.seed + self.dist.rank)
        self._gen.manual_seed(self.seed)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_value, self.best_epoch = None, None
        self._epoch_sums, self._epoch_count, self._window_sums, self._window_count = {}, 0, {}, 0
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_checkpoint(self.last_path)
            remove_checkpoint(self.best_path)
            self.metrics_path.write_text("", encoding="utf-8")
        if self.dist.distributed:
            dist.barrier()

    def _restore(self, ckpt: Checkpoint) -> None:
        state = ckpt.state
        stored = state.get("config", {})
        for key, value in self.config.items():
            if stored.get(key) != value:
                raise ValueError(
                    f"cannot resume from {ckpt.path}: {key} was {stored.get(key)!r} in that run, "
                    f"now {value!r}"
                )
        ckpt.load_into(self.system, self.optimizer, self.scheduler)
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        best = state["best"]
        self.best_value = None if best["value"] is None else float(best["value"])
        self.best_epoch = best["epoch"]
        self._gen.set_state(state["loader_generator"])
        self._epoch_sums = dict(state["epoch_sums"])
        self._epoch_count = int(state["epoch_count"])
        self._window_sums = dict(state["window_sums"])
        self._window_count = int(state["window_count"])
        rngs = state["rng"]
        _set_rng_state(rngs[self.dist.rank % len(rngs)], self.device)
        if self.dist.is_main:
            self._truncate_log()
            self._log(
                {
                    "type": "resume",
                    "step": self.step,
                    "epoch": self.epoch + 1,
                    "batch_in_epoch": self.batch_in_epoch,
                }
            )
        if self.dist.distributed:
            dist.barrier()

    def _truncate_log(self) -> None:
        """Drop the records a killed run wrote after its last checkpoint (and an unfinished last line)."""
        if not self.metrics_path.is_file():
            return
        kept = [r for r in read_metrics(self.metrics_path) if int(r.get("step", 0)) <= self.step]
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_path)
