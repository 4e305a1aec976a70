"""Run a recipe end to end: train → evaluate on the test split → the run directory."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from alignkit.recipes.config import validate_config, write_config
from alignkit.recipes.data import RecipeData, load_recipe_data
from alignkit.recipes.systems import build_system

__all__ = ["run_recipe"]


class BatchRows(Dataset):
    """The training rows as a dataset whose batches the system assembles itself
    (``system.batch(data, rows)``): sides that live on disk (memory-mapped features) or as prepared
    inputs are read batch by batch, so resident memory does not grow with N."""

    def __init__(self, system: Any, data: RecipeData, rows: Tensor) -> None:
        self.system, self.data, self.rows = system, data, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> list[Any]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> list[Any]:
        return self.system.batch(self.data, self.rows[torch.as_tensor(indices, dtype=torch.long)])


def as_batch(batch: list[Any]) -> list[Any]:
    """The collate function of :class:`BatchRows`: the system already assembled the batch."""
    return batch


def _training_rows(system: Any, data: RecipeData, rows: Tensor) -> Any:
    """Every side in memory as tensors: the batch tensors of all rows (the Trainer slices them);
    otherwise a :class:`BatchRows` dataset."""
    if all(isinstance(side, Tensor) for side in (data.a, data.b)):
        return system.batch(data, rows)
    return BatchRows(system, data, rows)


def _train_rows(cfg: Mapping[str, Any], data: RecipeData) -> Tensor:
    rows = data.splits["train"]
    subset = cfg["data"]["train_subset"]
    return rows if subset is None else rows[:subset]


def run_recipe(
    config: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    data: RecipeData | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``config``'s recipe into ``out_dir`` and evaluate it on the test split.

    Writes (rank 0 only under ``torchrun``) ``config.yaml`` (the resolved config), ``metrics.jsonl``
    and ``checkpoints/`` (by :class:`~alignkit.train.Trainer`, with a per-epoch validation record
    holding ``val_loss`` — the monitored value — and ``val_recall@1``), then ``metrics.json`` and
    ``embeddings_test.safetensors`` (:func:`alignkit.recipes.evaluate.evaluate_run`) from the ``best`` (or
    ``last``, ``train.evaluate_checkpoint``) weights.

    Args:
        config: a config (validated here).
        out_dir: the run directory.
        resume: continue from ``out_dir/checkpoints/last.json`` if it exists.
        data: the data (default :func:`~alignkit.recipes.data.load_recipe_data` of the config).
        progress: show the Trainer's progress bar (when stderr is a terminal).

    ``train.threads`` (default 1) is applied with ``torch.set_num_threads`` for the whole process:
    these towers are tiny, and on a shared 2-core CPU two intra-op threads per step were measured
    up to 80× slower than one (thread oversubscription); ``null`` keeps torch's setting.

    Returns:
        The test metrics (what ``metrics.json`` holds).

    Cost: ``train.epochs`` passes over the training split plus one pass over val per epoch.
    """
    from alignkit.recipes.evaluate import evaluate_run, make_validator
    from alignkit.train import Trainer, dist_info, seed_everything

    cfg = validate_config(config)
    start = time.perf_counter()
    data = load_recipe_data(cfg, progress=progress) if data is None else data
    out = Path(out_dir)
    info = dist_info()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out / "config.yaml")
    if cfg["train"]["threads"] is not None:
        # small towers: one thread per process avoids oversubscribing a shared CPU
        torch.set_num_threads(cfg["train"]["threads"])
    seed_everything(cfg["seed"])
    system = build_system(cfg, data)
    if info.distributed and cfg["recipe"] == "binder":
        raise ValueError(
            "the binder recipe trains on per-batch halves of unequal size; run it in one process"
        )
    t = cfg["train"]
    device = None if t["device"] == "auto" else t["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'train.device' is 'cuda' but no CUDA device is available")
    train_data = _training_rows(system, data, _train_rows(cfg, data))
    # a system with its own validation / test evaluation (the generative repa recipe) provides them
    own_validator = getattr(system, "make_validator", None)
    validator = own_validator(data, out if info.is_main else None) if own_validator else make_validator(data)
    trainer = Trainer(
        system,
        train_data,
        epochs=t["epochs"],
        lr=t["lr"],
        out_dir=out,
        batch_size=t["batch_size"],
        weight_decay=t["weight_decay"],
        warmup_fraction=t["warmup_fraction"],
        min_lr_ratio=t["min_lr_ratio"],
        grad_clip=t["grad_clip"],
        evaluate=validator,
        monitor="val_loss",
        mode="min",
        seed=cfg["seed"],
        collate_fn=None if isinstance(train_data, list) else as_batch,
        log_every=t["log_every"],
        progress=progress,
        resume=resume,
        device=device,
    )
    result = trainer.fit()
    if t["evaluate_checkpoint"] == "best" and result.best_checkpoint is not None:
        trainer.load_best()
    metrics: dict[str, Any] = {}
    if info.is_main:
        own_evaluation = getattr(system, "evaluate_run", None)
        evaluate = own_evaluation if own_evaluation is not None else partial(evaluate_run, system)
        metrics = evaluate(data, out, recipe=cfg["recipe"], epochs=t["epochs"], start=start)
    return metrics
