"""Two gloo processes: every metric's compute() on every rank equals one process on all the data.

Each rank updates with its own shard — shards of unequal sizes (and, for some metrics, a rank with
no data at all), so the 'cat' states are gathered with padding and the 0-d defaults are broadcast.
After compute() the local states are restored: further updates keep accumulating locally, and a
second compute() over the grown shards again equals one process on everything.
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

import alignkit.functional as AF
from alignkit.metrics import Metric, MinibatchCKA, MultiLayerCKA, RetrievalMetric, StreamingLinearCKA

WORLD = 2
N = 100
CUT = 37  # rank 0 holds rows [0, 37), rank 1 rows [37, 100): unequal shards
EXTRA = 30  # rows [100, 130) arrive after the first compute(), split 10 / 20
F64 = torch.float64


class _Probe(Metric):
    """One state of each reduction."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=F64), "sum")
        self.add_state("hi", torch.tensor(-torch.inf, dtype=F64), "max")
        self.add_state("lo", torch.tensor(torch.inf, dtype=F64), "min")
        self.add_state("rows", [], "cat")

    def update(self, x: torch.Tensor) -> None:
        self.total = self.total + x.sum()
        self.hi = torch.maximum(self.hi, x.amax(0))
        self.lo = torch.minimum(self.lo, x.amin(0))
        self.rows.append(x)

    def _compute(self) -> dict[str, torch.Tensor]:
        return {"total": self.total, "hi": self.hi, "lo": self.lo, "rows": torch.cat(self.rows)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N + EXTRA, 6, generator=g, dtype=F64)
    y = x[:, :3] @ torch.randn(3, 6, generator=g, dtype=F64) + torch.randn(
        N + EXTRA, 6, generator=g, dtype=F64
    )
    return x, y


def _shard(rank: int) -> slice:
    return slice(0, CUT) if rank == 0 else slice(CUT, N)


def _extra(rank: int) -> slice:
    return slice(N, N + 10) if rank == 0 else slice(N + 10, N + EXTRA)


# Minibatches (start, stop) of MinibatchCKA: rank 0 gets two, rank 1 one (unequal counts and sizes).
_MINIBATCHES = {0: [(0, 16), (16, 37)], 1: [(37, 100)]}


