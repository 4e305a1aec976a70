"""Every row of README's performance table, with its peer or naive baseline, in one run (`make bench`).

    python bench/run.py                 # README sizes (long on 2 CPU cores: about an hour)
    python bench/run.py --quick         # smaller sizes, a few minutes
    python bench/run.py --rows clip,knn # only rows whose name contains one of these words
    python bench/run.py --device cuda

First the machine's fp32 GEMM rate is measured (square ``torch.mm``, best of 5) — and the bf16 rate
on a CPU that multiplies bfloat16 natively, for the rows whose kernel screens in bfloat16 (the cosine
self-search of ≥ 16,384 rows; their "% GEMM" says "of bf16") — then every row:

* **time**: the implementations alternate in one process (ours, baseline, ours, baseline, …) after
  one warm-up each; the median of ``--repeat`` (3) rounds is reported, so both sides see the same
  machine load. The speed-up is baseline time / our time, both from that process.
* **peak memory**: each implementation in a fresh process, one warm-up call, then the peak during
  a second call beyond what the process held before it: resident set size sampled every
  millisecond with glibc's mmap threshold fixed at 128 KiB (so freed buffers are returned, not
  silently reused), or ``max_memory_allocated`` on CUDA.
* **% GEMM**: the row's useful floating-point work (its matrix products: the model is printed in
  the table) divided by our time, as a fraction of the measured GEMM rate — how close the row runs
  to the machine's limit.

Values: both sides' results are printed ("value"); they agree (up to float32 rounding) where the
two compute the same quantity, and the row says when they differ by convention.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import app as bapp
import decoding as bdec
import losses as bl
import metrics as bm
from _harness import _rss_bytes, gib
from _harness import parser as bench_parser

import alignkit.functional as AF
from alignkit.functional import neighbors

Setup = Callable[..., Callable[[], Any]]


# --------------------------------------------------------------------------------------------------
# implementations not in bench/losses.py or bench/metrics.py


def _rows(n: int, d: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x.to(device), (x + torch.randn(n, d, generator=g)).to(device)


def recall_ours(n: int, d: int, device: str) -> Callable[[], float]:
    q, g = _rows(n, d, device)
    return lambda: AF.recall_at_k(q, g, k=(1, 5, 10))["mean_rank"]


def recall_faiss(n: int, d: int, device: str) -> Callable[[], float]:
    """Exact faiss inner-product search of the top 10 on normalised rows: R@1/5/10 only (no ranks)."""
    import faiss

    q, g = _rows(n, d, device)

    def step() -> float:
        qn = F.normalize(q, dim=1).numpy()
        index = faiss.IndexFlatIP(d)
        index.add(F.normalize(g, dim=1).numpy())
        _, found = index.search(qn, 10)
        return float((torch.from_numpy(found) == torch.arange(n)[:, None]).any(1).double().mean())

    return step


def recall_naive(n: int, d: int, device: str) -> Callable[[], float]:
    """The previous form: 96 MiB full-width blocks, ``(scores >= pos).sum(1)`` in int64."""
    q, g = _rows(n, d, device)

    def step() -> float:
        qn, gn = F.normalize(q, dim=1), F.normalize(g, dim=1)
        block = max(1, (96 << 20) // (4 * n))
        ranks = []
        for s in range(0, n, block):
            scores = qn[s : s + block] @ gn.T
            pos = scores.gather(1, torch.arange(s, min(s + block, n))[:, None])
            ranks.append((scores >= pos).sum(1))
        return float(torch.cat(ranks).double().mean())

    return step


def knn_torch(n: int, d: int, device: str) -> Callable[[], float]:
    x, _ = _rows(n, d, device)
    return lambda: float(AF.knn(x, 10, backend="torch").values.sum())


def knn_faiss(n: int, d: int, device: str) -> Callable[[], float]:
    x, _ = _rows(n, d, device)
    return lambda: float(AF.knn(x, 10, backend="faiss").values.sum())


def knn_other_torch(n: int, d: int, device: str) -> Callable[[], float]:
    """Queries against another set of rows (no symmetry to use): the general tiled engine."""
    x, y = _rows(n, d, device)
    return lambda: float(AF.knn(x, 10, y=y, backend="torch").values.sum())


def knn_other_faiss(n: int, d: int, device: str) -> Callable[[], float]:
    x, y = _rows(n, d, device)
    return lambda: float(AF.knn(x, 10, y=y, backend="faiss").values.sum())


def mknn_faiss(n: int, d: int, k: int, device: str) -> Callable[[], float]:
    x, y = bm._pair(n, d, device)
    return lambda: float(AF.mutual_knn(x, y, k=k, backend="faiss"))


def mknn_torch(n: int, d: int, k: int, device: str) -> Callable[[], float]:
    x, y = bm._pair(n, d, device)
    return lambda: float(AF.mutual_knn(x, y, k=k, backend="torch"))


def _triplet_views(n: int, d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = bl._views(n, d, device)
    return feats[:, 0].detach().requires_grad_(), labels


def _triplet_step(x: torch.Tensor, fn: Callable[[], torch.Tensor]) -> Callable[[], float]:
    def step() -> float:
        x.grad = None
        loss = fn()
        loss.backward()
        return loss.item()

    return step


def triplet_all(n: int, d: int, device: str, mining: str = "all") -> Callable[[], float]:
    x, labels = _triplet_views(n, d, device)
    return _triplet_step(x, lambda: AF.batch_triplet_loss(x, labels, margin=0.2, mining=mining))


def triplet_semi(n: int, d: int, device: str) -> Callable[[], float]:
    return triplet_all(n, d, device, mining="semi-hard")


def triplet_all_pml(n: int, d: int, device: str, semi_hard: bool = False) -> Callable[[], float]:
    """PML on raw features (alignkit's euclidean distance does not normalise); MeanReducer averages
    over every mined triplet, zero-loss ones included, as alignkit does."""
    from pytorch_metric_learning import distances, losses, miners, reducers

    x, labels = _triplet_views(n, d, device)
    distance = distances.LpDistance(normalize_embeddings=False)
    loss = losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=reducers.MeanReducer())
    if not semi_hard:
        return _triplet_step(x, lambda: loss(x, labels))
    miner = miners.TripletMarginMiner(margin=0.2, distance=distance, type_of_triplets="semihard")
    return _triplet_step(x, lambda: loss(x, labels, miner(x, labels)))


def triplet_semi_pml(n: int, d: int, device: str) -> Callable[[], float]:
    return triplet_all_pml(n, d, device, semi_hard=True)


def measure_graphs_once(n: int, d: int, device: str) -> Callable[[], float]:
    from alignkit.measure import measure

    x, y = bm._pair(n, d, device)
    return lambda: measure(x, y, metrics=("mutual_knn", "cknna"), k=10)["cknna"]


def measure_graphs_twice(n: int, d: int, device: str) -> Callable[[], float]:
    x, y = bm._pair(n, d, device)
    return lambda: (float(AF.mutual_knn(x, y, k=10)), float(AF.cknna(x, y, k=10)))[1]


# --------------------------------------------------------------------------------------------------
# rows


@dataclass
class Row:
    name: str
    ours: tuple[str, Setup]
    base: tuple[str, Setup] | None
    kwargs: dict[str, Any]
    quick: dict[str, Any] | None  # None: not run with --quick
    flops: Callable[[dict[str, Any]], float] | None = None
    flop_note: str = ""
    needs: str = ""
    base_kwargs: dict[str, Any] = field(default_factory=dict)
    memory: bool = True  # False: no peak-memory column (the row times other processes)
    # True: ours runs its GEMMs in bfloat16 on CPUs that multiply it natively when N ≥ the screen's
    # threshold (the screened cosine self-search); % GEMM is then of the bf16 rate
    bf16: bool = False


def _sq(k: dict[str, Any]) -> float:
    return float(k["n"]) ** 2 * k["d"]


ROWS = [
    Row("CLIP loss, B={n:,}, d={d}", ("alignkit clip_loss", bl.clip_ours),
        ("plain two cross-entropies", bl.clip_plain), {"n": 4096, "d": 512}, {"n": 2048, "d": 512},
        lambda k: 6 * _sq(k), "3 GEMMs of 2B²d"),
    Row("CLIP loss, B={n:,}, d={d} (tiled)", ("alignkit clip_loss", bl.clip_ours), None,
        {"n": 32768, "d": 256}, None, lambda k: 6 * _sq(k), "3 GEMMs of 2B²d"),
    Row("CLIP loss, B={n:,}, d={d}", ("alignkit clip_loss", bl.clip_ours),
        ("pytorch-metric-learning NTXent", bl.clip_pml), {"n": 512, "d": 512}, {"n": 256, "d": 512},
        lambda k: 6 * _sq(k), "3 GEMMs of 2B²d"),
    Row("structure loss, N={n:,}, d={d}", ("alignkit structure_loss", bl.structure_ours),
        ("N×N similarity matrices", bl.structure_naive), {"n": 8192, "d": 256}, {"n": 4096, "d": 256},
        lambda k: 3 * 2 * 2 * k["n"] * k["d"] ** 2, "Gram form: 2 d×d Grams fwd, 2× that bwd"),
    Row("SupCon, N={n:,} × 2 views, d={d}", ("alignkit supcon_loss", bl.supcon_ours),
        ("pytorch-metric-learning SupConLoss", bl.supcon_pml), {"n": 2048, "d": 128}, {"n": 1024, "d": 128},
        lambda k: 6 * 4 * _sq(k), "3 GEMMs of 2(2N)²d"),
    Row("SupCon, N={n:,} × 2 views, d={d}", ("alignkit supcon_loss", bl.supcon_ours),
        ("pytorch-metric-learning SupConLoss", bl.supcon_pml), {"n": 8192, "d": 128}, None,
        lambda k: 6 * 4 * _sq(k), "3 GEMMs of 2(2N)²d"),
    Row("batch-hard triplet, N={n:,}, d={d}", ("alignkit batch_triplet_loss", bl.triplet_ours),
        ("pytorch-metric-learning BatchHardMiner + TripletMarginLoss", bl.triplet_pml),
        {"n": 2048, "d": 128}, {"n": 2048, "d": 128}, lambda k: 2 * _sq(k), "1 GEMM of 2N²d"),
    Row("batch-hard triplet, N={n:,}, d={d}", ("alignkit batch_triplet_loss", bl.triplet_ours),
        ("pytorch-metric-learning BatchHardMiner + TripletMarginLoss", bl.triplet_pml),
        {"n": 8192, "d": 128}, {"n": 4096, "d": 128}, lambda k: 2 * _sq(k), "1 GEMM of 2N²d"),
    Row("triplet, every valid triplet, N={n:,}, d={d}", ("alignkit batch_triplet_loss", triplet_all),
        ("pytorch-metric-learning TripletMarginLoss (all triplets)", triplet_all_pml),
        {"n": 2048, "d": 128}, {"n": 1024, "d": 128}, lambda k: 2 * _sq(k), "1 GEMM of 2N²d"),
    Row("triplet, semi-hard, N={n:,}, d={d}", ("alignkit batch_triplet_loss", triplet_semi),
        ("pytorch-metric-learning TripletMarginMiner(semihard) + TripletMarginLoss", triplet_semi_pml),
        {"n": 2048, "d": 128}, {"n": 1024, "d": 128}, lambda k: 2 * _sq(k), "1 GEMM of 2N²d"),
    Row("linear CKA, N={n:,}, d={d}", ("alignkit cka (feature space)", bm.cka_ours),
        ("Gram form (N×N)", bm.cka_gram), {"n": 20000, "d": 256}, {"n": 8000, "d": 256},
        lambda k: 3 * 2 * k["n"] * k["d"] ** 2, "3 d×d products of 2Nd²"),
    Row("streaming linear CKA, N={n:,}, d={d}, chunks of {chunk:,}", ("StreamingLinearCKA", bm.stream_ours),
        None, {"n": 1_000_000, "d": 768, "chunk": 10_000}, None, lambda k: 6 * k["n"] * k["d"] ** 2,
        "3 d×d products of 2Nd²"),
    Row("retrieval R@1/5/10 + ranks, {n:,} × {n:,}, d={d}", ("alignkit recall_at_k", recall_ours),
        ("exact faiss top-10 search (R@K only)", recall_faiss), {"n": 50000, "d": 256},
        {"n": 10000, "d": 256}, lambda k: 2 * _sq(k), "1 GEMM of 2N²d", needs="faiss"),
    Row("retrieval ranks, {n:,} × {n:,}, d={d}, vs the previous form", ("alignkit recall_at_k", recall_ours),
        ("96 MiB blocks, int64 count", recall_naive), {"n": 50000, "d": 256}, {"n": 10000, "d": 256},
        lambda k: 2 * _sq(k), "1 GEMM of 2N²d"),
    Row("kNN (k=10) against other rows, N={n:,} × N, d={d}", ("alignkit knn, torch", knn_other_torch),
        ("alignkit knn, faiss (IndexFlatIP)", knn_other_faiss), {"n": 50000, "d": 256},
        {"n": 10000, "d": 256}, lambda k: 2 * _sq(k), "1 GEMM of 2N²d", needs="faiss"),
    Row("kNN (k=10) self-search, N={n:,}, d={d}", ("alignkit knn, torch (symmetric)", knn_torch),
        ("alignkit knn, faiss (IndexFlatIP)", knn_faiss), {"n": 50000, "d": 256}, {"n": 10000, "d": 256},
        lambda k: _sq(k), "upper triangle only: N²d (faiss: 2N²d)", needs="faiss", bf16=True),
    Row("mutual kNN, N={n:,}, d={d}, k={k}", ("alignkit mutual_knn (auto)", bm.mknn_ours),
        ("naive N×N top-k", bm.mknn_naive), {"n": 20000, "d": 384, "k": 10}, {"n": 8000, "d": 384, "k": 10},
        lambda k: 2 * _sq(k), "2 symmetric self-searches of N²d", bf16=True),
    Row("mutual kNN, N={n:,}, d={d}, k={k}", ("alignkit mutual_knn, torch", mknn_torch),
        ("alignkit mutual_knn, faiss", mknn_faiss), {"n": 100000, "d": 384, "k": 10}, None,
        lambda k: 2 * _sq(k), "2 symmetric self-searches of N²d (faiss: 2N²d each)", needs="faiss",
        bf16=True),
    Row("measure mutual_knn + cknna, N={n:,}, d={d}", ("measure (graphs shared)", measure_graphs_once),
        ("AF.mutual_knn then AF.cknna", measure_graphs_twice), {"n": 20000, "d": 384},
        {"n": 5000, "d": 384}, lambda k: 2 * _sq(k), "2 symmetric self-searches of N²d", bf16=True),
    # the application's own costs (bench/app.py): start-up, the Trainer, the loss modules
    Row("CLI start-up: alignkit --help", ("alignkit --help", bapp.cli_help),
        ("python -c 'import torch' (floor)", bapp.import_torch), {}, {}, memory=False),
    Row("CLI start-up: alignkit train (demo, 1 epoch) to its first progress line",
        ("alignkit train", bapp.cli_train_first_line),
        ("python -c 'import torch' (floor)", bapp.import_torch), {}, {}, memory=False),
    Row("CLI start-up: alignkit train (demo, 1 epoch) to its first epoch line",
        ("alignkit train", bapp.cli_train_first_epoch),
        ("python -c 'import torch' (floor)", bapp.import_torch), {}, {}, memory=False),
    Row("Trainer.fit vs a hand-written loop, clip recipe, 1 epoch of {steps} steps of {batch}",
        ("Trainer.fit (+ 2 checkpoints)", bapp.trainer_fit), ("hand-written loop", bapp.hand_loop),
        {"steps": 200, "batch": 128}, {"steps": 50, "batch": 128}),
    *(
        Row(f"losses.build('{name}') module vs by hand, B={{n:,}}, d={{d}}"
            + (f" (× {bapp.REPEATS[name]} calls)" if name in bapp.REPEATS else ""),
            ("module", bapp.module_loss),
            ("the functional by hand", bapp.functional_loss), {"n": n, "d": 512, "name": name},
            {"n": n, "d": 512, "name": name} if n == 1024 else None,
            (lambda k: 6 * _sq(k)) if name in ("clip", "siglip", "info_nce") else None,
            "3 GEMMs of 2B²d" if name in ("clip", "siglip", "info_nce") else "")
        for name in bapp.LOSSES
        for n in (1024, 4096)
    ),
    Row("caption generation, {n} × 32 tokens, greedy", ("key/value cache", bdec.cached),
        ("re-run the sequence each step", bdec.recomputed), {"n": 360, "beams": 1}, {"n": 120, "beams": 1}),
    Row("caption generation, {n} × 32 tokens, beam search (3)", ("key/value cache", bdec.cached),
        ("re-run the sequence each step", bdec.recomputed), {"n": 360, "beams": 3}, {"n": 120, "beams": 3}),
]


# --------------------------------------------------------------------------------------------------
# measurement


def gemm_rate(device: str, size: int, threads: int, dtype: torch.dtype = torch.float32) -> float:
    """Best of 5 (size × size) @ (size × size) products in ``dtype`` (fp32 by default), FLOP/s."""
    torch.set_num_threads(threads)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(6):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _value(v: Any) -> float | None:
    return float(v) if isinstance(v, torch.Tensor | float | int) else None


def _timing_child(
    setups: list[tuple[Setup, dict]], device: str, repeat: int, threads: int, queue: Any
) -> None:
    try:
        torch.set_num_threads(threads)
        steps = [setup(device=device, **kw) for setup, kw in setups]
        times: list[list[float]] = [[] for _ in steps]
        values: list[float | None] = [None] * len(steps)
        for round_ in range(repeat + 1):
            for i, step in enumerate(steps):
                _sync(device)
                start = time.perf_counter()
                values[i] = _value(step())
                _sync(device)
                if round_:
                    times[i].append(time.perf_counter() - start)
        queue.put(([statistics.median(t) for t in times], values, None))
    except Exception as err:
        queue.put((None, None, f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"))


def _memory_child(setup: Setup, kw: dict, device: str, threads: int, queue: Any) -> None:
    """Peak memory of one call after a warm-up call: CUDA ``max_memory_allocated``; on the CPU the
    resident set size sampled every millisecond by a thread (the parent starts this process with a
    fixed glibc mmap threshold, so freed buffers leave the resident set and are not silently reused)."""
    import threading

    try:
        torch.set_num_threads(threads)
        step = setup(device=device, **kw)
        step()  # warm-up: lazy library loading and thread pools are not the row's memory
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            base = _rss_bytes()
            high = [base]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    high[0] = max(high[0], _rss_bytes())
                    time.sleep(0.001)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            step()
            done.set()
            sampler.join()
            peak = max(high[0], _rss_bytes()) - base
        queue.put((max(peak, 0), None))
    except Exception as err:
        queue.put((0, f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"))


def _in_child(target: Callable[..., None], args: tuple, env: dict[str, str] | None = None) -> Any:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        proc.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    while True:
        try:
            out = queue.get(timeout=1)
            break
        except Empty:
            if not proc.is_alive() and queue.empty():
                proc.join()
                return None
    proc.join()
    return out


def run_row(
    row: Row, kw: dict[str, Any], device: str, repeat: int, threads: int, gemm: float, gemm_bf16: float | None
) -> list[str]:
    sides = [row.ours] + ([row.base] if row.base else [])
    timed = _in_child(_timing_child, ([(setup, kw) for _, setup in sides], device, repeat, threads))
    if timed is None:
        return [f"| {row.name.format(**kw)} | died (out of memory?) | | | | |"]
    times, values, error = timed
    if error:
        return [f"| {row.name.format(**kw)} | {error} | | | | |"]
    mems: list[int | None] = []
    for _, setup in sides if row.memory else ():
        out = _in_child(_memory_child, (setup, kw, device, threads), {"MALLOC_MMAP_THRESHOLD_": "131072"})
        mems.append(None if out is None or out[1] else out[0])
    mems += [None] * (len(sides) - len(mems))
    flops = row.flops(kw) if row.flops else None
    screened = row.bf16 and gemm_bf16 and kw["n"] >= neighbors._SCREEN_MIN_ROWS
    rate = gemm_bf16 if screened else gemm
    frac = f"{flops / times[0] / rate:.0%}{' of bf16' if screened else ''}" if flops else "—"

    def mem(i: int) -> str:
        return "—" if mems[i] is None else gib(mems[i])

    ours = f"{times[0] * 1e3:,.0f} ms, {mem(0)}"
    value = "" if values[0] is None else f"{values[0]:.6g}"
    if row.base:
        base = f"{row.base[0]}: {times[1] * 1e3:,.0f} ms, {mem(1)}"
        speed = f"{times[1] / times[0]:.2f}×"
        ratio = f"{mems[0] / mems[1]:.2f}×" if mems[0] is not None and mems[1] else "—"
        if values[1] is not None:
            value += f" / {values[1]:.6g}"
    else:
        base, speed, ratio = "—", "—", "—"
    name = row.name.format(**kw)
    return [f"| {name} | {row.ours[0]}: {ours} | {base} | {speed} | {ratio} | {frac} | {value} |"]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, skips the largest rows")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per row (median)")
    parser.add_argument("--rows", default="", help="comma-separated words; run rows whose name has one")
    args = parser.parse_args()
    words = [w.strip().lower() for w in args.rows.split(",") if w.strip()]
    try:
        import faiss  # noqa: F401

        have = {"faiss"}
    except ImportError:
        have = set()

    gemm = gemm_rate(args.device, 2048 if args.quick else 4096, args.threads)
    print(f"# bench/run.py on {args.device}, {args.threads} threads, torch {torch.__version__}"
          f"{', faiss' if have else ''}{', --quick' if args.quick else ''}")
    # the screened cosine self-search multiplies in bfloat16 where the CPU does so natively
    screened = args.device == "cpu" and neighbors._native_bf16()
    size = 2048 if args.quick else 4096
    gemm_bf16 = gemm_rate(args.device, size, args.threads, torch.bfloat16) if screened else None
    print(f"# fp32 GEMM rate (square torch.mm, best of 5): {gemm / 1e9:,.0f} GFLOP/s"
          + (f"; bf16: {gemm_bf16 / 1e9:,.0f} GFLOP/s (rows marked 'of bf16')" if gemm_bf16 else ""))
    print(f"# time: median of {args.repeat} alternating rounds in one process; memory: peak beyond the "
          "inputs, one fresh process per side\n")
    print("| row | alignkit | baseline | speed-up | memory | % GEMM | value (ours / baseline) |")
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        kw = row.quick if args.quick else row.kwargs
        wanted = not words or any(w in row.name.lower() or w in row.ours[0].lower() for w in words)
        if kw is None or not wanted:
            continue
        if row.needs and row.needs not in have:
            print(f"| {row.name.format(**kw)} | skipped: needs {row.needs} | | | | | |")
            continue
        for line in run_row(row, kw, args.device, args.repeat, args.threads, gemm, gemm_bf16):
            print(line, flush=True)
    notes = sorted({f"{r.name.split(',')[0]}: {r.flop_note}" for r in ROWS if r.flop_note})
    print("\n% GEMM counts: " + "; ".join(notes))


if __name__ == "__main__":
    main()
