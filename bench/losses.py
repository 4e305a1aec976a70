"""Losses side by side: alignkit vs the plain PyTorch form vs pytorch-metric-learning.

    python bench/losses.py            # CPU-sized defaults (a few minutes on 2 cores)
    python bench/losses.py --large    # adds B=32,768 plain CLIP (needs ~17 GiB free)
    python bench/losses.py --device cuda

Every row is forward + backward; time is the median of repeats after a warm-up, peak memory is
beyond the inputs (see bench/_harness.py). Ratios are against the row named in each title.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _harness import measure, table
from _harness import parser as bench_parser

import alignkit.functional as AF


def _pair(n: int, d: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device).requires_grad_()
    b = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device).requires_grad_()
    return a, b


def _backward(a: torch.Tensor, b: torch.Tensor, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], float]:
    def step() -> float:
        a.grad = b.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.item()

    return step


# ---- contrastive: CLIP / InfoNCE ------------------------------------------------------------
def clip_ours(n: int, d: int, device: str, chunk_size: int | None = None) -> Callable[[], float]:
    a, b = _pair(n, d, device)
    return _backward(a, b, lambda: AF.clip_loss(a, b, 1 / 0.07, chunk_size=chunk_size))


def clip_plain(n: int, d: int, device: str) -> Callable[[], float]:
    a, b = _pair(n, d, device)
    target = torch.arange(n, device=device)

    def loss() -> torch.Tensor:
        logits = a @ b.T / 0.07
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    return _backward(a, b, loss)


def clip_pml(n: int, d: int, device: str) -> Callable[[], float]:
    from pytorch_metric_learning import losses

    a, b = _pair(n, d, device)
    # SelfSupervisedLoss(symmetric=True) averages both directions, like CLIP; NTXent normalises inside.
    pml = losses.SelfSupervisedLoss(losses.NTXentLoss(temperature=0.07), symmetric=True)
    return _backward(a, b, lambda: pml(a, b))


# ---- structural ---------------------------------------------------------------------------
def structure_ours(n: int, d: int, device: str) -> Callable[[], float]:
    a, b = _pair(n, d, device)
    return _backward(a, b, lambda: AF.structure_loss(a, b))


def structure_naive(n: int, d: int, device: str) -> Callable[[], float]:
    a, b = _pair(n, d, device)
    return _backward(a, b, lambda: ((a @ a.T - b @ b.T) ** 2).sum() / n**2)


def structure_naive_f64(n: int, d: int, device: str) -> Callable[[], float]:
    a, b = _pair(n, d, device)
    a64, b64 = a.detach().double(), b.detach().double()
    return lambda: (((a64 @ a64.T - b64 @ b64.T) ** 2).sum() / n**2).item()


# ---- supervised contrastive ---------------------------------------------------------------
def _views(n: int, d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, 2, d, generator=g).to(device).requires_grad_()
    labels = torch.randint(0, 100, (n,), generator=g).to(device)
    return feats, labels


def supcon_ours(n: int, d: int, device: str) -> Callable[[], float]:
    feats, labels = _views(n, d, device)
    return _backward(feats, feats, lambda: AF.supcon_loss(feats, labels, temperature=0.1))


def supcon_pml(n: int, d: int, device: str) -> Callable[[], float]:
    from pytorch_metric_learning import losses

    feats, labels = _views(n, d, device)
    pml = losses.SupConLoss(temperature=0.1)
    return _backward(feats, feats, lambda: pml(feats.flatten(0, 1), labels.repeat_interleave(2)))


# ---- triplet, batch-hard ------------------------------------------------------------------
def triplet_ours(n: int, d: int, device: str) -> Callable[[], float]:
    feats, labels = _views(n, d, device)
    x = feats[:, 0].detach().requires_grad_()
    return _backward(x, x, lambda: AF.batch_triplet_loss(x, labels, margin=0.2, mining="hard"))


def triplet_pml(n: int, d: int, device: str) -> Callable[[], float]:
    from pytorch_metric_learning import distances, losses, miners, reducers

    feats, labels = _views(n, d, device)
    x = feats[:, 0].detach().requires_grad_()
    # PML's TripletMarginMiner("hard") is not batch-hard; BatchHardMiner is. PML normalises
    # embeddings by default; alignkit's euclidean distance does not: compare on raw features.
    distance = distances.LpDistance(normalize_embeddings=False)
    miner = miners.BatchHardMiner(distance=distance)
    pml = losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=reducers.MeanReducer())
    return _backward(x, x, lambda: pml(x, labels, miner(x, labels)))


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--large", action="store_true", help="also run the plain form at B=32,768")
    args = parser.parse_args()
    dev, th = args.device, args.threads
    def run(name: str, fn: Callable[..., Any], repeat: int = 3, **kw: Any) -> Any:
        return measure(name, fn, kw, dev, repeat=repeat, threads=th)

    print(f"# bench/losses.py on {dev} ({th} threads), torch {torch.__version__}")

    n, d = 4096, 512
    print(
        table(
            f"CLIP / InfoNCE, B={n:,}, d={d}, forward+backward",
            [
                run("plain two cross-entropies", clip_plain, n=n, d=d),
                run("alignkit clip_loss (default)", clip_ours, n=n, d=d),
                run("alignkit clip_loss (tiled, 1024)", clip_ours, n=n, d=d, chunk_size=1024),
                run("pytorch-metric-learning NTXent", clip_pml, n=n, d=d),
            ],
            baseline="plain two cross-entropies",
        )
    )

    # pytorch-metric-learning's NTXent builds a (positive pairs × negative pairs) matrix, O(B³) memory:
    # 34 GB at B=1,024, so it is compared at B=512.
    n, d = 512, 512
    print(table(f"CLIP / InfoNCE, B={n:,}, d={d}, forward+backward", [
        run("plain two cross-entropies", clip_plain, n=n, d=d),
        run("alignkit clip_loss (default)", clip_ours, n=n, d=d),
        run("pytorch-metric-learning NTXent", clip_pml, n=n, d=d),
    ], baseline="plain two cross-entropies"))

    n, d = 32768, 256
    rows = [run("alignkit clip_loss (default, tiled)", clip_ours, repeat=1, n=n, d=d)]
    if args.large:
        rows.insert(0, run("plain two cross-entropies", clip_plain, repeat=1, n=n, d=d))
    print(table(f"CLIP / InfoNCE, B={n:,}, d={d}, forward+backward", rows, baseline=rows[0].name))

    n, d = 8192, 256
    print(
        table(
            f"structure_loss, N={n:,}, d={d}, forward+backward (value: loss)",
            [
                run("N×N similarity matrices", structure_naive, n=n, d=d),
                run("alignkit structure_loss (Gram form)", structure_ours, n=n, d=d),
                run("N×N in float64 (reference value, forward only)", structure_naive_f64, n=n, d=d),
            ],
            baseline="N×N similarity matrices",
        )
    )

    n, d = 2048, 128
    print(
        table(
            f"SupCon, N={n:,} × 2 views, d={d}, 100 classes",
            [
                run("pytorch-metric-learning SupConLoss", supcon_pml, n=n, d=d),
                run("alignkit supcon_loss", supcon_ours, n=n, d=d),
            ],
            baseline="pytorch-metric-learning SupConLoss",
        )
    )

    n, d = 2048, 128
    print(
        table(
            f"batch-hard triplet, N={n:,}, d={d}",
            [
                run("pytorch-metric-learning miner + TripletMarginLoss", triplet_pml, n=n, d=d),
                run("alignkit batch_triplet_loss", triplet_ours, n=n, d=d),
            ],
            baseline="pytorch-metric-learning miner + TripletMarginLoss",
        )
    )


if __name__ == "__main__":
    main()