def _feed(metric: Metric, x: torch.Tensor, y: torch.Tensor, rows: slice, step: int = 15) -> None:
    for start in range(rows.start, rows.stop, step):
        stop = min(start + step, rows.stop)
        metric.update(x[start:stop], y[start:stop])


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y = _data()
        shard, extra = _shard(rank), _extra(rank)
        out: dict[str, Any] = {}

        cka = StreamingLinearCKA()
        _feed(cka, x, y, shard)
        out["cka"] = cka.compute()
        out["cka_local_n"] = int(cka.n)  # restored after compute()
        _feed(cka, x, y, extra)
        out["cka_more"] = cka.compute()

        lonely = StreamingLinearCKA()  # rank 1 never updates
        if rank == 0:
            _feed(lonely, x, y, shard)
        out["cka_lonely"] = lonely.compute()

        layers = MultiLayerCKA(2, 1)
        for start in range(shard.start, shard.stop, 20):
            stop = min(start + 20, shard.stop)
            layers.update([x[start:stop], x[start:stop, :2]], [y[start:stop]])
        out["layers"] = layers.compute()

        mb = MinibatchCKA()
        mb_rbf = MinibatchCKA("rbf", threshold=0.5)
        for start, stop in _MINIBATCHES[rank]:
            mb.update(x[start:stop], y[start:stop])
            mb_rbf.update(x[start:stop], y[start:stop])
        out["minibatch"] = mb.compute()
        out["minibatch_rbf"] = mb_rbf.compute()

        retrieval = RetrievalMetric(k=(1, 5, 10))
        _feed(retrieval, x, y, shard, step=25)
        out["retrieval"] = retrieval.compute()
        out["retrieval_local_rows"] = sum(t.shape[0] for t in retrieval.query)
        _feed(retrieval, x, y, extra)
        out["retrieval_more"] = retrieval.compute()

        retrieval_lonely = RetrievalMetric(k=(1, 5))
        if rank == 1:
            _feed(retrieval_lonely, x, y, shard)
        out["retrieval_lonely"] = retrieval_lonely.compute()

        probe = _Probe()
        probe.update(x[shard])
        out["probe"] = probe.compute()
        probe.sync()  # explicit sync / unsync
        out["probe_synced_rows"] = torch.cat(probe.rows).shape[0]
        probe.unsync()
        out["probe_unsynced_rows"] = torch.cat(probe.rows).shape[0]

        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("metrics_ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _single(metric: Metric, x: torch.Tensor, y: torch.Tensor, stop: int) -> Any:
    _feed(metric, x, y, slice(0, stop), step=stop)
    return metric.compute()


@pytest.mark.slow
def test_streaming_linear_cka_two_ranks_equal_one_process(results: list[dict[str, Any]]) -> None:
    x, y = _data()
    full = _single(StreamingLinearCKA(), x, y, N)
    full_more = _single(StreamingLinearCKA(), x, y, N + EXTRA)
    lonely = _single(StreamingLinearCKA(), x, y, CUT)
    assert abs(full.item() - full_more.item()) > 1e-4  # the extra rows change the value
    for rank, r in enumerate(results):
        assert r["cka"].item() == pytest.approx(full.item(), abs=1e-12)
        assert r["cka"].item() == pytest.approx(AF.cka(x[:N], y[:N]).item(), abs=1e-12)
        assert r["cka_local_n"] == (CUT if rank == 0 else N - CUT)
        assert r["cka_more"].item() == pytest.approx(full_more.item(), abs=1e-12)
        assert r["cka_lonely"].item() == pytest.approx(lonely.item(), abs=1e-12)


@pytest.mark.slow
def test_multilayer_cka_two_ranks_equal_one_process(results: list[dict[str, Any]]) -> None:
    x, y = _data()
    expected = torch.tensor([[AF.cka(x[:N], y[:N]).item()], [AF.cka(x[:N, :2], y[:N]).item()]], dtype=F64)
    for r in results:
        torch.testing.assert_close(r["layers"], expected, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "kernel", "threshold"), [("minibatch", "linear", 1.0), ("minibatch_rbf", "rbf", 0.5)]
)
def test_minibatch_cka_two_ranks_equal_one_process(
    results: list[dict[str, Any]], key: str, kernel: str, threshold: float
) -> None:
    x, y = _data()
    single = MinibatchCKA(kernel, threshold=threshold)
    for start, stop in [*_MINIBATCHES[0], *_MINIBATCHES[1]]:
        single.update(x[start:stop], y[start:stop])
    for r in results:
        assert r[key].item() == pytest.approx(single.compute().item(), abs=1e-12)


@pytest.mark.slow
def test_retrieval_two_ranks_equal_one_process_in_rank_order(results: list[dict[str, Any]]) -> None:
    x, y = _data()
    full = AF.recall_at_k(x[:N], y[:N], k=(1, 5, 10))
    # rows more than the two shards: rank 0's [0, 37) + [100, 110), then rank 1's [37, 100) + [110, 130)
    order = torch.cat(
        [torch.arange(0, CUT), torch.arange(N, N + 10), torch.arange(CUT, N), torch.arange(N + 10, N + EXTRA)]
    )
    more = AF.recall_at_k(x[order], y[order], k=(1, 5, 10))
    lonely = AF.recall_at_k(x[CUT:N], y[CUT:N], k=(1, 5))
    assert full["recall@1"] < 1.0 and full != more
    for rank, r in enumerate(results):
        assert r["retrieval"] == full
        assert r["retrieval_local_rows"] == (CUT if rank == 0 else N - CUT)
        assert r["retrieval_more"] == more
        assert r["retrieval_lonely"] == lonely


@pytest.mark.slow
def test_every_reduction_merges_across_ranks(results: list[dict[str, Any]]) -> None:
    x, _ = _data()
    for rank, r in enumerate(results):
        probe = r["probe"]
        torch.testing.assert_close(probe["total"], x[:N].sum(), rtol=0, atol=1e-10)
        torch.testing.assert_close(probe["hi"], x[:N].amax(0), rtol=0, atol=0)
        torch.testing.assert_close(probe["lo"], x[:N].amin(0), rtol=0, atol=0)
        torch.testing.assert_close(probe["rows"], x[:N], rtol=0, atol=0)  # rank order, padding trimmed
        assert r["probe_synced_rows"] == N
        assert r["probe_unsynced_rows"] == (CUT if rank == 0 else N - CUT)
