"""Kornblith et al. 2019, Table 2: can a similarity index identify corresponding layers of networks
trained from different random seeds?

Kornblith et al. ("Similarity of Neural Network Representations Revisited", ICML 2019, §6.1) train
ten Tiny-10 CNNs on CIFAR-10 (32 × 32) from different initialisations; for every layer of one network
they ask whether the most similar layer of another network is the architecturally corresponding one.
Their accuracies: CCA (ρ̄) 1.4 %, CCA (R²_CCA) 10.6 %, SVCCA (ρ̄) 9.9 %, SVCCA (R²_CCA) 15.1 %,
PWCCA 11.1 %, linear regression 45.4 %, linear CKA 99.3 %, RBF CKA 99.3 %.

Two regimes (CIFAR-10 cannot be downloaded here, so both use scikit-learn's digits):

* ``--regime digits32`` (default): the 8 × 8 digits rendered at 32 × 32 and augmented on the fly
  (seeded random affine: rotation, scale, shear, translation; plus a smoothed random elastic
  displacement), a Tiny-10 CNN as in Kornblith et al.'s Table C.1 (eight 3 × 3 / 1 × 1 conv-BN-ReLU
  layers 16-16-32-32-32-64-64-64, stride 2 at layers 3 and 6, layer 7 unpadded, global average pool,
  logits: 10 layers). Activations of the held-out digits (each rendered once with a fixed seeded
  augmentation); a conv layer is average-pooled to the largest spatial grid with ≤ 256 features (so
  CCA stays well-posed with N > d).
* ``--regime digits8``: the earlier small version, 8 conv layers (16-16-16-32-32-32-64-64, 8×8 → 2×2),
  no normalisation, all 1,797 images, flattened activations.

Every index is scored in one direction: the query layer (of net i) is ``x``, each candidate layer (of
net j) is ``y``, ``index(x, y)``; only PWCCA is asymmetric (its weights come from ``x``, the query).
Each ordered pair of nets (i, j) and each layer of i counts once; the 95 % intervals are percentile
bootstraps over the ordered net pairs.

    python experiments/layer_identification.py                       # digits32, 5 nets: writes the .md
    python experiments/layer_identification.py --quick --out /tmp/li.md   # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import alignkit.functional as AF

PUBLISHED = {  # Kornblith et al. 2019, Table 2 (CIFAR-10, Tiny-10 CNNs)
    "CCA (mean ρ)": "1.4",
    "CCA (R²_CCA)": "10.6",
    "SVCCA (mean ρ)": "9.9",
    "PWCCA (query → candidate)": "11.1",
    "linear CKA": "99.3",
    "RBF CKA (σ = 0.8·median)": "99.3",
}
MARKER = "\n## Reading it"  # the hand-written analysis below this line is kept when the file is rewritten


INDICES = {  # short name (--indices) → table name
    "cca": "CCA (mean ρ)",
    "cca_r2": "CCA (R²_CCA)",
    "svcca": "SVCCA (mean ρ)",
    "pwcca": "PWCCA (query → candidate)",
    "linear_cka": "linear CKA",
    "rbf_cka": "RBF CKA (σ = 0.8·median)",
    "mutual_knn": "mutual kNN (k=10)",
    "procrustes": "Procrustes (1 − d/2)",
}


def scores(x: Tensor, y: Tensor, only: tuple[str, ...] = tuple(INDICES)) -> dict[str, float]:
    """The indices ``only`` (short names of :data:`INDICES`) for query layer ``x`` against candidate
    layer ``y`` (canonical correlations computed once for both CCA rows). Larger = more similar."""
    out: dict[str, float] = {}
    if "cca" in only or "cca_r2" in only:
        rho = AF.canonical_correlations(x, y, eps=1e-6)
        if "cca" in only:
            out[INDICES["cca"]] = float(rho.mean())
        if "cca_r2" in only:
            out[INDICES["cca_r2"]] = float((rho**2).mean())
    if "svcca" in only:
        out[INDICES["svcca"]] = float(AF.svcca(x, y, keep=0.99))
    if "pwcca" in only:
        out[INDICES["pwcca"]] = float(AF.pwcca(x, y, eps=1e-6))
    if "linear_cka" in only:
        out[INDICES["linear_cka"]] = float(AF.cka(x, y))
    if "rbf_cka" in only:
        out[INDICES["rbf_cka"]] = float(AF.cka(x, y, kernel="rbf", threshold=0.8))
    if "mutual_knn" in only:
        out[INDICES["mutual_knn"]] = float(AF.mutual_knn(x, y, k=min(10, x.shape[0] - 1)))
    if "procrustes" in only:
        out[INDICES["procrustes"]] = 1 - float(AF.procrustes_distance(x, y)) / 2
    return {INDICES[k]: out[INDICES[k]] for k in INDICES if k in only}


# ----------------------------------------------------------------------------------------------
# networks


class SmallCNN(nn.Module):
    """The digits8 regime: 3×3 conv + ReLU layers on 8×8 inputs (8×8 → 4×4 → 2×2)."""

    PLAN = ((16, 1), (16, 1), (16, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1))  # (channels, stride)
    STAGES = (0, 0, 0, 1, 1, 1, 2, 2)

    def __init__(self) -> None:
        super().__init__()
        chans = [1] + [c for c, _ in self.PLAN]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=s, padding=1)
            for (a, b), (_, s) in zip(itertools.pairwise(chans), self.PLAN, strict=True)
        )
        self.head = nn.Linear(chans[-1], 10)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        acts = []
        for conv in self.convs:
            x = torch.relu(conv(x))
            acts.append(x.flatten(1))
        return self.head(x.mean((2, 3))), acts


def _pool(x: Tensor, max_features: int = 256) -> Tensor:
    """Average-pool (B, C, H, W) to the largest square grid with C·g² ≤ max_features, flattened."""
    grid = max(1, math.isqrt(max_features // x.shape[1]))
    grid = min(grid, x.shape[2])
    return F.adaptive_avg_pool2d(x, grid).flatten(1)


class Tiny10(nn.Module):
    """Kornblith et al. 2019, Table C.1 ("Tiny-10"): conv-BN-ReLU ×8, global average pool, logits."""

    # (out channels, kernel, stride, padding)
    PLAN = ((16, 3, 1, 1), (16, 3, 1, 1), (32, 3, 2, 1), (32, 3, 1, 1), (32, 3, 1, 1), (64, 3, 2, 1),
            (64, 3, 1, 0), (64, 1, 1, 0))  # fmt: skip
    STAGES = (0, 0, 1, 1, 1, 2, 2, 2, 3, 4)  # resolution 32, 16, 8(6), then pool, logits

    def __init__(self) -> None:
        super().__init__()
        layers, c_in = [], 1
        for c, k, s, p in self.PLAN:
            conv = nn.Conv2d(c_in, c, k, s, p, bias=False)
            layers.append(nn.Sequential(conv, nn.BatchNorm2d(c), nn.ReLU()))
            c_in = c
        self.convs = nn.ModuleList(layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        acts = []
        for conv in self.convs:
            x = conv(x)
            acts.append(_pool(x))
        pooled = x.mean((2, 3))
        logits = self.head(pooled)
        return logits, [*acts, pooled, logits]


# ----------------------------------------------------------------------------------------------
# data: digits at 32×32 with seeded affine + elastic augmentation


def render32(images: Tensor) -> Tensor:
    """(B, 1, 8, 8) in [0, 1] → (B, 1, 32, 32): bilinear upsampling to 24×24, centred with a 4-pixel
    margin (room for the augmentation's shifts)."""
    up = F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False)
    return F.pad(up, (4, 4, 4, 4))


