"""The repa recipe: config fields, one epoch end to end (metrics, grids, FD curve, report), bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from alignkit.recipes import load_config, run_recipe
from alignkit.recipes.data import load_data
from alignkit.train import read_metrics

TINY = [
    "recipe=repa",
    "train.epochs=2",
    "data.train_subset=64",
    "train.batch_size=32",
    "train.log_every=1",
    "model.width=16",
    "model.depth=2",
    "model.num_heads=2",
    "model.projector_dim=16",
    "model.target_epochs=1",
    "model.sample_steps=2",
]


@pytest.fixture(scope="module")
def small() -> object:
    d = load_data()
    splits = {"train": d.splits["train"], "val": d.splits["val"][:30], "test": d.splits["test"][:40]}
    return dataclasses.replace(d, splits=splits)


@pytest.fixture()
def fast_judge(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A private cache and a 2-epoch judge / target encoder, so the test trains them in seconds."""
    from alignkit.metrics.generation import GenerationJudge

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    original = GenerationJudge.from_digits.__func__  # type: ignore[attr-defined]
    quick = classmethod(lambda cls, *a, **k: original(cls, *a, **{**k, "epochs": 2}))
    monkeypatch.setattr(GenerationJudge, "from_digits", quick)


def test_repa_config_fields_and_errors() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "repa.yaml")
    assert cfg["loss"] == {"repa_weight": 0.5, "repa_depth": 2}
    assert cfg["model"]["target_encoder"] == "simclr" and cfg["model"]["projector_dim"] == 256
    with pytest.raises(ValueError, match=r"'loss\.repa_depth' must be ≤ model\.depth = 4"):
        load_config(None, ["recipe=repa", "loss.repa_depth=5"])
    with pytest.raises(ValueError, match=r"'loss\.repa_weight' must be a number ≥ 0"):
        load_config(None, ["recipe=repa", "loss.repa_weight=-1"])
    with pytest.raises(ValueError, match="digits only"):
        load_config(None, ["recipe=repa", "data.source=embeddings", "data.a=a.npy", "data.b=b.npy"])


@pytest.mark.slow
@pytest.mark.usefixtures("fast_judge")
def test_repa_recipe_trains_evaluates_and_reports(small: object, tmp_path: Path) -> None:
    from alignkit.report import write_report

    out = tmp_path / "run"
    metrics = run_recipe(load_config(None, TINY), out, data=small, progress=False)  # type: ignore[arg-type]
    assert metrics["recipe"] == "repa" and metrics["repa_weight"] == 0.5 and metrics["repa_depth"] == 2
    for key in ("fd", "precision", "recall", "class_accuracy", "fd_train_images", "fd_uniform_noise"):
        assert isinstance(metrics[key], float) and metrics[key] >= 0, key
    assert json.loads((out / "metrics.json").read_text()) == metrics
    records = read_metrics(out / "metrics.jsonl")
    epochs = [r for r in records if r.get("type") == "epoch"]
    assert len(epochs) == 2 and all(r["val_fd"] > 0 and "train_repa_loss" in r for r in epochs)
    gen = out / "generation"
    expected = {"epoch_001.png", "epoch_002.png", "samples.png", "fd_curve.png", "summary.json"}
    assert {p.name for p in gen.iterdir()} >= expected
    html = write_report(out).read_text()
    assert "Generated digits" in html and html.count("data:image/png;base64") >= 4

    # the baseline (weight 0) has no regulariser and no alignment loss
    baseline = load_config(None, [*TINY, "loss.repa_weight=0", "train.epochs=1"])
    base = run_recipe(baseline, tmp_path / "b", data=small, progress=False)  # type: ignore[arg-type]
    assert base["repa_weight"] == 0.0
    assert all("train_repa_loss" not in r for r in read_metrics(tmp_path / "b" / "metrics.jsonl"))


def test_repa_system_representation_and_no_text_side(small: object) -> None:
    from alignkit.recipes.systems.repa import REPASystem

    cfg = load_config(None, [*TINY, "loss.repa_weight=0"])
    system = REPASystem(cfg, small)  # type: ignore[arg-type]
    feats = system.encode_image(small.images[:5])  # type: ignore[attr-defined]
    assert feats.shape == (5, 16) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="no text side"):
        system.encode_text(torch.zeros(2, 384))
    batch = system.batch(small, torch.arange(4))  # type: ignore[arg-type]
    assert float(batch[0].min()) >= -1 and float(batch[0].max()) <= 1
    assert torch.equal(system.validation_loss(batch), system.validation_loss(batch))  # deterministic
