"""Alignment metrics at scale, side by side: alignkit vs the naive N×N forms.

    python bench/metrics.py             # full sizes (issue 3's figures)
    python bench/metrics.py --quick     # smaller sizes for CI-like runs (~5 min on 2 busy cores)
    python bench/metrics.py --cases 1,2 # a subset of the three benchmarks below
    python bench/metrics.py --device cuda

On 2 CPU cores the full run takes about half an hour, most of it mutual k-NN at N=100,000 (two
exact searches of 7.7 TFLOP each, run twice: warm-up and timed); a GPU or faiss makes that minutes.

1. Linear CKA, N=20,000, d=256, float32: ``AF.cka`` (feature space, O(N·d²)) vs the Gram form
   (two N×N matrices); time ratio (target ≥ 20×) and |value − float64 value| (target ≤ 1e-4).
2. ``StreamingLinearCKA`` over N=1,000,000 rows, d=768, in chunks of 10,000 generated on the fly
   from a seeded generator inside the timed step (the data never exists at once): peak memory
   (target < 1 GiB) and time. ``--quick``: N=200,000, plus the materialise-then-``AF.cka`` form for
   comparison (same rows, same value).
3. Mutual k-NN, N=100,000, d=384, k=10: ``AF.mutual_knn`` (chunked top-k; faiss when installed)
   peak memory (target < 2 GiB) and time; and, at N=20,000, against the naive form (full N×N
   similarity matrices, then top-k) for a ratio — at N=100,000 the naive form would need 40 GB per N×N matrix.

Time is the median of repeats after a warm-up, peak memory is beyond the inputs, each case in a
fresh process (see bench/_harness.py).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _harness import Result, gib, measure, table
from _harness import parser as bench_parser

import alignkit.functional as AF
from alignkit.metrics import StreamingLinearCKA


def _pair(
    n: int, d: int, device: str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """x (n, d) and y = x·W + noise (n, d): a correlated pair with CKA well inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d) + torch.randn(
        n, d, generator=g, dtype=torch.float64
    )
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


# ---- 1. linear CKA: feature space vs Gram form ------------------------------------------------
def cka_ours(n: int, d: int, device: str) -> Callable[[], torch.Tensor]:
    x, y = _pair(n, d, device)
    return lambda: AF.cka(x, y)


def cka_gram(n: int, d: int, device: str) -> Callable[[], torch.Tensor]:
    """Kornblith et al.'s Gram form in float32: K = XcXcᵀ, L = YcYcᵀ (already centred),
    CKA = ⟨K, L⟩ / (‖K‖·‖L‖). The three sums are elementwise products summed by torch's cascade
    sum: ``torch.linalg.norm`` of the N×N matrices (the notebook's ``np.linalg.norm``) loses ~1e-3
    at N = 5,000 in float32, which would make this baseline look worse than it is."""
    x, y = _pair(n, d, device)

    def step() -> torch.Tensor:
        xc, yc = x - x.mean(0), y - y.mean(0)
        k, l_ = xc @ xc.T, yc @ yc.T
        return (k * l_).sum() / ((k * k).sum() * (l_ * l_).sum()).sqrt()

    return step


# ---- 2. streaming linear CKA ------------------------------------------------------------------
def _chunks(n: int, d: int, chunk: int, device: str) -> Any:
    """Chunks of a correlated pair from a seeded generator: y = 0.6·x + 0.8·noise."""
    g = torch.Generator(device=device).manual_seed(0)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        x = torch.randn(rows, d, generator=g, device=device)
        noise = torch.randn(rows, d, generator=g, device=device)
        yield x, 0.6 * x + 0.8 * noise


def stream_ours(n: int, d: int, chunk: int, device: str) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        metric = StreamingLinearCKA()
        for x, y in _chunks(n, d, chunk, device):
            metric.update(x, y)
        return metric.compute()

    return step