def augment(images: Tensor, g: torch.Generator, elastic: bool = True) -> Tensor:
    """Seeded random affine (rotation ±12°, scale 0.9–1.1, shear ±0.15, shift ±3 px) and elastic
    (Simard et al. 2003: a random displacement field smoothed by a Gaussian of σ = 3 px, amplitude 1.5 px)
    warp of (B, 1, 32, 32) images, one bilinear resampling."""
    b, _, h, w = images.shape

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(b, generator=g)

    angle = uniform(-12, 12) * math.pi / 180
    scale = uniform(0.9, 1.1)
    shear = uniform(-0.15, 0.15)
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * (3 * 2 / w)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if elastic:
        field = torch.rand(b, 2, h, w, generator=g) * 2 - 1
        radius, sigma = 6, 3.0
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(t**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        field = F.conv2d(field.reshape(2 * b, 1, h, w), kernel.view(1, 1, 1, -1), padding=(0, radius))
        field = F.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0)).reshape(b, 2, h, w)
        field = field / field.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
        grid = grid + (1.5 * 2 / w) * field.permute(0, 2, 3, 1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def load(regime: str, quick: bool) -> tuple[Tensor, Tensor, list[int], list[int]]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    train, test = train_test_split(range(len(y)), test_size=0.25, random_state=0, stratify=digits.target)
    if regime == "digits32":
        x = render32(x)
    if quick:
        train, test = train[:128], test[:48]
    return x, y, list(train), list(test)


def train_nets(
    regime: str, n_nets: int, epochs: int, quick: bool
) -> tuple[list[list[Tensor]], list[float], int]:
    """Train ``n_nets`` identical nets from seeds 0…n−1 with the same data order (and the same
    augmentation draws): only the initialisation differs. Returns each net's activations of every
    layer on the evaluation images, its held-out accuracy, and N."""
    x, y, train, test = load(regime, quick)
    train_rows = torch.tensor(train)
    evaluation = x if regime == "digits8" else augment(x[test], torch.Generator().manual_seed(99))
    eval_labels = y if regime == "digits8" else y[test]
    accuracy_rows = torch.tensor(test) if regime == "digits8" else torch.arange(len(test))
    activations, accuracies = [], []
    for seed in range(n_nets):
        torch.manual_seed(seed)
        net: nn.Module = SmallCNN() if regime == "digits8" else Tiny10()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        order = torch.Generator().manual_seed(1234)  # same data order and augmentation for every net
        net.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(train), generator=order).split(64):
                rows = train_rows[batch]
                inputs = x[rows] if regime == "digits8" else augment(x[rows], order)
                loss = F.cross_entropy(net(inputs)[0], y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
        if regime == "digits32":  # exact BatchNorm statistics of the final weights (one pass, augmented)
            for module in net.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.reset_running_stats()
                    module.momentum = None  # cumulative average over the pass
            with torch.no_grad():
                for batch in torch.arange(len(train)).split(256):
                    net(augment(x[train_rows[batch]], torch.Generator().manual_seed(7)))
        net.eval()
        with torch.no_grad():
            logits, acts = net(evaluation)
        pred = logits[accuracy_rows].argmax(1)
        accuracies.append(float((pred == eval_labels[accuracy_rows]).float().mean()))
        activations.append([a.double() for a in acts])
    return activations, accuracies, evaluation.shape[0]


# ----------------------------------------------------------------------------------------------
# identification


def identify(
    activations: list[list[Tensor]], only: tuple[str, ...] = tuple(INDICES)
) -> dict[tuple[int, int], dict[str, list[int]]]:
    """For every ordered pair of nets (i, j) and every layer l of i, the layer of j each index finds
    most similar to l: ``{(i, j): {index: [best layer of j for l = 0, 1, …]}}``. Symmetric indices are
    computed once per unordered pair and read both ways; PWCCA is computed per direction."""
    n_layers = len(activations[0])
    out: dict[tuple[int, int], dict[str, list[int]]] = {}
    for i, j in itertools.combinations(range(len(activations)), 2):
        table = [[scores(a, b, only) for b in activations[j]] for a in activations[i]]  # x = layer of i
        names = list(table[0][0])
        layers = range(n_layers)
        fwd = {name: [_argmax([table[q][c][name] for c in layers]) for q in layers] for name in names}
        bwd = {name: [_argmax([table[c][q][name] for c in layers]) for q in layers] for name in names}
        if "pwcca" in only:  # PWCCA is not symmetric: j's layer is now the query, so it is x
            bwd[INDICES["pwcca"]] = [
                _argmax([float(AF.pwcca(activations[j][q], activations[i][c], eps=1e-6)) for c in layers])
                for q in layers
            ]
        out[(i, j)], out[(j, i)] = fwd, bwd
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def summarise(
    found: dict[tuple[int, int], dict[str, list[int]]], stages: tuple[int, ...], resamples: int = 2000
) -> dict[str, dict[str, object]]:
    """Per index: accuracy, 95 % percentile-bootstrap interval over ordered net pairs, and the misses
    (query layer → chosen layer, 1-based) with how many cross a resolution stage."""
    pairs = sorted(found)
    names = list(found[pairs[0]])
    g = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(pairs), (resamples, len(pairs)), generator=g)
    out: dict[str, dict[str, object]] = {}
    for name in names:
        per_pair = torch.tensor(
            [sum(int(c == q) for q, c in enumerate(found[p][name])) / len(found[p][name]) for p in pairs],
            dtype=torch.float64,
        )
        boot = per_pair[picks].mean(1)
        low, high = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        misses = Counter((q + 1, c + 1) for p in pairs for q, c in enumerate(found[p][name]) if c != q)
        crossing = sum(n for (q, c), n in misses.items() if stages[q - 1] != stages[c - 1])
        out[name] = {
            "accuracy": float(per_pair.mean()),
            "low": low,
            "high": high,
            "misses": misses,
            "crossing": crossing,
            "total_misses": sum(misses.values()),
        }
    return out


