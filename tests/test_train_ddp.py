"""Data-parallel training: 2 gloo processes on the global batch follow 1 process on the same global batch.

The sharding tests are pure functions. The slow test spawns two processes (torch.multiprocessing.spawn,
gloo, a free port) that call ``setup_distributed()`` from the torchrun-style environment and train the tiny
two-tower CLIP system with a global batch of 16 (8 rows per rank). CLIPLoss gathers the other rank's
embeddings (negatives from the global batch) and DDP averages the gradients, so the logged losses (the
mean of the ranks' values) and the final weights must equal a single-process run with batch 16.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from alignkit.losses import CLIPLoss
from alignkit.train import (
    ShardedBatchSampler,
    Trainer,
    cleanup,
    dist_info,
    load_checkpoint,
    read_metrics,
    setup_distributed,
    shard_batches,
)

WORLD = 2
GLOBAL_BATCH = 16
N_TRAIN = 96  # 6 steps per epoch
EPOCHS = 2

# ------------------------------------------------------------------------------------ sharding (fast)


def test_shard_batches_rebuild_the_global_batch() -> None:
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    single = shard_batches(order, 8, rank=0, world_size=1, drop_last=True)
    assert single == [order[i : i + 8].tolist() for i in range(0, 48, 8)]  # written out: 6 full batches
    shards = [shard_batches(order, 8, rank=r, world_size=4, drop_last=True) for r in range(4)]
    for k, batch in enumerate(single):
        assert [i for r in range(4) for i in shards[r][k]] == batch  # rank order = global batch order
        assert all(len(shards[r][k]) == 2 for r in range(4))
    # no drop_last: the final 2 rows are kept with 1 per rank when W = 2, dropped when W = 4 (2 < 4)
    kept = [shard_batches(order, 8, rank=r, world_size=2, drop_last=False) for r in range(2)]
    assert [kept[0][-1], kept[1][-1]] == [[int(order[48])], [int(order[49])]]
    assert len(shard_batches(order, 8, rank=3, world_size=4, drop_last=False)) == 6
    assert len(shard_batches(order, 8, rank=0, world_size=1, drop_last=False)) == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 6, "world_size": 4}, "multiple of world_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"world_size": 0}, "world_size"),
    ],
)
def test_shard_batches_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args = {"batch_size": 8, "rank": 0, "world_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        shard_batches(range(20), **args)


def test_sharded_batch_sampler_is_deterministic_and_partitions_each_epoch() -> None:
    samplers = [ShardedBatchSampler(37, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    seen_orders = []
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        assert all(len(s) == len(b) == 4 for s, b in zip(samplers, shards, strict=True))
        rows = [i for k in range(4) for r in range(2) for i in shards[r][k]]
        assert len(rows) == len(set(rows)) == 32 and set(rows) <= set(range(37))
        expected = torch.randperm(37, generator=torch.Generator().manual_seed(3 + epoch))[:32].tolist()
        assert rows == expected  # DistributedSampler-like: the epoch's permutation from seed + epoch
        seen_orders.append(rows)
        assert [list(s) for s in samplers] == shards  # iterating again repeats the epoch
    assert seen_orders[0] != seen_orders[1]
    samplers[1].set_epoch(2, start_batch=3)  # resume: skip the batches already seen
    assert list(samplers[1]) == shards[1][3:] and len(samplers[1]) == 1
    unshuffled = ShardedBatchSampler(10, 4, rank=0, world_size=2, shuffle=False, drop_last=False)
    assert list(unshuffled) == [[0, 1], [4, 5], [8]]
    with pytest.raises(ValueError, match="multiple of world_size"):
        ShardedBatchSampler(10, 3, rank=0, world_size=2)


def test_setup_distributed_without_launcher_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = setup_distributed()
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()
    cleanup()  # a no-op without a process group
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        dist_info()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        setup_distributed()


# ------------------------------------------------------------------------------------------- DDP (slow)


class TinyCLIP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tower_a = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 8))
        self.tower_b = nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 8))
        self.loss = CLIPLoss(init_temperature=0.1)

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        a, b = batch
        return {"loss": self.loss(self.tower_a(a), self.tower_b(b)), "rows": float(a.shape[0])}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N_TRAIN, 4, generator=g)
    xa = torch.cat([z, 0.1 * torch.randn(N_TRAIN, 6, generator=g)], 1) @ torch.randn(10, 10, generator=g)
    xb = torch.tanh(z @ torch.randn(4, 6, generator=g)) + 0.05 * torch.randn(N_TRAIN, 6, generator=g)
    return xa, xb


def _train(out_dir: Path) -> Trainer:
    torch.manual_seed(0)
    system = TinyCLIP()
    xa, xb = _data()
    trainer = Trainer(
        system, (xa, xb), batch_size=GLOBAL_BATCH, epochs=EPOCHS, lr=3e-3, warmup_steps=2, out_dir=out_dir,
        log_every=1, checkpoint_every=4, seed=0, progress=False,
    )  # fmt: skip
    trainer.fit()
    return trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(WORLD),
         "LOCAL_RANK": str(rank)}
    )  # fmt: skip
    torch.set_num_threads(1)
    info = setup_distributed(backend="gloo")
    try:
        trainer = _train(Path(root) / f"rank{rank}")
        report = {
            "rank": info.rank,
            "world_size": info.world_size,
            "wrapped": type(trainer._step_module).__name__,
            "local_batch": trainer.batch_size // info.world_size,
        }
        (Path(root) / f"report{rank}.json").write_text(json.dumps(report))
    finally:
        cleanup()


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in range(WORLD)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["wrapped"] == "DistributedDataParallel" for r in reports)
    assert not (tmp_path / "rank1").exists()  # only rank 0 writes logs and checkpoints

    single = _train(tmp_path / "single")
    ddp_records = read_metrics(tmp_path / "rank0" / "metrics.jsonl")
    one_records = read_metrics(tmp_path / "single" / "metrics.jsonl")
    ddp_steps = [r for r in ddp_records if r["type"] == "step"]
    one_steps = [r for r in one_records if r["type"] == "step"]
    assert len(ddp_steps) == len(one_steps) == EPOCHS * N_TRAIN // GLOBAL_BATCH
    for a, b in zip(ddp_steps, one_steps, strict=True):
        assert a["step"] == b["step"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
        assert a["rows"] == GLOBAL_BATCH // WORLD and b["rows"] == GLOBAL_BATCH  # each rank saw half
        assert a["lr"] == b["lr"]
    # the losses move, so agreement is not trivial
    assert ddp_steps[-1]["loss"] < ddp_steps[0]["loss"] - 0.3

    ddp_last = load_checkpoint(tmp_path / "rank0" / "checkpoints" / "last.json")
    assert len(ddp_last.state["rng"]) == WORLD  # every rank's RNG state is kept
    for name, value in single.system.state_dict().items():
        torch.testing.assert_close(ddp_last.model[name], value, atol=1e-4, rtol=1e-4, msg=name)