def stream_materialised(n: int, d: int, chunk: int, device: str) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        xs, ys = zip(*_chunks(n, d, chunk, device), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        del xs, ys
        return AF.cka(x, y)

    return step


# ---- 3. mutual kNN ------------------------------------------------------------------------------
def mknn_ours(n: int, d: int, k: int, device: str) -> Callable[[], torch.Tensor]:
    x, y = _pair(n, d, device)
    return lambda: AF.mutual_knn(x, y, k=k)


def mknn_naive(n: int, d: int, k: int, device: str) -> Callable[[], torch.Tensor]:
    """Full N×N cosine similarity matrices, self masked, top-k, then the set overlap."""
    x, y = _pair(n, d, device)

    def neighbours(z: torch.Tensor) -> torch.Tensor:
        zn = F.normalize(z, dim=1)
        sim = zn @ zn.T
        sim.fill_diagonal_(-math.inf)
        return sim.topk(k, dim=1).indices

    def step() -> torch.Tensor:
        nx, ny = neighbours(x), neighbours(y)
        return (nx[:, :, None] == ny[:, None, :]).sum() / (n * k)

    return step


def _float64_cka(n: int, d: int) -> float:
    x, y = _pair(n, d, "cpu", dtype=torch.float64)
    return float(AF.cka(x, y))


def _check(label: str, ok: bool, detail: str) -> str:
    return f"- {label}: {detail} — {'meets' if ok else 'MISSES'} the target"


def _bench_cka(run: Callable[..., Result], quick: bool, notes: list[str]) -> None:
    n, d = (5_000, 256) if quick else (20_000, 256)
    rows = [
        run("Gram form (N×N, float32)", cka_gram, n=n, d=d),
        run("alignkit AF.cka (feature space, float32)", cka_ours, n=n, d=d),
    ]
    print(table(f"linear CKA, N={n:,}, d={d} (value: CKA)", rows, baseline=rows[0].name))
    exact = _float64_cka(n, d)
    for r in rows:
        if r.value is not None:
            print(f"- {r.name}: |value − float64 value {exact:.8f}| = {abs(r.value - exact):.2e}")
    gram, ours = rows
    if not (gram.error or ours.error):
        ratio = gram.seconds / ours.seconds
        notes.append(_check("CKA speed-up over the Gram form", ratio >= 20, f"{ratio:.1f}× (target ≥ 20×)"))
    if ours.value is not None:
        err = abs(ours.value - exact)
        notes.append(_check("CKA float32 error", err <= 1e-4, f"{err:.1e} (target ≤ 1e-4)"))


def _bench_streaming(run: Callable[..., Result], quick: bool, notes: list[str]) -> None:
    n, d, chunk = (200_000, 768, 10_000) if quick else (1_000_000, 768, 10_000)
    rows = [
        run(
            f"alignkit StreamingLinearCKA (chunks of {chunk:,})", stream_ours, repeat=1, n=n, d=d, chunk=chunk
        )
    ]
    if quick:  # the whole data set at once: 2·N·d·4 bytes (1.2 GB here, 6.1 GB at N=1e6)
        rows.append(
            run("materialise all rows, then AF.cka", stream_materialised, repeat=1, n=n, d=d, chunk=chunk)
        )
    print(
        table(
            f"streaming linear CKA, N={n:,}, d={d}, data generated inside the timed step (value: CKA)",
            rows,
            baseline=rows[0].name,
        )
    )
    stream = rows[0]
    if not stream.error:
        notes.append(
            _check(
                "streaming CKA peak memory",
                stream.peak_bytes < 2**30,
                f"{gib(stream.peak_bytes)} (target < 1 GiB)",
            )
        )


def _bench_mutual_knn(run: Callable[..., Result], quick: bool, notes: list[str]) -> None:
    faiss = AF.neighbors._faiss() is not None
    k = 10
    n_small, n_big, d = (5_000, 20_000, 384) if quick else (20_000, 100_000, 384)
    rows = [
        run("naive N×N similarity + top-k", mknn_naive, repeat=1, n=n_small, d=d, k=k),
        run(
            "alignkit AF.mutual_knn" + (" (faiss)" if faiss else " (torch chunks)"),
            mknn_ours,
            repeat=1,
            n=n_small,
            d=d,
            k=k,
        ),
    ]
    print(table(f"mutual kNN, N={n_small:,}, d={d}, k={k} (value: score)", rows, baseline=rows[0].name))
    rows = [
        run(
            "alignkit AF.mutual_knn" + (" (faiss)" if faiss else " (torch chunks)"),
            mknn_ours,
            repeat=1,
            n=n_big,
            d=d,
            k=k,
        )
    ]
    print(
        table(
            f"mutual kNN, N={n_big:,}, d={d}, k={k} (naive: {n_big**2 * 4 / 1e9:.0f} GB per N×N matrix)",
            rows,
            baseline=rows[0].name,
        )
    )
    if not rows[0].error:
        notes.append(
            _check(
                "mutual kNN peak memory",
                rows[0].peak_bytes < 2 * 2**30,
                f"{gib(rows[0].peak_bytes)} (target < 2 GiB)",
            )
        )


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (streaming N=200,000)")
    parser.add_argument("--cases", default="1,2,3", help="which of the three benchmarks to run, e.g. 1,3")
    args = parser.parse_args()
    cases = {int(c) for c in args.cases.split(",")}
    dev, th, quick = args.device, args.threads, args.quick

    def run(name: str, fn: Callable[..., Any], repeat: int = 3, **kw: Any) -> Result:
        return measure(name, fn, kw, dev, repeat=repeat, threads=th)

    print(
        f"# bench/metrics.py on {dev} ({th} threads), torch {torch.__version__}{' (quick)' if quick else ''}"
    )
    notes: list[str] = []

    if 1 in cases:
        _bench_cka(run, quick, notes)
    if 2 in cases:
        _bench_streaming(run, quick, notes)
    if 3 in cases:
        _bench_mutual_knn(run, quick, notes)

    print("\n### targets (issue 3)" + (" — quick sizes, the targets are for the full sizes" if quick else ""))
    print("\n".join(notes))


if __name__ == "__main__":
    main()
