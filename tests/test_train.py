"""Tests of alignkit.train: the Trainer, atomic checkpoints and the warm-up + cosine schedule.

The system under training is tiny (two small MLP towers with dropout + CLIPLoss on synthetic paired data,
256 training rows, batch 32, 8 steps per epoch) so that each fit takes well under a second of compute.
Expected values (learning rates, epoch means, best epochs, schedule values) are computed here from
their definitions, never by calling the code under test.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import alignkit.train.checkpoint as ckpt_module
from alignkit.losses import CLIPLoss
from alignkit.train import (
    Trainer,
    load_checkpoint,
    parameter_groups,
    read_metrics,
    save_checkpoint,
    warmup_cosine,
)

N_TRAIN, N_VAL, BATCH, EPOCHS, LR, WARMUP = 256, 64, 32, 4, 3e-3, 4
STEPS_PER_EPOCH = N_TRAIN // BATCH
TOTAL = EPOCHS * STEPS_PER_EPOCH


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired views of a 4-d latent: a noisy linear map (10-d) and a noisy tanh map (6-d)."""
    g = torch.Generator().manual_seed(seed)
    n = N_TRAIN + N_VAL
    z = torch.randn(n, 4, generator=g)
    xa = torch.cat([z, 0.1 * torch.randn(n, 6, generator=g)], 1) @ torch.randn(10, 10, generator=g)
    xb = torch.tanh(z @ torch.randn(4, 6, generator=g)) + 0.05 * torch.randn(n, 6, generator=g)
    return xa, xb


XA, XB = make_data()


class TinyCLIP(nn.Module):
    """Two MLP towers (one with dropout, one with LayerNorm) and a CLIP loss with learnable temperature."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.tower_a = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 8))
        self.tower_b = nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 8))
        self.loss = CLIPLoss(init_temperature=0.1)
        self.crash_at: int | None = None  # raise inside training_step at this call (simulated crash)
        self.calls = 0
        self.hook_calls: list[tuple[int, int]] = []

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        a, b = batch
        loss = self.loss(self.tower_a(a), self.tower_b(b))
        return {"loss": loss, "logit_scale": self.loss.logit_scale.detach()}

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.hook_calls.append((step, max_steps))


def build(seed: int = 0, dropout: float = 0.1) -> TinyCLIP:
    torch.manual_seed(seed)
    return TinyCLIP(dropout)


def val_loss(system: nn.Module) -> dict[str, float]:
    a, b = XA[N_TRAIN:], XB[N_TRAIN:]
    return {"val_loss": float(system.loss(system.tower_a(a), system.tower_b(b)))}


def make_trainer(system: nn.Module, out_dir: Path, **overrides: Any) -> Trainer:
    kwargs: dict[str, Any] = {
        "batch_size": BATCH,
        "epochs": EPOCHS,
        "lr": LR,
        "warmup_steps": WARMUP,
        "out_dir": out_dir,
        "evaluate": val_loss,
        "log_every": 1,
        "checkpoint_every": 3,
        "seed": 0,
        "progress": False,
    }
    kwargs.update(overrides)
    return Trainer(system, (XA[:N_TRAIN], XB[:N_TRAIN]), **kwargs)


def step_losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out_dir / "metrics.jsonl") if r["type"] == "step"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run, shared by the tests that only read its outputs."""
    out_dir = tmp_path_factory.mktemp("baseline")
    system = build()
    trainer = make_trainer(system, out_dir)
    result = trainer.fit()
    return {"out": out_dir, "system": system, "trainer": trainer, "result": result}


# ---------------------------------------------------------------------------------------------- schedule


def ref_schedule(k: int, total: int, warmup: int, r: float) -> float:
    """The definition, written out: linear ramp (k+1)/W, then half a cosine period from 1 to r."""
    if k < warmup:
        return (k + 1) / warmup
    if k >= total:
        return r
    angle = math.pi * (k - warmup) / (total - warmup)
    return r + (1 - r) * (1 + math.cos(angle)) / 2


