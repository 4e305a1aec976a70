"""K-fold ridge selection: ``AF.ridge_kfold`` (moments of all rows downdated by each held-out part) vs
refitting every fold (the spectrum of each fold's fitting rows, the form it replaced), side by side.

    python bench/ridge_kfold.py            # n=20,000, d_s=256, d_t=128, K=5 and 10; n=300, d_s=1,000
    python bench/ridge_kfold.py --quick    # n=5,000

Both compute the same scores (the largest relative difference is printed); the downdate costs
O(n·d²) + K·O(d³) against the refit's K·O(n·d²). Seeded data (torch.manual_seed(0)); time is the
median of 3 runs after a warm-up, each case in a fresh process (bench/_harness.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, table
from _harness import parser as bench_parser

from alignkit.functional.regression import RIDGE_GRID, _spectrum, ridge_kfold


def _data(n: int, d: int, d_t: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, d_t, generator=g) / d**0.5 + torch.randn(n, d_t, generator=g)
    return x.to(device), y.to(device)


def refit_kfold(x: torch.Tensor, y: torch.Tensor, folds: int) -> torch.Tensor:
    """The naive form: every fold's fitting rows centred and decomposed afresh (seed 0, as ridge_kfold)."""
    x, y = x.double(), y.double()
    n, d = x.shape
    scores = torch.zeros(len(RIDGE_GRID), dtype=torch.float64, device=x.device)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(x.device)
    for part in order.tensor_split(folds):
        fit = torch.ones(n, dtype=torch.bool, device=x.device)
        fit[part] = False
        mu_x, mu_y = x[fit].mean(0), y[fit].mean(0)
        xc, yc = x[fit] - mu_x, y[fit] - mu_y
        s2, v = _spectrum(xc)
        p, yf, b = (x[part] - mu_x) @ v, y[part] - mu_y, v.T @ (xc.T @ yc)
        cross, quad, total = ((p.T @ yf) * b).sum(1), (p.T @ p) * (b @ b.T), float(yf.square().sum())
        base = float(xc.square().sum()) / d
        for i, rel in enumerate(RIDGE_GRID):
            dk = 1.0 / (s2 + rel * base)
            scores[i] += total - 2.0 * float(dk @ cross) + float(dk @ quad @ dk)
    return (scores / (n * y.shape[1])).clamp_min(0.0).cpu()


def ours(n: int, d: int, d_t: int, folds: int, device: str) -> Callable[[], torch.Tensor]:
    x, y = _data(n, d, d_t, device)
    return lambda: ridge_kfold(x, y, folds=folds)[1].min()


def naive(n: int, d: int, d_t: int, folds: int, device: str) -> Callable[[], torch.Tensor]:
    x, y = _data(n, d, d_t, device)
    return lambda: refit_kfold(x, y, folds).min()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="n=5,000 instead of 20,000")
    args = parser.parse_args()
    n = 5000 if args.quick else 20000
    print(f"# bench/ridge_kfold.py on {args.device} ({args.threads} threads), torch {torch.__version__}")
    for rows, d, d_t, folds in ((n, 256, 128, 5), (n, 256, 128, 10), (300, 1000, 128, 5)):
        kw = {"n": rows, "d": d, "d_t": d_t, "folds": folds}
        results = [
            measure(name, fn, kw, args.device, repeat=3, threads=args.threads)
            for name, fn in (("refit every fold", naive), ("ridge_kfold", ours))
        ]
        print(table(f"n={rows}, d_s={d}, d_t={d_t}, K={folds}", results, "refit every fold"))
        x, y = _data(rows, d, d_t, "cpu")
        new, old = ridge_kfold(x, y, folds=folds)[1], refit_kfold(x, y, folds)
        worst = float(((new - old) / old).abs().max())
        print(f"max relative difference of the {len(RIDGE_GRID)} scores: {worst:.1e}")


if __name__ == "__main__":
    main()
