"""Run a recipe end to end: train → evaluate on the test split → the run directory."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from alignkit.io import json_safe
from alignkit.recipes.config import _flatten, load_config, validate_config, write_config
from alignkit.recipes.data import RecipeData, load_recipe_data
from alignkit.recipes.systems import build_system

__all__ = ["RESUMABLE_CHANGES", "BatchRows", "check_resume", "run_recipe", "run_seeds", "summarize_seeds"]

#: Config keys a ``--resume`` may change: they steer the run, not what it trains.
RESUMABLE_CHANGES = ("train.device", "train.evaluate_checkpoint", "train.log_every", "train.threads")


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


def check_resume(config: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, int] | None:
    """Before a resume writes anything: is ``out_dir`` resumable with ``config``?

    Returns ``None`` when ``out_dir`` holds no ``checkpoints/last.json`` (the run starts fresh), else
    where it stops: ``{"step", "epoch", "batch_in_epoch"}`` (``epoch`` counts finished epochs).

    Raises:
        ValueError: ``config`` differs from the run's ``config.yaml`` in a key other than
            :data:`RESUMABLE_CHANGES` (the message names every such key with both values); the run
            directory is left untouched, so a plain ``--resume`` still works.
    """
    from alignkit.train.checkpoint import load_checkpoint

    out = Path(out_dir)
    last = out / "checkpoints" / "last.json"
    if not last.is_file():
        return None
    saved_path = out / "config.yaml"
    if saved_path.is_file():
        saved = _flatten(load_config(saved_path))
        wanted = _flatten(validate_config(config))
        keys = (saved.keys() | wanted.keys()) - set(RESUMABLE_CHANGES)
        changed = sorted(k for k in keys if saved.get(k) != wanted.get(k))
        if changed:
            diff = ", ".join(f"{k} ({saved.get(k)!r} → {wanted.get(k)!r})" for k in changed)
            raise ValueError(
                f"cannot resume {out}: the requested config differs from its config.yaml in {diff}; "
                "only " + ", ".join(RESUMABLE_CHANGES) + " may change on resume — drop those overrides "
                "to resume, or train into another --out (nothing was written)"
            )
    state = load_checkpoint(last, verify=False).state
    return {k: int(state.get(k, 0)) for k in ("step", "epoch", "batch_in_epoch")}


def run_recipe(
    config: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    data: RecipeData | None = None,
    progress: bool | str = True,
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
        progress: show the Trainer's progress: a bar in a terminal, else one line per epoch on
            stderr; a string labels it (``"[2/6] byol: "``, see :class:`~alignkit.train.Trainer`).

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
    out = Path(out_dir)
    info = dist_info()
    if resume and info.is_main:
        check_resume(cfg, out)  # before anything is written: a refused resume leaves the run resumable
    data = load_recipe_data(cfg, progress=bool(progress)) if data is None else data
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
        if own_evaluation is not None:  # a generative recipe (repa) scores itself
            metrics = own_evaluation(data, out, recipe=cfg["recipe"], epochs=t["epochs"], start=start)
        else:
            metrics = evaluate_run(
                system,
                data,
                out,
                recipe=cfg["recipe"],
                epochs=t["epochs"],
                start=start,
                null_permutations=t["null_permutations"],
                bootstrap=t["bootstrap"],
            )
    return metrics


def summarize_seeds(runs: Mapping[int, Mapping[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Mean, standard deviation and a ``level`` Student-t interval of every numeric metric over the
    runs of several seeds (:func:`alignkit.functional.seed_interval`).

    Returns ``{"recipe", "seeds", "n_seeds", "level", "mean": {k: …}, "sd": {…}, "low": {…},
    "high": {…}, "runs": {seed: metrics}}``."""
    from alignkit.functional import seed_interval

    seeds = sorted(runs)
    keys = [k for k, v in runs[seeds[0]].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary: dict[str, Any] = {
        "recipe": runs[seeds[0]].get("recipe"),
        "seeds": seeds,
        "n_seeds": len(seeds),
        "level": level,
        "mean": {},
        "sd": {},
        "low": {},
        "high": {},
    }
    for key in keys:
        values = [runs[s].get(key) for s in seeds]
        finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
        if not finite:
            continue
        stats = seed_interval(finite, level)
        for part in ("mean", "sd", "low", "high"):
            summary[part][key] = stats[part]
    summary["runs"] = {str(s): dict(runs[s]) for s in seeds}
    return summary


def run_seeds(
    config: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    seeds: int,
    resume: bool = False,
    data: RecipeData | None = None,
    progress: bool | str = True,
    on_run: Any = None,
) -> dict[str, Any]:
    """:func:`run_recipe` for ``seeds`` seeds (``seed``, ``seed + 1``, …; the data split,
    ``data.seed``, stays fixed so the spread is the training's) into ``out_dir/seed-<s>/``, then
    the summary of :func:`summarize_seeds` written to ``out_dir/metrics.json``.

    ``on_run(i, seed, metrics)`` is called after each run (progress lines)."""
    import json

    cfg = validate_config(config)
    if not (isinstance(seeds, int) and 1 <= seeds <= 1000):
        raise ValueError(f"--seeds must be an integer in [1, 1000], got {seeds!r}")
    data = load_recipe_data(cfg, progress=bool(progress)) if data is None else data
    out = Path(out_dir)
    runs: dict[int, dict[str, Any]] = {}
    for i in range(seeds):
        seed = int(cfg["seed"]) + i
        one = {**cfg, "seed": seed}
        runs[seed] = run_recipe(one, out / f"seed-{seed}", resume=resume, data=data, progress=progress)
        if on_run is not None:
            on_run(i, seed, runs[seed])
    summary = summarize_seeds(runs)
    from alignkit.io import atomic_write

    text = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "metrics.json", "w") as handle:
        handle.write(text)
    write_config(cfg, out / "config.yaml")
    return summary


