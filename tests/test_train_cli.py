"""Tests of ``alignkit train`` / ``alignkit demo`` (alignkit.cli.train, alignkit.cli.demo).

The demo test is the acceptance test of the main job: the clip recipe with its defaults reaches
zero-shot accuracy ≥ 0.90 on the test split and instance-level retrieval far above chance. It is
marked slow (≈ 15-25 s of training) and runs in CI. Commands are run through a parser built here with
``alignkit.cli.train.add_command``; the exit-code contract (bad input → one line, exit 2) belongs to
``alignkit.cli.main`` and is checked there once ``train`` is wired into it (skipped otherwise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignkit.cli import demo as demo_cli
from alignkit.cli import train as train_cli
from alignkit.recipes.evaluate import EMBEDDING_KEYS, METRIC_KEYS

ROOT = Path(__file__).resolve().parent.parent


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alignkit")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cli.add_command(sub)
    demo_cli.add_command(sub)
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse(argv)
    return int(args.func(args))


def _cli_has_train() -> bool:
    from alignkit import cli

    parser = cli._parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "train" in action.choices and "overrides" in {
                a.dest for a in action.choices["train"]._actions
            }
    return False


# ------------------------------------------------------------------------------------- fast checks


def test_parser_defaults() -> None:
    args = parse(["train", "--config", "configs/byol.yaml", "train.epochs=2", "model.embed_dim=8"])
    assert args.func is train_cli.train_command
    assert args.config == "configs/byol.yaml" and args.out is None and not args.resume
    assert args.overrides == ["train.epochs=2", "model.embed_dim=8"]
    demo = parse(["demo"])
    assert demo.func is demo_cli.demo_command and demo.out == "runs/demo" and demo.overrides == []


def test_bad_config_raises_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: clip\ntrain:\n  epochz: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key 'train\.epochz'") as info:
        run(["train", "--config", str(bad), "--out", str(tmp_path / "run")])
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"'model\.image_tower' must be one of 'mlp', .*got 'resnet'"):
        run(["train", "--out", str(tmp_path / "run"), "model.image_tower=resnet"])
    with pytest.raises(ValueError, match="the demo runs the clip recipe"):
        run(["demo", "--out", str(tmp_path / "demo"), "recipe=byol"])
    assert not (tmp_path / "run").exists(), "nothing is written for a bad config"


def test_prepare_run_dir_refuses_foreign_folders_and_clears_old_results(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_text("x")
    with pytest.raises(ValueError, match="not an alignkit run directory"):
        train_cli.prepare_run_dir(foreign, resume=False)
    assert (foreign / "holiday.jpg").exists()
    with pytest.raises(ValueError, match="not a directory"):
        train_cli.prepare_run_dir(foreign / "holiday.jpg", resume=False)

    run_dir = tmp_path / "run"
    (run_dir / "plots").mkdir(parents=True)
    for name in ("config.yaml", "metrics.json", "report.html", "plots/loss.png", "notes.txt"):
        (run_dir / name).write_text("old")
    train_cli.prepare_run_dir(run_dir, resume=True)
    assert (run_dir / "metrics.json").exists() and (run_dir / "plots" / "loss.png").exists()
    train_cli.prepare_run_dir(run_dir, resume=False)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "plots").exists()
    assert not (run_dir / "report.html").exists()
    assert (run_dir / "config.yaml").exists() and (run_dir / "notes.txt").exists()
    assert train_cli.prepare_run_dir(tmp_path / "new", resume=False) == tmp_path / "new"


def test_format_results_shows_chance_levels() -> None:
    metrics = {k: 0.5 for k in METRIC_KEYS} | {"recipe": "clip", "epochs": 3, "seconds": 1.0, "extra": 0.25}
    table = train_cli.format_results(metrics, n_test=100)
    lines = table.splitlines()
    zero_shot = next(line for line in lines if line.startswith("zero-shot accuracy"))
    assert zero_shot.split()[-2:] == ["0.500", "0.100"]
    r1 = next(line for line in lines if line.startswith("image→text R@1 "))
    assert r1.split()[-1] == "0.010"
    assert next(line for line in lines if line.startswith("median rank")).split()[-1] == "50.5"  # (N+1)/2
    assert "↑" in zero_shot and "↓" in next(line for line in lines if line.startswith("uniformity"))
    assert any(line.startswith("extra") for line in lines)
    assert not any(line.startswith("recipe") for line in lines)


# --------------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_demo_reaches_the_acceptance_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = 360
    assert metrics["recipe"] == "clip"
    assert metrics["zero_shot_accuracy"] >= 0.90
    # instance-level retrieval: each image must find its own caption among 360 (chance 1/360)
    assert metrics["i2t_recall@1"] >= 20 / n_test
    assert metrics["t2i_recall@1"] >= 20 / n_test
    assert metrics["i2t_recall@10"] >= 0.5
    assert metrics["median_rank"] <= 20
    tensors = load_file(str(out / "embeddings_test.safetensors"))
    assert set(tensors) == set(EMBEDDING_KEYS) and tensors["image"].shape[0] == n_test
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/best.json", "checkpoints/last.json"):
        assert (out / name).exists(), name
    printed = capsys.readouterr()
    assert "zero-shot accuracy" in printed.out and "image→text R@1" in printed.out
    assert "report" in printed.out + printed.err  # where the report is, or why it is not there
    # a second demo into the same directory overwrites it cleanly
    (out / "metrics.json").write_text("{}")
    assert run(["demo", "--out", str(out), "train.epochs=1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_train_one_epoch_from_the_clip_config(tmp_path: Path) -> None:
    out = tmp_path / "clip"
    code = run(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "clip.yaml"),
            "train.epochs=1",
            "--out",
            str(out),
            "--no-report",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and set(METRIC_KEYS) <= set(metrics)
    assert not (out / "report.html").exists()
    # --resume without --config reads the run's own config.yaml; the run is complete, so it re-evaluates
    assert run(["train", "--out", str(out), "--resume", "--no-report"]) == 0
    assert json.loads((out / "metrics.json").read_text())["i2t_recall@1"] == metrics["i2t_recall@1"]


@pytest.mark.slow
def test_cli_main_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    if not _cli_has_train():
        pytest.skip("alignkit.cli does not wire train_cli.add_commands yet")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    proc = subprocess.run(
        [sys.executable, "-m", "alignkit", "train", "--config", str(bad), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lr" in lines[0] and "a number > 0" in lines[0]
