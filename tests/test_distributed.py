"""Two gloo processes on CPU must reproduce single-process training on the global batch.

Each rank embeds its shard with a replicated linear tower, the loss module all-gathers with
gradient, and the parameter gradients are averaged across ranks as DistributedDataParallel does.
Loss (averaged over ranks) and averaged gradients must equal the single-process values.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from alignkit import losses
from alignkit.distributed import gather_with_grad

WORLD = 2
PER_RANK = 6
CASES: dict[str, dict[str, Any]] = {
    "info_nce_local": {"loss": "info_nce", "symmetric": True, "local_loss": True, "temperature": 0.2},
    "info_nce_global": {"loss": "info_nce", "symmetric": True, "local_loss": False, "temperature": 0.2},
    "info_nce_one_way_tiled": {"loss": "info_nce", "symmetric": False, "chunk_size": 5, "temperature": 0.2},
    "clip": {"loss": "clip", "init_temperature": 0.1},
    "clip_global_tiled": {"loss": "clip", "local_loss": False, "chunk_size": 4},
    "siglip": {"loss": "siglip"},
    "supcon": {"loss": "supcon", "temperature": 0.3},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * PER_RANK, 7, generator=g, dtype=torch.float64)
    y = torch.randn(WORLD * PER_RANK, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 2, 2, 0, 1, 3, 3])
    return x, y, labels


def _towers() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(3)
    return nn.Linear(7, 4).double(), nn.Linear(5, 4).double()


def _step(config: dict[str, Any], x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Loss and gradients of one step; the loss module is built fresh with the same init everywhere."""
    tower_x, tower_y = _towers()
    config = dict(config)
    criterion = losses.build(config.pop("loss"), **config).double()
    a, b = tower_x(x), tower_y(y)
    if isinstance(criterion, losses.SupConLoss):
        loss = criterion(torch.stack([a, b], dim=1), labels)
    else:
        loss = criterion(a, b)
    params = [*tower_x.parameters(), *tower_y.parameters(), *criterion.parameters()]
    grads = torch.autograd.grad(loss, params)
    return {"loss": loss.detach(), "grads": [g.detach() for g in grads]}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y, labels = _data()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results = {}
        for name, config in CASES.items():
            step = _step(config, x[rows], y[rows], labels[rows])
            # What DDP does: average gradients and (for logging) losses over ranks.
            for t in [step["loss"], *step["grads"]]:
                dist.all_reduce(t)
                t /= WORLD
            results[name] = step
        # gather_with_grad itself: rank order and summed gradients.
        v = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_with_grad(v)
        (gathered * torch.arange(4.0).unsqueeze(1)).sum().backward()
        results["gather"] = {"value": gathered.detach(), "grad": v.grad}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process_on_global_batch(
    distributed_results: list[dict[str, Any]], name: str
) -> None:
    x, y, labels = _data()
    single = _step(CASES[name], x, y, labels)
    for rank_result in distributed_results:
        got = rank_result[name]
        torch.testing.assert_close(got["loss"], single["loss"], rtol=1e-10, atol=1e-12)
        for g_dist, g_single in zip(got["grads"], single["grads"], strict=True):
            torch.testing.assert_close(g_dist, g_single, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_gather_with_grad_concatenates_in_rank_order_and_sums_gradients(
    distributed_results: list[dict[str, Any]],
) -> None:
    expected = torch.tensor([[1.0] * 3, [1.0] * 3, [2.0] * 3, [2.0] * 3])
    for rank, result in enumerate(distributed_results):
        torch.testing.assert_close(result["gather"]["value"], expected)
        # d/dv of Σ_ranks Σ_i i·gathered_i: each rank contributes i for its rows, summed over 2 ranks.
        rows = torch.arange(4.0)[rank * 2 : rank * 2 + 2]
        torch.testing.assert_close(result["gather"]["grad"], (WORLD * rows).unsqueeze(1).expand(2, 3))


def test_gather_with_grad_is_identity_without_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
