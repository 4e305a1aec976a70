"""Kornblith et al. 2019, Table 2, at small scale: can a similarity index identify corresponding
layers of networks trained from different random seeds?

Kornblith et al. ("Similarity of Neural Network Representations Revisited", ICML 2019, §6.1) train
ten 10-layer CNNs on CIFAR-10 from different initialisations; for every layer of one network they
ask whether the most similar layer of another network is the architecturally corresponding one.
Their accuracies: CCA (ρ̄) 1.4 %, CCA (R²_CCA) 10.6 %, SVCCA (ρ̄) 9.9 %, SVCCA (R²_CCA) 15.1 %,
PWCCA 11.1 %, linear regression 45.4 %, linear CKA 99.3 %, RBF CKA 99.3 %.

Here: ``--nets`` identical 8-layer CNNs trained on scikit-learn's digits from different seeds (same
data order), activations of every layer on all 1,797 images, and the same matching for each index
alignkit offers. (A first try with deep MLPs failed for every index: their hidden layers past the
second are nearly identical to each other — linear CKA 0.82–0.85 between any two — so no index can
tell them apart; convolutional layers at different resolutions differ, as in the paper.)

    python experiments/layer_identification.py            # writes experiments/layer_identification.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import alignkit.functional as AF

PUBLISHED = {  # Kornblith et al. 2019, Table 2 (CIFAR-10, 10-layer CNNs)
    "CCA (mean ρ)": "1.4",
    "CCA (R²_CCA)": "10.6",
    "SVCCA (mean ρ)": "9.9",
    "PWCCA": "11.1",
    "linear CKA": "99.3",
    "RBF CKA (σ = 0.8·median)": "99.3",
}


def scores(x: Tensor, y: Tensor) -> dict[str, float]:
    """Every index for one pair of layers (canonical correlations computed once for both CCA rows)."""
    rho = AF.canonical_correlations(x, y, eps=1e-6)
    return {
        "CCA (mean ρ)": float(rho.mean()),
        "CCA (R²_CCA)": float((rho**2).mean()),
        "SVCCA (mean ρ)": float(AF.svcca(x, y, keep=0.99)),
        "PWCCA": float(AF.pwcca(x, y, eps=1e-6)),
        "linear CKA": float(AF.cka(x, y)),
        "RBF CKA (σ = 0.8·median)": float(AF.cka(x, y, kernel="rbf", threshold=0.8)),
        "mutual kNN (k=10)": float(AF.mutual_knn(x, y, k=10)),
        "Procrustes (1 − d/2)": 1 - float(AF.procrustes_distance(x, y)) / 2,
    }


class TinyCNN(nn.Module):
    """Kornblith's "Tiny-10" idea scaled to 8×8 digits: 3×3 conv + ReLU layers, channels doubling
    as the resolution halves (8×8 → 4×4 → 2×2), global average pool, linear classifier."""

    PLAN = ((16, 1), (16, 1), (16, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1))  # (channels, stride)

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


def train_nets(n_nets: int, epochs: int) -> tuple[list[list[Tensor]], list[float]]:
    """Train ``n_nets`` identical CNNs from seeds 0…n−1 (same data order); return each net's
    activations of every layer on all 1,797 images and its test accuracy."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    train, test = train_test_split(range(len(y)), test_size=0.25, random_state=0, stratify=digits.target)
    activations, accuracies = [], []
    for seed in range(n_nets):
        torch.manual_seed(seed)
        net = TinyCNN()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        order = torch.Generator().manual_seed(1234)  # same data order for every net: only the init differs
        for _ in range(epochs):
            for batch in torch.randperm(len(train), generator=order).split(64):
                rows = torch.tensor(train)[batch]
                loss = nn.functional.cross_entropy(net(x[rows])[0], y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            logits, acts = net(x)
        accuracies.append(float((logits[test].argmax(1) == y[test]).float().mean()))
        activations.append([a.double() for a in acts])
    return activations, accuracies


def identification_accuracy(activations: list[list[Tensor]]) -> dict[str, float]:
    """Per index, the fraction of (net i, net j ≠ i, layer l) for which layer l of j is the most
    similar to layer l of i. Every index is symmetric, so each unordered pair of nets is scored once."""
    n_layers = len(activations[0])
    hits: dict[str, int] = {}
    total = 0
    for i, j in itertools.combinations(range(len(activations)), 2):
        table = [[scores(a, b) for b in activations[j]] for a in activations[i]]
        for name in table[0][0]:
            for layer in range(n_layers):
                row = max(range(n_layers), key=lambda m, name=name: table[layer][m][name])  # i's layer in j
                col = max(range(n_layers), key=lambda m, name=name: table[m][layer][name])  # j's layer in i
                hits[name] = hits.get(name, 0) + int(row == layer) + int(col == layer)
        total += 2 * n_layers
    return {name: count / total for name, count in hits.items()}


def run(n_nets: int, epochs: int) -> tuple[dict[str, float], list[float], float]:
    start = time.perf_counter()
    activations, accuracies = train_nets(n_nets, epochs)
    results = identification_accuracy(activations)
    return results, accuracies, time.perf_counter() - start


def markdown(
    results: dict[str, float], accuracies: list[float], args: argparse.Namespace, seconds: float
) -> str:
    lines = [
        "# Layer identification (Kornblith et al. 2019, Table 2) at small scale",
        "",
        f"{args.nets} CNNs with {len(TinyCNN.PLAN)} conv layers (16-16-16-32-32-32-64-64 channels, "
        f"8×8 → 2×2), trained on scikit-learn's digits from seeds 0–{args.nets - 1} ({args.epochs} epochs, "
        f"same data order; test accuracy {min(accuracies):.3f}–{max(accuracies):.3f}). For every ordered "
        "pair of networks and every layer, the index must pick the corresponding layer of the other "
        "network among all its "
        f"layers (chance = 1/{len(TinyCNN.PLAN)}). Activations of all 1,797 images, flattened. "
        f"Generated by `python experiments/layer_identification.py` in {seconds:.0f} s on CPU.",
        "",
        "| index | alignkit, digits CNNs | Kornblith et al., CIFAR-10 CNNs |",
        "|---|---|---|",
    ]
    for name, acc in results.items():
        lines.append(
            f"| {name} | {100 * acc:.1f} % | {PUBLISHED.get(name, '—')}{' %' if name in PUBLISHED else ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nets", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results, accuracies, seconds = run(args.nets, args.epochs)
    text = markdown(results, accuracies, args, seconds)
    args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
