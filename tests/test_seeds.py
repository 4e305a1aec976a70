"""Seeds and intervals: ``seed_interval`` against a float64 loop and scipy, ``alignkit train --seeds``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from alignkit.cli import main
from alignkit.functional import seed_interval
from alignkit.recipes.run import summarize_seeds


def test_seed_interval_matches_a_loop_and_scipy() -> None:
    values = [0.142, 0.181, 0.155, 0.176, 0.160]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    got = seed_interval(values)
    assert got["mean"] == pytest.approx(mean, abs=1e-12) and got["sd"] == pytest.approx(sd, abs=1e-12)
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n))
    assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-12)
    assert got["n"] == 5


def test_seed_interval_covers_the_mean_at_its_level() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        s = seed_interval(list(rng.normal(1.0, 0.3, size=4)))
        hits += s["low"] <= 1.0 <= s["high"]
    assert 0.93 <= hits / 2000 <= 0.97  # 95 % coverage for normal draws


def test_seed_interval_edge_cases() -> None:
    one = seed_interval([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["sd"]) and math.isnan(one["low"])
    assert seed_interval([1.0, float("nan"), 3.0])["n"] == 2
    with pytest.raises(ValueError, match="at least one finite"):
        seed_interval([float("inf")])
    with pytest.raises(ValueError, match="level"):
        seed_interval([1.0, 2.0], level=95)


def test_summarize_seeds_per_metric() -> None:
    runs = {0: {"recipe": "clip", "r": 0.1, "tag": "x"}, 1: {"recipe": "clip", "r": 0.3, "tag": "y"}}
    summary = summarize_seeds(runs)
    assert summary["seeds"] == [0, 1] and summary["recipe"] == "clip"
    assert summary["mean"] == {"r": pytest.approx(0.2)} and "tag" not in summary["sd"]
    assert summary["runs"]["1"]["r"] == 0.3


@pytest.mark.slow
def test_train_seeds_writes_each_run_and_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seeds"
    argv = ["train", "--out", str(out), "--seeds", "2", "--no-report", "train.epochs=1"]
    argv.append("data.train_subset=256")
    assert main(argv) == 0
    printed, err = capsys.readouterr()
    assert "[1/2] seed 0" in err and "[2/2] seed 1" in err  # progress: stderr
    assert "95 % interval" in printed  # results: stdout
    summary = json.loads((out / "metrics.json").read_text())
    per_seed = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    r1 = [m["i2t_recall@1"] for m in per_seed]
    assert summary["mean"]["i2t_recall@1"] == pytest.approx(sum(r1) / 2)
    assert summary["n_seeds"] == 2 and summary["low"]["i2t_recall@1"] <= summary["high"]["i2t_recall@1"]
    assert main(["train", "--out", str(out), "--seeds", "0"]) == 2


@pytest.mark.slow
def test_compare_seeds_reports_mean_and_sd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--recipes", "clip,joint", "--out", str(out), "--seeds", "2"]
    argv += ["--epochs-scale", "0.025"]
    assert main([*argv, "--set", "data.train_subset=256"]) == 0
    err = capsys.readouterr().err  # progress lines
    assert "[1/2] clip" in err and "2 seeds" in err and "[2/2] joint" in err
    table = json.loads((out / "compare.json").read_text())
    row = table["rows"][0]
    runs = [json.loads((out / "clip" / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert row["i2t_recall@1"] == pytest.approx((runs[0]["i2t_recall@1"] + runs[1]["i2t_recall@1"]) / 2)
    assert row["i2t_recall@1_low"] <= row["i2t_recall@1"] <= row["i2t_recall@1_high"]
    assert " ± " in (out / "compare.md").read_text()
    assert (out / "clip" / "seed-0" / "report.html").is_file()
