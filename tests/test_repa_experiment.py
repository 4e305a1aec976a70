"""experiments/repa_digits.py end to end in its --quick setting (tiny model, 30 steps, one seed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def exp(experiment):  # type: ignore[no-untyped-def]
    return experiment("repa_digits")


def test_steps_to_reach_interpolates(exp) -> None:  # type: ignore[no-untyped-def]
    assert exp.steps_to_reach([100, 200, 300], [10.0, 6.0, 2.0], 4.0) == pytest.approx(250.0)
    assert exp.steps_to_reach([100, 200], [3.0, 2.0], 5.0) == 100.0
    assert exp.steps_to_reach([100, 200], [9.0, 8.0], 5.0) is None


@pytest.mark.slow
def test_quick_experiment_end_to_end(exp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = exp.main(["--quick", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    written = json.loads((tmp_path / "repa_digits_quick.json").read_text())
    assert written["repa"].keys() == result["repa"].keys() == {"baseline", "REPA depth 1, λ=0.5"}
    assert (tmp_path / "repa_digits_quick.png").stat().st_size > 1000
    md = (tmp_path / "repa_digits_quick.md").read_text()
    assert "| baseline |" in md and "VA-VAE (VF loss)" in md
    base = written["repa"]["baseline"]
    assert base["steps"] == [15, 30] and base["speedup"] == pytest.approx(1.0)
    for s in written["repa"].values():
        assert all(math.isfinite(v) and v >= 0 for v in s["fd_mean"])
    assert written["fd_noise"] > written["fd_train_vs_test"]
    vf = written["vavae"]["VA-VAE (VF loss)"]["vae"][0]
    assert vf["with_vf"] and vf["vf_weight"] > 0
    assert not written["vavae"]["VAE"]["vae"][0]["with_vf"]
