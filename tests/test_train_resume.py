"""A training process killed with SIGKILL mid-epoch resumes in a new process on the same loss curve.

The script below trains a tiny two-tower CLIP system (dropout included, so the RNG states matter) for 3
epochs of 8 steps, checkpointing every 5 steps. The test starts it with a pause after every step, waits
for a checkpoint taken in the middle of the second epoch, kills the process with SIGKILL, resumes it in
a fresh process and compares every step's loss, the epoch records and the final weights with an
uninterrupted run of the same script.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignkit.train import load_checkpoint, read_metrics

SCRIPT = """
from __future__ import annotations

import sys
import time

import torch
from torch import nn

from alignkit.losses import CLIPLoss
from alignkit.train import Trainer


class Tiny(nn.Module):
    def __init__(self, pause: float) -> None:
        super().__init__()
        self.tower_a = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 8))
        self.tower_b = nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 8))
        self.loss = CLIPLoss(init_temperature=0.1)
        self.pause = pause

    def training_step(self, batch):
        if self.pause:
            time.sleep(self.pause)
        a, b = batch
        return {"loss": self.loss(self.tower_a(a), self.tower_b(b))}


def main(out_dir: str, resume: bool, pause: float) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(320, 4, generator=g)
    xa = torch.cat([z, 0.1 * torch.randn(320, 6, generator=g)], 1) @ torch.randn(10, 10, generator=g)
    xb = torch.tanh(z @ torch.randn(4, 6, generator=g)) + 0.05 * torch.randn(320, 6, generator=g)
    torch.manual_seed(0 if not resume else 99)  # a resumed run must not depend on its own init
    system = Tiny(pause)

    def evaluate(m):
        return {"val_loss": float(m.loss(m.tower_a(xa[256:]), m.tower_b(xb[256:])))}

    Trainer(
        system, (xa[:256], xb[:256]), batch_size=32, epochs=3, lr=3e-3, warmup_fraction=0.1,
        out_dir=out_dir, evaluate=evaluate, log_every=1, checkpoint_every=5, seed=0, progress=False,
        resume=resume,
    ).fit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] == "resume", float(sys.argv[3]))
"""


def _run(script: Path, out_dir: Path, mode: str, pause: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out_dir), mode, str(pause)], env=env)


def _mid_epoch_checkpoint(path: Path) -> bool:
    try:
        state = json.loads(path.read_text())["state"]
    except (OSError, ValueError, KeyError):
        return False
    return state["epoch"] >= 1 and state["batch_in_epoch"] > 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_the_loss_curve(tmp_path: Path) -> None:
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    # the uninterrupted reference run (in this process: same code, one thread)
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script))["main"](str(tmp_path / "ref"), False, 0.0)
    finally:
        torch.set_num_threads(threads)

    killed = tmp_path / "killed"
    proc = _run(script, killed, "fresh", 0.25)

    last = killed / "checkpoints" / "last.json"
    deadline = time.monotonic() + 240
    while not _mid_epoch_checkpoint(last):
        assert proc.poll() is None, "the training process ended before a mid-epoch checkpoint"
        assert time.monotonic() < deadline, "no mid-epoch checkpoint within the deadline"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished

    state = load_checkpoint(last).state  # still a complete, valid checkpoint
    assert 0 < state["batch_in_epoch"] < 8 and state["step"] < 24
    killed_steps = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if r["type"] == "step"]
    assert killed_steps and max(killed_steps) < 24

    resumed = _run(script, killed, "resume", 0.0)
    assert resumed.wait(timeout=240) == 0

    def curve(out_dir: Path, kind: str) -> list[dict[str, float]]:
        return [
            {k: v for k, v in r.items() if k != "samples_per_s"}
            for r in read_metrics(out_dir / "metrics.jsonl")
            if r["type"] == kind
        ]

    ref_steps, steps = curve(tmp_path / "ref", "step"), curve(killed, "step")
    assert [r["step"] for r in steps] == list(range(1, 25))
    for a, b in zip(steps, ref_steps, strict=True):
        assert a["loss"] == b["loss"], (a, b)  # float equality, step for step
        assert a["lr"] == b["lr"]
    assert curve(killed, "epoch") == curve(tmp_path / "ref", "epoch")
    resumes = curve(killed, "resume")
    assert [r["step"] for r in resumes] == [state["step"]]

    final, ref = (
        load_checkpoint(killed / "checkpoints" / "last.json"),
        load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.json"),
    )
    assert final.model.keys() == ref.model.keys()
    for name in ref.model:
        assert torch.equal(final.model[name], ref.model[name]), name
