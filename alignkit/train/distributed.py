"""Process-group set-up and deterministic global-batch sharding for data-parallel training.

``torchrun --nproc_per_node=2 -m alignkit train …`` starts one process per device with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment;
:func:`setup_distributed` turns that into an initialised ``torch.distributed`` group (gloo on CPU, NCCL on
CUDA) and :func:`cleanup` tears it down.

Sharding keeps *global* batches: global batch ``k`` is rows ``k·B … (k+1)·B − 1`` of the epoch's
permutation, and rank ``r`` of ``W`` takes the ``r``-th contiguous block of ``B/W`` of them. Concatenating
the ranks' local batches in rank order therefore gives exactly the batch a single process would see,
which — with the loss modules gathering negatives across ranks and DDP averaging gradients (see
:mod:`alignkit.distributed`) — makes a ``W``-process run follow the single-process run on the same global
batch. (``torch.utils.data.DistributedSampler`` interleaves ``perm[r::W]`` instead, which changes which
rows meet in a batch when ``W`` changes.)
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from alignkit.functional._checks import check_int

__all__ = [
    "DistInfo",
    "ShardedBatchSampler",
    "all_reduce_mean",
    "cleanup",
    "dist_info",
    "setup_distributed",
    "shard_batches",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and shows a progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be ≥ 0, got {value}")
    return value


def dist_info() -> DistInfo:
    """The current process's rank, world size, local rank and device, from the initialised process group
    if there is one, else from the environment (rank 0 of 1 when nothing is set)."""
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if torch.cuda.is_available() and (not dist.is_initialized() or dist.get_backend() == dist.Backend.NCCL):
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    else:
        device = torch.device("cpu")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def setup_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise ``torch.distributed`` from the environment that ``torchrun`` sets.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT`` through the
    ``env://`` rendezvous). With ``WORLD_SIZE`` unset or 1 nothing is initialised and rank 0 of 1 is
    returned; an already initialised group is left as it is. Backend: ``backend`` if given, else NCCL
    when CUDA is available and gloo otherwise; with NCCL the current CUDA device is set to
    ``LOCAL_RANK``.

    Returns:
        :class:`DistInfo`. Cost: one rendezvous.
    """
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world <= 1:
        return dist_info()
    if rank >= world:
        raise ValueError(f"environment variable RANK must be < WORLD_SIZE = {world}, got {rank}")
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    local_rank = _env_int("LOCAL_RANK", 0)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return dist_info()


def cleanup() -> None:
    """Destroy the default process group if one is initialised (safe to call in any case)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over all ranks (``x`` itself when not distributed). Cost: one all-reduce of
    ``x.numel()`` numbers."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def shard_batches(
    order: Tensor | Sequence[int],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> list[list[int]]:
    """Cut an epoch's sample ``order`` into global batches of ``batch_size`` and return rank ``rank``'s
    contiguous share of each.

    Global batch ``k`` is ``order[k·B : (k+1)·B]``; rank ``r`` gets its rows ``r·B/W … (r+1)·B/W − 1``,
    so concatenating the ranks' lists in rank order rebuilds the global batch. A final partial batch of
    ``m < B`` rows is dropped when ``drop_last``, else kept with ``⌊m/W⌋`` rows per rank (its last
    ``m mod W`` rows are dropped so every rank has the same number; nothing is kept if ``m < W``).

    Args:
        order: the epoch's permutation of ``0 … N−1`` (N,).
        batch_size: global batch size ``B``, a multiple of ``world_size``.
        rank: this rank ``r``.
        world_size: ``W``.
        drop_last: drop a final partial global batch.

    Returns:
        One list of ``B/W`` (or fewer, last batch) indices per global batch. Cost: O(N).
    """
    check_int(batch_size, "batch_size", 1)
    check_int(world_size, "world_size", 1)
    check_int(rank, "rank", 0, world_size - 1, what=f" (world_size = {world_size})")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size (the global batch) must be a multiple of world_size = {world_size}, got {batch_size}"
        )
    indices = order.tolist() if isinstance(order, Tensor) else list(order)
    n = len(indices)
    batches = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        if size < batch_size and drop_last:
            break
        per_rank = size // world_size
        if per_rank == 0:
            break
        lo = start + rank * per_rank
        batches.append(indices[lo : lo + per_rank])
    return batches


class ShardedBatchSampler(Sampler[list[int]]):
    """A ``DistributedSampler``-equivalent batch sampler over global batches (see :func:`shard_batches`).

    Epoch ``e``'s order is ``torch.randperm(N)`` drawn from a generator seeded with ``seed + e`` (the same
    on every rank), or ``0 … N−1`` without ``shuffle``. Call :meth:`set_epoch` before each epoch, as with
    ``DistributedSampler``; ``start_batch`` skips the first batches of the epoch (resuming mid-epoch).
    Use it as ``DataLoader(dataset, batch_sampler=ShardedBatchSampler(...))``.

    Args:
        num_samples: dataset length ``N``.
        batch_size: the *global* batch size ``B`` (a multiple of the world size); each rank yields ``B/W``.
        rank, world_size: default to the initialised process group (0 and 1 without one).
        shuffle: permute each epoch.
        drop_last: drop a final partial global batch.
        seed: base seed, identical on every rank.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        info = dist_info()
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.world_size = info.world_size if world_size is None else check_int(world_size, "world_size", 1)
        self.rank = info.rank if rank is None else rank
        check_int(self.rank, "rank", 0, self.world_size - 1, what=f" (world_size = {self.world_size})")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = check_int(seed, "seed", 0)
        self.epoch = 0
        self.start_batch = 0
        # validates batch_size against world_size early
        shard_batches(range(0), self.batch_size, self.rank, self.world_size, self.drop_last)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select epoch ``epoch``'s permutation and skip its first ``start_batch`` batches."""
        self.epoch = check_int(epoch, "epoch", 0)
        self.start_batch = check_int(start_batch, "start_batch", 0)

    def order(self) -> Tensor:
        """This epoch's sample order (N,)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        batches = shard_batches(self.order(), self.batch_size, self.rank, self.world_size, self.drop_last)
        yield from batches[self.start_batch :]

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        last = 0 if self.drop_last or rest // self.world_size == 0 else 1
        return max(0, full + last - self.start_batch)
