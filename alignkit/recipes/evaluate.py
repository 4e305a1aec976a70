"""Evaluation of a trained recipe system: per-epoch validation and the final test-split report.

    from alignkit.recipes.evaluate import evaluate_split, write_evaluation
    metrics, tensors = evaluate_split(
        system, data, "test", permutations=null_permutations, bootstrap=bootstrap
    )
    write_evaluation("runs/clip", metrics, tensors)   # metrics.json + embeddings_test.safetensors

Metrics (all on L2-normalised joint embeddings, row i = image i and its own caption i, so retrieval
is instance-level: chance R@1 = 1/N):

====================  ============================================================================
``zero_shot_accuracy`` fraction of images whose most cosine-similar class vector is their digit. The
                      class vector of digit c averages the normalised joint embeddings of its prompts
                      (:func:`alignkit.data.class_prompts`; Radford et al. 2021 prompt ensembling):
                      class prompts → MiniLM → text projection → ``DualEncoder.zero_shot_classifier``
                      for clip / supcon / joint; the text branch's projection for byol, the binder's
                      text head, and the caption projection of the disentangled recipe.
``i2t_recall@K``      image → caption Recall@K (:func:`alignkit.functional.recall_at_k`), K = 1, 5, 10.
``t2i_recall@K``      caption → image Recall@K.
``median_rank``       median 1-based rank of the own caption for image queries (i2t);
                      ``t2i_median_rank`` for caption queries.
``cka_linear``        linear CKA between the image and the text joint embeddings (Kornblith et al.
                      2019, "Similarity of Neural Network Representations Revisited").
``cka_towers``        linear CKA between the raw tower outputs (image tower vs MiniLM).
``mutual_knn``        mutual 10-NN overlap (Huh et al. 2024, "The Platonic Representation Hypothesis").
``alignment``         ``mean ‖x̂_i − ŷ_i‖²``; ``uniformity`` the mean of both sides' ``log E exp(−2‖·‖²)``
                      (Wang & Isola 2020, "Understanding Contrastive Representation Learning through
                      Alignment and Uniformity on the Hypersphere").
====================  ============================================================================

Files are written atomically (temporary file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from alignkit.io import atomic_write, json_safe
from alignkit.recipes.systems.base import to_device

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData
    from alignkit.recipes.systems.base import RecipeSystem

__all__ = [
    "EMBEDDING_KEYS",
    "METRIC_KEYS",
    "evaluate_run",
    "evaluate_split",
    "make_validator",
    "write_evaluation",
]

#: The keys every ``metrics.json`` holds (floats), besides ``recipe``, ``seconds`` and ``epochs``
#: (``zero_shot_accuracy`` only when the data has labels and class prompts, as the digits have).
METRIC_KEYS = (
    "zero_shot_accuracy",
    "i2t_recall@1",
    "i2t_recall@5",
    "i2t_recall@10",
    "t2i_recall@1",
    "t2i_recall@5",
    "t2i_recall@10",
    "median_rank",
    "cka_linear",
    "cka_unbiased",
    "mutual_knn",
    "alignment",
    "uniformity",
)
#: Validation scores at most this many rows of the split (the first ones) each epoch.
VALIDATION_ROWS = 4096
#: The tensors of ``embeddings_test.safetensors``.
EMBEDDING_KEYS = ("image", "text", "labels", "class_text", "image_tower", "text_tower")


def make_validator(data: RecipeData, split: str = "val") -> Callable[[nn.Module], dict[str, float]]:
    """The Trainer's per-epoch ``evaluate``: ``{"val_loss", "val_recall@1"}`` on ``split``.

    ``val_loss`` is the system's deterministic ``validation_loss`` on the split (its first
    :data:`VALIDATION_ROWS` rows) as one batch;
    under ``torchrun`` each rank scores an equal shard (losses that gather negatives then see the
    whole split once) and the mean over ranks is returned. ``val_recall@1`` is image → caption
    Recall@1 over the split (each rank computes it on all rows; no collective).

    Cost: one forward over the split and an O(n²·E) similarity for n rows.
    """
    from alignkit.functional import recall_at_k
    from alignkit.train import all_reduce_mean, dist_info

    rows = data.splits[split][:VALIDATION_ROWS]

    def evaluate(system: nn.Module) -> dict[str, float]:
        info = dist_info()
        shard = rows
        if info.distributed:
            n = len(rows) // info.world_size
            shard = rows[info.rank * n : (info.rank + 1) * n]
        device = _device(system)
        batch = [to_device(t, device) for t in system.batch(data, shard)]  # type: ignore[operator]
        loss = system.validation_loss(batch).detach().float().reshape(())  # type: ignore[operator]
        if info.distributed:
            loss = all_reduce_mean(loss.reshape(1)).reshape(())
        emb = system.embed(data, rows)  # type: ignore[operator]
        r1 = recall_at_k(emb["image"], emb["text"], k=1)["recall@1"]
        return {"val_loss": float(loss), "val_recall@1": float(r1)}

    return evaluate


#: metrics.json key → the key of :func:`alignkit.measure.measure` it matches (for its null baseline)
NULL_KEYS = {
    "cka_linear": "cka",
    "cka_unbiased": "unbiased_cka",
    "mutual_knn": "mutual_knn",
    "cknna": "cknna",
    "procrustes": "procrustes",
    "i2t_recall@1": "recall@1",
    "i2t_recall@10": "recall@10",
}


def joint_space_nulls(
    image: Tensor, text: Tensor, knn: int = 10, permutations: int = 100, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Chance level and permutation null (rows of one side shuffled ``permutations`` times) of the
    joint-space similarities (:func:`alignkit.measure.null_baselines`), keyed like ``metrics.json``
    (``cka_linear``, ``cka_unbiased``, ``mutual_knn``, ``i2t_recall@1`` …); CKNNA and Procrustes,
    which the run does not report otherwise, are included with their values.

    Returns ``{key: {"value", "chance", "null_mean", "null_sd", "p_value"}}`` (``chance`` None where no
    closed form exists).

    Cost: (K + 1) times the metrics over the split's rows."""
    from alignkit.measure import measure, null_baselines

    names = ["cka", "unbiased_cka", "mutual_knn", "cknna", "procrustes", "retrieval"]
    values = measure(image, text, names, knn)
    nulls = null_baselines(image, text, names, k=knn, permutations=permutations, seed=seed)
    out: dict[str, dict[str, float]] = {}
    for key, source in NULL_KEYS.items():
        if source in nulls:
            parts = {"value": float(values[source]), **{k: float(v) for k, v in nulls[source].items()}}
            out[key] = json_safe(parts)  # JSON: no NaN
    return out


