"""A generation metric that can be trusted on the 8×8 digits: FD, class accuracy and precision/recall in
the feature space of a separately trained digit classifier.

Inception features mean nothing on 8×8 digits, so :class:`GenerationJudge` trains its own small
classifier (:class:`DigitClassifier`) once on the training split — with labels, it is the judge, not
the model judged — caches it under the alignkit cache directory, and reports its test accuracy.
Generated images are then scored against the held-out test images:

* **FD**: :func:`alignkit.functional.frechet_distance` between the classifier's penultimate features
  (64-d, before the ReLU) of the samples and of the test images (FID's formula, Heusel et al. 2017);
* **accuracy**: the classifier's accuracy on class-conditional samples (does a sample of class y look
  like a y?);
* **precision / recall**: :func:`alignkit.functional.manifold_precision_recall` with k = 3
  (Kynkäänniemi et al. 2019) in the same features.

Example::

    judge = GenerationJudge.from_digits(train_x, train_y, test_x, test_y)   # trains or loads the cache
    judge.test_accuracy                                                      # e.g. 0.98
    scores = judge.score(samples, labels)   # {"fd":…, "accuracy":…, "precision":…, "recall":…}

FD depends on the number of samples (it is biased upwards at small N): compare values computed with
the same N only. The default reference is the whole test split (360 images at the default split).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import check_int
from alignkit.functional.generation import frechet_distance, manifold_precision_recall

__all__ = [
    "DigitClassifier",
    "GenerationJudge",
    "cached_module",
    "data_digest",
    "random_shift",
    "train_digit_classifier",
]


def data_digest(*arrays: Any, **settings: Any) -> str:
    """A sha256 (16 hex digits) over arrays' bytes, shapes and dtypes and JSON-able settings: a cache key."""
    h = hashlib.sha256()
    for a in arrays:
        arr = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a))
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _default_cache_dir() -> Path:
    from alignkit.data.text import default_cache_dir

    return default_cache_dir()


def cached_module(
    name: str,
    key: str,
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], Mapping[str, Any]],
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``build()``'s weights from ``<cache>/<name>/<key>.safetensors`` or train and save them.

    ``train(module)`` trains in place and returns JSON-able facts (e.g. test accuracy), saved beside the
    weights as ``<key>.json`` and returned with the module. Writes are atomic (temporary file + rename),
    so an interrupted training leaves no cache entry. The module is returned in eval mode with
    ``requires_grad`` off (a frozen judge / target).
    """
    from safetensors.torch import load_file, save_file

    root = (_default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()) / name
    weights, facts_path = root / f"{key}.safetensors", root / f"{key}.json"
    module = build()
    if weights.is_file() and facts_path.is_file():
        module.load_state_dict(load_file(str(weights)))
        facts = json.loads(facts_path.read_text())
    else:
        with torch.enable_grad():  # also when called under no_grad (e.g. from a validation hook)
            facts = dict(train(module))
        root.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp))
        os.replace(tmp, weights)
        tmp_json = facts_path.with_suffix(f".tmp{os.getpid()}")
        tmp_json.write_text(json.dumps(facts, indent=1))
        os.replace(tmp_json, facts_path)
    module.eval().requires_grad_(False)
    return module, facts


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each (N, H, W) or (N, C, H, W) image by a random integer offset in [−s, s]² (zero fill)."""
    x = images if images.dim() == 4 else images[:, None]
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out if images.dim() == 4 else out[:, 0]


class DigitClassifier(nn.Module):
    """The judge: Conv3(1→32) ReLU Conv3(32→64) ReLU MaxPool Conv3(64→64) ReLU MaxPool → Linear(256→64)
    → [features] → ReLU → Linear(64→10), for (N, 8, 8) or (N, 1, 8, 8) images in [0, 1]."""

    feature_dim = 64

    def __init__(self, num_classes: int = 10, size: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (size // 4) ** 2, self.feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(self.feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """(N, 64) penultimate features (before the ReLU)."""
        return self.body(x if x.dim() == 4 else x[:, None])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_digit_classifier(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> nn.Module:
    """Train a classifier in place with AdamW and ±1-pixel random shifts (cross-entropy). Returns it."""
    check_int(epochs, "epochs", 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, lr, total_steps=epochs * ((len(images) + batch_size - 1) // batch_size)
        )
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=gen)
            for start in range(0, len(images), batch_size):
                idx = order[start : start + batch_size]
                x = random_shift(images[idx], 1, gen)
                loss = F.cross_entropy(model(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


class GenerationJudge:
    """FD / class accuracy / precision-recall of generated digits against a held-out reference set.

    Build with :meth:`from_digits` (trains the classifier once, cached). ``score(samples, labels)``
    clamps samples to [0, 1] (the digits' range) and returns a dict of floats:
    ``fd``, ``accuracy`` (None without labels), ``precision``, ``recall``.
    """

    def __init__(
        self, classifier: DigitClassifier, reference: Tensor, test_accuracy: float, k: int = 3
    ) -> None:
        self.classifier = classifier.eval().requires_grad_(False)
        self.reference = reference
        self.test_accuracy = float(test_accuracy)
        self.k = k
        self.reference_features = self.features(reference)

    @classmethod
    def from_digits(
        cls,
        train_images: Tensor,
        train_labels: Tensor,
        test_images: Tensor,
        test_labels: Tensor,
        cache_dir: str | os.PathLike[str] | None = None,
        epochs: int = 40,
        seed: int = 0,
    ) -> GenerationJudge:
        """Train (or load from the cache) the judge on the training split; reference = test images."""
        train_images, test_images = train_images.float(), test_images.float()
        key = data_digest(train_images, train_labels, epochs=epochs, seed=seed, model="DigitClassifier-v1")

        def fit(model: nn.Module) -> dict[str, Any]:
            train_digit_classifier(model, train_images, train_labels.long(), epochs=epochs, seed=seed)
            with torch.no_grad():
                acc = (model(test_images).argmax(1) == test_labels.long()).float().mean().item()
            return {"test_accuracy": acc, "epochs": epochs, "seed": seed, "train_rows": len(train_images)}

        model, _ = cached_module("digit_judge", key, DigitClassifier, fit, cache_dir)
        with torch.no_grad():  # recomputed: the cache key covers the training data, not the test split
            acc = (model(test_images).argmax(1) == test_labels.long()).float().mean().item()
        return cls(model, test_images, acc)  # type: ignore[arg-type]

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.float().clamp(0, 1))

    @torch.no_grad()
    def score(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float | None]:
        """Scores of (N, 8, 8) or (N, 1, 8, 8) samples (and their (N,) conditioning labels)."""
        x = samples.float().clamp(0, 1)
        if x.dim() == 4:
            x = x[:, 0]
        feats = self.classifier.features(x)
        precision, recall = manifold_precision_recall(self.reference_features, feats, k=self.k)
        accuracy = None
        if labels is not None:
            logits = self.classifier.head(feats)
            accuracy = (logits.argmax(1).cpu() == labels.cpu().long()).float().mean().item()
        return {
            "fd": float(frechet_distance(self.reference_features, feats)),
            "accuracy": accuracy,
            "precision": float(precision),
            "recall": float(recall),
        }