def markdown(summary: dict[str, dict[str, object]], accuracies: list[float], args: argparse.Namespace,
             n_eval: int, seconds: float, command: str) -> str:  # fmt: skip
    n_layers = len(Tiny10.STAGES) if args.regime == "digits32" else len(SmallCNN.PLAN)
    if args.regime == "digits32":
        setup = (
            f"{args.nets} Tiny-10 CNNs (Kornblith et al.'s Table C.1: 8 conv-BN-ReLU layers "
            "16-16-32-32-32-64-64-64, global average pool, logits = 10 layers) trained on scikit-learn's "
            "digits rendered at 32 × 32 "
            f"with seeded random affine + elastic augmentation, from seeds 0–{args.nets - 1} ({args.epochs} "
            f"epochs, same data order and augmentation draws; held-out accuracy {min(accuracies):.3f}–"
            f"{max(accuracies):.3f}). Activations of the {n_eval} held-out digits (one fixed augmentation "
            "each), conv layers average-pooled to ≤ 256 features."
        )
    else:
        setup = (
            f"{args.nets} CNNs with 8 conv layers (16-16-16-32-32-32-64-64 channels, 8×8 → 2×2), trained on "
            f"scikit-learn's digits from seeds 0–{args.nets - 1} ({args.epochs} epochs, same data order; "
            f"test accuracy {min(accuracies):.3f}–{max(accuracies):.3f}). Activations of all {n_eval} "
            "images, flattened."
        )
    pairs = args.nets * (args.nets - 1)
    quick = " (quick)" if args.quick else ""
    lines = [
        f"# Layer identification (Kornblith et al. 2019, Table 2): {args.regime}{quick}",
        "",
        setup + f" For every ordered pair of nets ({pairs}) and every layer of the first, the index must "
        f"pick the corresponding layer of the second among all its {n_layers} (chance = 1/{n_layers}); "
        "the query layer is x, each candidate y (PWCCA weights come from the query). 95 % intervals: "
        "percentile bootstrap over the ordered net pairs (pairs share nets: read them as rough). "
        f"Generated by `{command}` in {seconds:.0f} s on CPU.",
        "",
        "| index | accuracy [95 % interval] | misses crossing a stage | Kornblith et al., CIFAR-10 |",
        "|---|--:|--:|--:|",
    ]
    for name, row in summary.items():
        published = f"{PUBLISHED[name]} %" if name in PUBLISHED else "—"
        lines.append(
            f"| {name} | {100 * row['accuracy']:.1f} % [{100 * row['low']:.1f}, {100 * row['high']:.1f}] | "
            f"{row['crossing']} of {row['total_misses']} | {published} |"
        )
    lines += ["", "Most frequent misses (query layer → chosen layer of the other net, count), 1-based:", ""]
    for name, row in summary.items():
        misses: Counter = row["misses"]  # type: ignore[assignment]
        top = ", ".join(f"{q}→{c} ×{n}" for (q, c), n in misses.most_common(6)) or "none"
        lines.append(f"- {name}: {top}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> tuple[dict[str, dict[str, object]], list[float], int, float]:
    start = time.perf_counter()
    activations, accuracies, n_eval = train_nets(args.regime, args.nets, args.epochs, args.quick)
    found = identify(activations, args.indices)
    stages = Tiny10.STAGES if args.regime == "digits32" else SmallCNN.STAGES
    summary = summarise(found, stages)
    return summary, accuracies, n_eval, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--regime", choices=("digits32", "digits8"), default="digits32")
    parser.add_argument("--nets", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: 8 (digits32), 30 (digits8)")
    parser.add_argument(
        "--quick", action="store_true", help="2 nets, 1 epoch, 128 training / 48 held-out images"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    parser.add_argument(
        "--indices",
        default=",".join(INDICES),
        help=f"comma-separated subset of {','.join(INDICES)} (default: all)",
    )
    args = parser.parse_args(argv)
    args.indices = tuple(k.strip() for k in args.indices.split(","))
    unknown = [k for k in args.indices if k not in INDICES]
    if unknown or not args.indices:
        parser.error(f"--indices: unknown {unknown}; choose from {','.join(INDICES)}")
    if args.quick:
        args.nets, args.epochs = 2, 1
    if args.epochs is None:
        args.epochs = 8 if args.regime == "digits32" else 30
    if args.nets < 2 or args.epochs < 1:
        parser.error("--nets must be ≥ 2 and --epochs ≥ 1")
    torch.set_num_threads(1)  # SVDs on a shared 2-core machine are far slower with 2 threads
    summary, accuracies, n_eval, seconds = run(args)
    command = "python experiments/layer_identification.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    text = markdown(summary, accuracies, args, n_eval, seconds, command.strip())
    old = args.out.read_text() if args.out.exists() else ""
    tail = old[old.index(MARKER) :] if MARKER in old else ""
    args.out.write_text(text + tail)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