def bootstrap_intervals(
    image: Tensor, text: Tensor, resamples: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """95 % percentile-bootstrap intervals over the split's rows
    (:func:`alignkit.functional.bootstrap_interval`) of image → text and text → image R@1 and linear
    CKA: ``{key: {"low", "high", "sd"}}``."""
    from alignkit.functional import bootstrap_interval, cka, recall_at_k

    scores = {
        "i2t_recall@1": lambda a, b: recall_at_k(a, b, k=1)["recall@1"],
        "t2i_recall@1": lambda a, b: recall_at_k(b, a, k=1)["recall@1"],
        "cka_linear": lambda a, b: cka(a, b),
    }
    out = {}
    for key, fn in scores.items():
        b = bootstrap_interval(fn, image, text, resamples=resamples, seed=seed)
        out[key] = {"low": b.low, "high": b.high, "sd": b.sd}
    return out


def retrieval_groups(data: RecipeData, rows: Tensor) -> Tensor | None:
    """Group ids of ``rows`` for group-aware retrieval, or None when every row is its own group.

    The source's ``groups`` when it has them; otherwise rows with an identical caption (the digits:
    150 of the 360 test captions repeat another's) — all of them are correct matches."""
    if data.groups is not None:
        groups = data.groups[rows]
    elif data.captions is not None:
        index: dict[str, int] = {}
        groups = torch.tensor([index.setdefault(data.captions[int(i)], len(index)) for i in rows])
    else:
        return None
    return groups if len(torch.unique(groups)) < len(groups) else None


def _device(module: nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def evaluate_split(
    system: RecipeSystem,
    data: RecipeData,
    split: str = "test",
    knn: int = 10,
    permutations: int = 50,
    bootstrap: int = 0,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Zero-shot accuracy, instance-level retrieval and representation similarity on ``split``.

    The system is put in eval mode (its mode is restored afterwards). See the module docstring for
    the definitions.

    Returns:
        ``(metrics, tensors)``: the float metrics (:data:`METRIC_KEYS` plus ``t2i_median_rank``,
        ``i2t_map``, ``t2i_map``, ``cka_towers`` and the system's ``extra_metrics``) and the tensors of
        :data:`EMBEDDING_KEYS` on the CPU (``image`` / ``text`` (N, E) unit rows, ``labels`` (N,)
        int64, ``class_text`` (10, E), ``image_tower`` (N, d_i), ``text_tower`` (N, d_t)).

    Cost: the towers over N rows, O(N²·E) for retrieval (blocked), O(N·d²) for CKA.
    """
    from alignkit.functional import alignment_uniformity, cka, mutual_knn, recall_at_k

    if split not in data.splits:
        raise ValueError(f"split must be one of {sorted(data.splits)}, got {split!r}")
    rows = data.splits[split]
    if len(rows) < 2:
        raise ValueError(f"split {split!r} has {len(rows)} rows; evaluation needs at least 2")
    was_training = system.training
    system.eval()
    try:
        emb = system.embed(data, rows)
        class_text = logits = None
        extra_zero_shot: dict[str, float] = {}
        if data.prompts is not None and data.labels is not None:
            class_text = system.class_embeddings(data.prompts)
            logits = system.zero_shot_logits(data.images[rows], class_text)
            labels = data.labels[rows].to(logits.device)
            for name, prompts in data.extra_prompts.items():
                other = system.zero_shot_logits(data.images[rows], system.class_embeddings(prompts))
                right = (other.argmax(1) == labels).float().mean()
                extra_zero_shot[f"zero_shot_accuracy_{name}"] = float(right)
        extra = system.extra_metrics(data)
    finally:
        system.train(was_training)
    image, text = emb["image"].float(), emb["text"].float()
    n = image.shape[0]
    ks = tuple(k for k in (1, 5, 10) if k <= n)
    i2t = recall_at_k(image, text, k=ks)
    t2i = recall_at_k(text, image, k=ks)
    au = alignment_uniformity(image, text)
    metrics: dict[str, float] = {}
    if logits is not None:
        labels = data.labels[rows].to(logits.device)
        metrics["zero_shot_accuracy"] = float((logits.argmax(1) == labels).float().mean())
        metrics.update(extra_zero_shot)
    metrics.update({
        **{f"i2t_recall@{k}": i2t.get(f"recall@{k}", 1.0) for k in (1, 5, 10)},
        **{f"t2i_recall@{k}": t2i.get(f"recall@{k}", 1.0) for k in (1, 5, 10)},
        "median_rank": i2t["median_rank"],
        "t2i_median_rank": t2i["median_rank"],
        "i2t_map": i2t["map"],
        "t2i_map": t2i["map"],
    })
    groups = retrieval_groups(data, rows)
    if groups is not None:
        from alignkit.data.splits import group_positives

        positives = group_positives(groups)
        gi2t = recall_at_k(image, text, k=ks, positives=positives)
        gt2i = recall_at_k(text, image, k=ks, positives=positives)
        metrics.update({f"i2t_recall@{k}_grouped": gi2t.get(f"recall@{k}", 1.0) for k in (1, 5, 10)})
        metrics.update({f"t2i_recall@{k}_grouped": gt2i.get(f"recall@{k}", 1.0) for k in (1, 5, 10)})
    metrics.update({
        "cka_linear": float(cka(image, text)),
        "cka_unbiased": float(cka(image, text, unbiased=True)) if n > 3 else float("nan"),
        "cka_towers": float(cka(emb["image_tower"].float(), emb["text_tower"].float())),
        "mutual_knn": float(mutual_knn(image, text, k=min(knn, n - 1))),
        "alignment": float(au["alignment"]),
        "uniformity": float(au["uniformity"]),
        **{k: float(v) for k, v in extra.items()},
    })
    if permutations > 0 and n > 3:
        metrics["null"] = joint_space_nulls(image, text, knn=min(knn, n - 1), permutations=permutations)
    if bootstrap > 0:
        metrics["bootstrap"] = bootstrap_intervals(image, text, bootstrap)
    labels_out = data.labels[rows] if data.labels is not None else torch.full((n,), -1)
    if class_text is None:  # no zero-shot classes: an empty (0, E) matrix keeps the file's keys
        class_text = image.new_zeros(0, image.shape[1])
    tensors = {
        "image": image.cpu(),
        "text": text.cpu(),
        "labels": labels_out.to(torch.int64).cpu(),
        "class_text": class_text.float().cpu(),
        "image_tower": emb["image_tower"].float().cpu(),
        "text_tower": emb["text_tower"].float().cpu(),
    }
    return metrics, tensors




def _atomic_bytes(path: Path, payload: bytes) -> None:
    with atomic_write(path) as out:
        out.write(payload)


def write_evaluation(
    run_dir: str | os.PathLike[str], metrics: Mapping[str, Any], tensors: Mapping[str, Tensor]
) -> tuple[Path, Path]:
    """Write ``run_dir/metrics.json`` and ``run_dir/embeddings_test.safetensors`` atomically.

    Non-finite floats are written as ``null`` (JSON has no NaN). Returns the two paths.
    """
    from safetensors.torch import save

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = [k for k in EMBEDDING_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"tensors is missing {missing}; expected {list(EMBEDDING_KEYS)}")
    clean = json_safe(dict(metrics))
    emb_path = out / "embeddings_test.safetensors"
    _atomic_bytes(emb_path, save({k: tensors[k].detach().cpu().contiguous() for k in EMBEDDING_KEYS}))
    json_path = out / "metrics.json"
    _atomic_bytes(json_path, (json.dumps(clean, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return json_path, emb_path


def evaluate_run(
    system: RecipeSystem,
    data: RecipeData,
    run_dir: str | os.PathLike[str],
    recipe: str,
    epochs: int,
    start: float | None = None,
    null_permutations: int = 50,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """:func:`evaluate_split` on the test split plus ``recipe``, ``epochs`` and ``seconds`` (wall time
    since ``start``, a ``time.perf_counter()`` value), written by :func:`write_evaluation`.
    ``null_permutations`` / ``bootstrap``: the config's ``train.null_permutations`` / ``train.bootstrap``."""
    metrics, tensors = evaluate_split(
        system, data, "test", permutations=null_permutations, bootstrap=bootstrap
    )
    result: dict[str, Any] = {"recipe": recipe, "epochs": int(epochs), **metrics}
    result["seconds"] = float(time.perf_counter() - start) if start is not None else 0.0
    write_evaluation(run_dir, result, tensors)
    return result
