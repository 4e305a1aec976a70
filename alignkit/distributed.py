"""All-gather with gradient, the one collective the contrastive losses need.

Loss modules take ``process_group``: when ``torch.distributed`` is initialised they gather every
rank's embeddings (so negatives come from the global batch) and gradients flow back to the rank
that produced each row. As in open_clip, the gradient that reaches a rank's local rows is
``world_size`` times the gradient of the global-batch loss; DistributedDataParallel's gradient
averaging divides that factor out, so parameter gradients equal single-process training on the
global batch.
"""

from __future__ import annotations

import torch.distributed as dist
import torch.distributed._functional_collectives as fcol
from torch import Tensor

__all__ = ["gather_with_grad", "rank", "world_size"]


def _active(group: object | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group: object | None = None) -> int:
    """Number of processes in ``group`` (1 when torch.distributed is not initialised)."""
    return dist.get_world_size(group) if _active(group) else 1


def rank(group: object | None = None) -> int:
    """This process's rank in ``group`` (0 when torch.distributed is not initialised)."""
    return dist.get_rank(group) if _active(group) else 0


def gather_with_grad(x: Tensor, group: object | None = None) -> Tensor:
    """All-gather ``x`` (n, ...) from every rank of ``group`` into (world_size·n, ...), rank order.

    Every rank must pass the same ``n``. Without an initialised process group (or with one
    process) ``x`` is returned as is, so single-process code needs no special case.
    """
    if not _active(group):
        return x
    pg = group if group is not None else dist.group.WORLD
    # Functional collective with autograd: backward is a reduce-scatter (sum) of the gradient.
    return fcol.wait_tensor(fcol.all_gather_single_autograd(x.contiguous(), 0, pg))