def test_warmup_cosine_values() -> None:
    total, warmup, r = 110, 10, 0.1
    assert warmup_cosine(0, total, warmup, r) == pytest.approx(0.1)  # 1/W, never 0
    assert warmup_cosine(4, total, warmup, r) == pytest.approx(0.5)
    assert warmup_cosine(warmup - 1, total, warmup, r) == pytest.approx(1.0)
    assert warmup_cosine(warmup, total, warmup, r) == pytest.approx(1.0)  # peak at the end of warm-up
    assert warmup_cosine(60, total, warmup, r) == pytest.approx(0.55)  # half-way down: r + (1 − r)/2
    assert warmup_cosine(total, total, warmup, r) == pytest.approx(r)  # end
    assert warmup_cosine(total + 7, total, warmup, r) == pytest.approx(r)  # stays at the floor
    assert warmup_cosine(0, 50, 0, 0.0) == pytest.approx(1.0)  # no warm-up: full lr at once
    assert warmup_cosine(50, 50, 0, 0.0) == pytest.approx(0.0)
    values = [warmup_cosine(k, total, warmup, r) for k in range(total + 1)]
    for k, v in enumerate(values):
        assert v == pytest.approx(ref_schedule(k, total, warmup, r), abs=1e-12)
    assert all(a < b for a, b in itertools.pairwise(values[:warmup]))
    assert all(a >= b for a, b in itertools.pairwise(values[warmup:]))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 10, 0, 0.0), "step"),
        ((0, 0, 0, 0.0), "total"),
        ((0, 10, 11, 0.0), "warmup"),
        ((0, 10, 2, 1.5), "min_ratio"),
        ((0, 10, 2, -0.1), "min_ratio"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        warmup_cosine(*args)


# -------------------------------------------------------------------------------------- weight decay


def test_parameter_groups_no_decay_for_vectors_and_scalars() -> None:
    torch.manual_seed(0)
    linear, conv, norm, frozen = nn.Linear(4, 3), nn.Conv1d(3, 2, 3), nn.LayerNorm(3), nn.Linear(3, 3)
    frozen.requires_grad_(False)
    emb = nn.Embedding(5, 4)
    head = nn.Linear(4, 5, bias=False)
    head.weight = emb.weight  # tied: must appear once
    loss = CLIPLoss()
    model = nn.ModuleDict({"linear": linear, "conv": conv, "norm": norm, "frozen": frozen, "emb": emb,
                           "head": head, "loss": loss})  # fmt: skip
    groups = parameter_groups(model, 0.05)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay"}
    assert by_name["decay"]["weight_decay"] == 0.05
    assert by_name["no_decay"]["weight_decay"] == 0.0
    ids = {name: {id(p) for p in g["params"]} for name, g in by_name.items()}
    assert ids["decay"] == {id(linear.weight), id(conv.weight), id(emb.weight)}
    assert ids["no_decay"] == {
        id(linear.bias),
        id(conv.bias),
        id(norm.weight),
        id(norm.bias),
        id(loss.log_scale),
    }
    assert len(by_name["decay"]["params"]) == 3  # the tied weight once
    assert not ids["decay"] & {id(p) for p in frozen.parameters()}
    assert not ids["no_decay"] & {id(p) for p in frozen.parameters()}
    with pytest.raises(ValueError, match="weight_decay"):
        parameter_groups(model, -1.0)


def test_trainer_optimizer_uses_the_groups(tmp_path: Path) -> None:
    system = build()
    trainer = make_trainer(system, tmp_path, weight_decay=0.2)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 0.2
    assert groups["no_decay"]["weight_decay"] == 0.0
    decayed = {id(p) for p in groups["decay"]["params"]}
    assert decayed == {id(p) for p in system.parameters() if p.ndim >= 2}
    assert id(system.loss.log_scale) in {id(p) for p in groups["no_decay"]["params"]}


# ----------------------------------------------------------------------------------------- training


def test_loss_decreases(baseline: dict[str, Any]) -> None:
    epochs = baseline["result"].epochs
    assert len(epochs) == EPOCHS
    chance = math.log(BATCH)  # InfoNCE of an untrained model ≈ log(batch size)
    assert epochs[0]["train_loss"] > 0.8 * chance
    assert epochs[-1]["train_loss"] < 0.6 * chance
    assert epochs[-1]["val_loss"] < 0.85 * epochs[0]["val_loss"]


def test_deterministic_same_seed_same_losses(baseline: dict[str, Any], tmp_path: Path) -> None:
    system = build()
    make_trainer(system, tmp_path / "again").fit()
    again = step_losses(tmp_path / "again")
    assert again == step_losses(baseline["out"])  # exact float equality, dropout included
    for (name, p), q in zip(
        system.state_dict().items(), baseline["system"].state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    # the seed matters (so the comparison above can fail): another seed, another data order and dropout
    make_trainer(build(), tmp_path / "other", seed=1).fit()
    assert step_losses(tmp_path / "other") != again


def test_metrics_jsonl_well_formed(baseline: dict[str, Any]) -> None:
    lines = (baseline["out"] / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {r["type"] for r in records} == {"step", "epoch"}
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, TOTAL + 1))  # log_every=1: one record per step
    for r in steps:
        assert r["epoch"] == (r["step"] - 1) // STEPS_PER_EPOCH + 1
        assert math.isfinite(r["loss"]) and r["logit_scale"] > 0
        assert r["lr"] == pytest.approx(LR * ref_schedule(r["step"] - 1, TOTAL, WARMUP, 0.0), rel=1e-12)
    assert [r["epoch"] for r in epochs] == list(range(1, EPOCHS + 1))
    best = math.inf
    for r in epochs:
        losses = [s["loss"] for s in steps if s["epoch"] == r["epoch"]]
        assert r["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
        assert r["step"] == r["epoch"] * STEPS_PER_EPOCH
        assert r["best"] == (r["val_loss"] < best)
        best = min(best, r["val_loss"])
    # records are in order: an epoch record follows that epoch's last step record
    order = [(r["type"], r.get("step")) for r in records]
    assert order.index(("epoch", STEPS_PER_EPOCH)) == order.index(("step", STEPS_PER_EPOCH)) + 1


def test_after_optimizer_step_hook(baseline: dict[str, Any]) -> None:
    assert baseline["system"].hook_calls == [(k, TOTAL) for k in range(TOTAL)]


def test_best_and_last_checkpoints_load(baseline: dict[str, Any]) -> None:
    out, system, result = baseline["out"], baseline["system"], baseline["result"]
    assert result.last_checkpoint == out / "checkpoints" / "last.json"
    assert result.best_checkpoint == out / "checkpoints" / "best.json"
    last = load_checkpoint(result.last_checkpoint)
    for name, value in system.state_dict().items():
        assert torch.equal(last.model[name], value), name
    assert last.state["step"] == TOTAL and last.state["epoch"] == EPOCHS and last.state["batch_in_epoch"] == 0
    # the optimiser state loads into a fresh AdamW and holds the trained moments
    fresh = make_trainer(build(seed=5), out / "unused")
    last.load_into(fresh.system, fresh.optimizer, fresh.scheduler)
    live = baseline["trainer"].optimizer.state_dict()["state"]
    loaded = fresh.optimizer.state_dict()["state"]
    assert set(live) == set(loaded)
    for k in live:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(live[k][key], loaded[k][key])
    assert fresh.scheduler.last_epoch == TOTAL
    # best: the epoch with the lowest val_loss; its weights reproduce that val_loss
    epochs = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "epoch"]
    best_record = min(epochs, key=lambda r: r["val_loss"])
    best = load_checkpoint(result.best_checkpoint)
    assert best.optimizer is None
    assert best.state["epoch"] == best_record["epoch"] and best.state["value"] == best_record["val_loss"]
    assert result.best_value == best_record["val_loss"] and result.best_epoch == best_record["epoch"]
    probe = build(seed=7).eval()
    best.load_into(probe)
    with torch.no_grad():
        assert val_loss(probe)["val_loss"] == pytest.approx(best_record["val_loss"], abs=1e-6)


# -------------------------------------------------------------------------------------- atomic writes

_FILES = re.compile(r"^(last|best)(\.json|\.[0-9a-f]{12}\.(model|state)\.safetensors)$")


def test_atomic_write_leaves_no_temp_files(
    baseline: dict[str, Any], tmp_path: Path, monkeypatch: Any
) -> None:
    names = sorted(os.listdir(baseline["out"] / "checkpoints"))
    assert all(_FILES.match(n) for n in names), names
    assert len(names) == 6  # {last, best} × {json, model, state}
    directory = tmp_path / "ckpt"
    path = directory / "last.json"
    model = build()
    save_checkpoint(path, model, state={"step": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_replace = os.replace

    def crash_on_manifest(src: Any, dst: Any) -> None:
        if str(dst).endswith(".json"):
            raise OSError("simulated crash while publishing the manifest")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_module.os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model, state={"step": 2})
    monkeypatch.setattr(ckpt_module.os, "replace", real_replace)
    assert not [n for n in os.listdir(directory) if n.endswith(".tmp")]
    old = load_checkpoint(path)  # still the complete old checkpoint
    assert old.state == {"step": 1}
    for name, value in before.items():
        assert torch.equal(old.model[name], value)
    # the next successful save removes the orphaned files of the failed one
    save_checkpoint(path, model, state={"step": 3})
    assert len(os.listdir(directory)) == 3
    assert load_checkpoint(path).state == {"step": 3}


def test_corrupt_checkpoint_raises_value_error(baseline: dict[str, Any], tmp_path: Path) -> None:
    src = baseline["out"] / "checkpoints"
    manifest = json.loads((src / "last.json").read_text())

    def fresh_copy(name: str) -> Path:
        directory = tmp_path / name
        shutil.copytree(src, directory)
        return directory / "last.json"

    path = fresh_copy("flipped")
    model_file = path.parent / manifest["files"]["model"]["path"]
    data = bytearray(model_file.read_bytes())
    data[-3] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)

    path = fresh_copy("truncated")
    model_file = path.parent / manifest["files"]["model"]["path"]
    model_file.write_bytes(model_file.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="cannot read model file"):
        load_checkpoint(path, verify=False)

    path = fresh_copy("missing")
    (path.parent / manifest["files"]["state"]["path"]).unlink()
    with pytest.raises(ValueError, match=r"state file .* is missing"):
        load_checkpoint(path)

    path = fresh_copy("bad_json")
    path.write_text(path.read_text()[:50])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(path)
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not an alignkit checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere.json")

    # resuming from a corrupt last checkpoint fails loudly instead of starting over
    run = tmp_path / "run"
    shutil.copytree(src, run / "checkpoints")
    (run / "checkpoints" / "last.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        make_trainer(build(), run, resume=True).fit()


def test_checkpoint_round_trip_tied_views_dtypes_and_state(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(6, 4)
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.emb.weight
            self.half = nn.Linear(4, 4).to(torch.bfloat16)
            self.register_buffer("table", torch.arange(12.0).reshape(3, 4))
            self.register_buffer("row", self.table[1])  # a view of another buffer's storage
            self.register_buffer("empty", torch.zeros(0, 3))

    torch.manual_seed(0)
    model = Tied()
    state = {
        "nested": {0: ("a", 1.5), "k": [float("nan"), float("inf"), -float("inf")]},
        "numpy": np.random.default_rng(0).integers(0, 2**31, size=5, dtype=np.int64),
        "tensor": torch.tensor([1, 2, 3], dtype=torch.int16),
        "__dunder": None,
    }
    path = save_checkpoint(tmp_path / "m.json", model, state=state)
    loaded = load_checkpoint(path)
    target = Tied()
    loaded.load_into(target, strict=True)
    for (name, a), b in zip(model.state_dict().items(), target.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert target.head.weight is target.emb.weight  # tying of the target model untouched
    s = loaded.state
    assert s["nested"][0] == ("a", 1.5)
    assert math.isnan(s["nested"]["k"][0]) and s["nested"]["k"][1:] == [math.inf, -math.inf]
    assert s["numpy"].dtype == np.int64 and np.array_equal(s["numpy"], state["numpy"])
    assert torch.equal(s["tensor"], state["tensor"]) and s["tensor"].dtype == torch.int16
    assert s["__dunder"] is None
    with pytest.raises(ValueError, match="cannot store"):
        save_checkpoint(tmp_path / "bad.json", model, state={"x": object()})
    with pytest.raises(ValueError, match="json"):
        save_checkpoint(tmp_path / "bad.safetensors", model)


def test_checkpoint_of_another_model_is_a_one_line_value_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.json", model, optimizer=opt)
    wider = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not fit this model") as err:
        load_checkpoint(path).load_into(wider)
    msg = str(err.value)
    assert "\n" not in msg and "size mismatch for 0.weight" in msg and "more" in msg
    same = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    two_groups = torch.optim.AdamW([{"params": [same[0].weight]}, {"params": list(same.parameters())[1:]}])
    with pytest.raises(ValueError, match=r"does not fit this optimizer.*parameter groups"):
        load_checkpoint(path).load_into(same, two_groups)
    step = torch.optim.lr_scheduler.StepLR(opt, 1)
    with_sched = save_checkpoint(tmp_path / "s.json", model, optimizer=opt, scheduler=step)
    other = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    with pytest.raises(ValueError, match="does not fit this scheduler"):
        load_checkpoint(with_sched).load_into(model, opt, other)


# -------------------------------------------------------------------------------------------- resume


def test_resume_mid_epoch_in_process(baseline: dict[str, Any], tmp_path: Path) -> None:
    system = build()
    system.crash_at = 14  # epoch 2, batch 6; the last checkpoint is at step 12 (epoch 2, batch 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_trainer(system, tmp_path).fit()
    state = json.loads((tmp_path / "checkpoints" / "last.json").read_text())["state"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (12, 1, 4)
    assert step_losses(tmp_path)[-1][0] == 13  # the killed run logged past its checkpoint

    resumed = build(seed=123)  # different initial weights: everything must come from the checkpoint
    result = make_trainer(resumed, tmp_path, resume=True).fit()
    assert [r["step"] for r in result.steps] == list(range(13, TOTAL + 1))
    assert step_losses(tmp_path) == step_losses(baseline["out"])  # each step once, same values
    ref_epochs = [r for r in read_metrics(baseline["out"] / "metrics.jsonl") if r["type"] == "epoch"]
    epochs = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs == ref_epochs  # the epoch means span the interruption
    assert [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "resume"] == [
        {"type": "resume", "step": 12, "epoch": 2, "batch_in_epoch": 4}
    ]
    for (name, p), q in zip(
        resumed.state_dict().items(), baseline["system"].state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert resumed.hook_calls == [(k, TOTAL) for k in range(12, TOTAL)]


def test_resume_without_checkpoint_starts_fresh_and_rejects_changed_config(tmp_path: Path) -> None:
    result = make_trainer(build(), tmp_path, epochs=1, resume=True).fit()
    assert result.global_step == STEPS_PER_EPOCH
    with pytest.raises(ValueError, match="batch_size"):
        make_trainer(build(), tmp_path, epochs=1, batch_size=64, resume=True).fit()
    with pytest.raises(ValueError, match="seed"):
        make_trainer(build(), tmp_path, epochs=1, seed=3, resume=True).fit()
    # more epochs: continues from step 8 instead of starting over
    result = make_trainer(build(), tmp_path, epochs=2, resume=True).fit()
    assert [r["step"] for r in result.steps] == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1))


# ---------------------------------------------------------------------------------------- data input


class PairDataset(Dataset):
    """A plain map-style dataset: goes through DataLoader + default_collate instead of the tensor path."""

    def __len__(self) -> int:
        return N_TRAIN

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return XA[i], XB[i]


def test_dataset_and_dataloader_inputs_match_tensor_input(baseline: dict[str, Any], tmp_path: Path) -> None:
    """A plain Dataset (DataLoader + default_collate) and a shuffling DataLoader: the tensor path's losses."""
    expected = step_losses(baseline["out"])[: 2 * STEPS_PER_EPOCH]

    class StopError(Exception):
        pass

    def stop_after_two_epochs(system: nn.Module, calls: list[int]) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise StopError  # same schedule as the baseline (4 epochs), but only two epochs are needed
        return val_loss(system)

    loader = DataLoader(TensorDataset(XA[:N_TRAIN], XB[:N_TRAIN]), batch_size=BATCH, shuffle=True)
    for name, data, batch_size in [("dataset", PairDataset(), BATCH), ("loader", loader, None)]:
        calls: list[int] = []
        trainer = Trainer(
            build(), data, out_dir=tmp_path / name, batch_size=batch_size, epochs=EPOCHS, lr=LR,
            warmup_steps=WARMUP, log_every=1, checkpoint_every=None, progress=False,
            evaluate=lambda m, calls=calls: stop_after_two_epochs(m, calls),
        )  # fmt: skip
        assert (trainer.batch_size, trainer.shuffle, trainer.steps_per_epoch) == (
            BATCH,
            True,
            STEPS_PER_EPOCH,
        )
        with pytest.raises(StopError):
            trainer.fit()
        assert step_losses(tmp_path / name) == expected, name


def test_dataloader_settings_are_reused(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(XA[:100], XB[:100]), batch_size=16, shuffle=False, drop_last=False)
    trainer = Trainer(build(), loader, epochs=1, lr=1e-3, out_dir=tmp_path, progress=False)
    assert (trainer.batch_size, trainer.shuffle, trainer.drop_last) == (16, False, False)
    assert trainer.steps_per_epoch == 7  # 6 full batches of 16 and one of 4
    result = trainer.fit()
    assert result.global_step == 7


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"mode": "avg"}, "mode"),
        ({"warmup_steps": 2, "warmup_fraction": 0.1}, "warmup"),
        ({"warmup_fraction": 1.5}, "warmup_fraction"),
        ({"warmup_steps": TOTAL + 1}, "warmup_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": N_TRAIN + 1}, "batch_size"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"log_every": 0}, "log_every"),
        ({"checkpoint_every": -1}, "checkpoint_every"),
        ({"seed": -1}, "seed"),
    ],
)
def test_trainer_rejects_bad_arguments(tmp_path: Path, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_trainer(build(), tmp_path, **overrides)


def test_trainer_rejects_bad_systems_and_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="training_step"):
        Trainer(nn.Linear(2, 2), (XA, XB), batch_size=8, epochs=1, lr=1e-3, out_dir=tmp_path)
    with pytest.raises(ValueError, match="same number of rows"):
        Trainer(build(), (XA, XB[:10]), batch_size=8, epochs=1, lr=1e-3, out_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size is required"):
        Trainer(build(), (XA, XB), epochs=1, lr=1e-3, out_dir=tmp_path)
    frozen = build().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(frozen, (XA, XB), batch_size=8, epochs=1, lr=1e-3, out_dir=tmp_path)

    class NoLoss(TinyCLIP):
        def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
            return {"value": super().training_step(batch)["loss"]}

    with pytest.raises(ValueError, match="'loss'"):
        make_trainer(NoLoss(), tmp_path).fit()

    class NaNLoss(TinyCLIP):
        def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
            out = super().training_step(batch)
            return {"loss": out["loss"] * float("nan")}

    system = NaNLoss()
    before = {k: v.clone() for k, v in system.state_dict().items()}
    with pytest.raises(FloatingPointError, match="step 1"):
        make_trainer(system, tmp_path).fit()
    for k, v in system.state_dict().items():
        assert torch.equal(v, before[k]), k  # a non-finite loss never reaches the weights
    with pytest.raises(ValueError, match="monitor 'zero_shot_accuracy'"):
        make_trainer(build(), tmp_path, monitor="zero_shot_accuracy").fit()


def test_grad_clip_and_max_mode_without_evaluate(tmp_path: Path) -> None:
    trainer = make_trainer(build(), tmp_path, evaluate=None, epochs=2, grad_clip=1e-3, mode="max")
    norms_at_step: list[float] = []

    def record_norm(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad.double() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms_at_step.append(math.sqrt(sum(float((g * g).sum()) for g in grads)))

    trainer.optimizer.register_step_pre_hook(record_norm)
    result = trainer.fit()
    assert len(norms_at_step) == 2 * STEPS_PER_EPOCH
    assert all(n <= 1e-3 * (1 + 1e-5) for n in norms_at_step)  # clipped before the optimiser step
    assert all(r["grad_norm"] > 1e-2 for r in result.steps)  # the logged norm is the pre-clip one
    # without evaluate the best checkpoint follows train_loss; with mode="max" the largest is best
    assert [r["monitor"] for r in result.epochs] == ["train_loss", "train_loss"]
    losses = [r["train_loss"] for r in result.epochs]
    assert result.best_epoch == 1 + int(np.argmax(losses))
