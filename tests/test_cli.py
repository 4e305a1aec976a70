from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.cli import main


def test_losses_command_lists_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["losses"]) == 0
    names = capsys.readouterr().out.split()
    assert "clip" in names and "structure" in names


def test_bad_arguments_give_one_line_and_exit_code_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "alignkit", "losses", "--bogus"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "--bogus" in proc.stderr


# ------------------------------------------------------------------------------------ the grammar


def test_losses_marks_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    from alignkit.losses.registry import _REGISTRY, aliases, available

    assert main(["losses"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    table = aliases()
    assert sorted(table) == list(lines)  # one line per loss, aliases not listed as losses
    assert sorted([*table, *(a for others in table.values() for a in others)]) == available()
    for name, others in table.items():
        for alias in others:
            assert _REGISTRY[alias] is _REGISTRY[name]
            assert f"aliases: {', '.join(others)}" in lines[name]
    assert any(table.values()), "some loss has an alias"


def test_unknown_option_that_is_a_config_key_gets_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean train.epochs=5?" in err
    assert main(["compare", "--batch-size=32"]) == 2
    assert "did you mean train.batch_size=32?" in capsys.readouterr().err
    assert main(["train", "--nothing-like-a-key", "1"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_every_command_spells_output_and_overrides_the_same_way() -> None:
    import argparse

    from alignkit.cli import _parser, parse_args

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("train", "demo", "compare", "fit", "transform", "measure"):
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        assert {"-o", "--out"} <= flags, name
    for name in ("train", "demo", "compare", "caption"):
        actions = commands[name]._actions
        assert "overrides" in {a.dest for a in actions if not a.option_strings}, name
        assert "--set" in {s for a in actions for s in a.option_strings}, name
    for name in ("fit", "measure"):
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        assert {"--key-a", "--key-b"} <= flags, name
    caption, unknown = parse_args(["caption", "runs/x", "--fit", "epochs=3", "--set", "dim=8", "beam=2"])
    assert (caption.run, caption.set_overrides) == ("runs/x", ["dim=8"])
    assert caption.overrides == ["epochs=3", "beam=2"]
    assert unknown == []
    train, _ = parse_args(["train", "a=1", "--resume", "b=2", "-o", "x", "c=3"])  # overrides anywhere
    assert train.overrides == ["a=1", "b=2", "c=3"] and train.resume and train.out == "x"
    fit = parser.parse_args(["fit", "a", "b", "--key-source", "x", "--key-b", "y", "-o", "m.safetensors"])
    assert (fit.key_a, fit.key_b, fit.out) == ("x", "y", "m.safetensors")  # the old names still work
    assert "KEY=VALUE" in parser.format_help() and "--key-a/--key-b" in parser.format_help()


def test_caption_takes_the_run_first_and_keeps_checkpoint_as_an_alias(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from alignkit.cli import _parser
    from alignkit.cli.caption import _run_and_overrides

    parser = _parser()
    args = parser.parse_args(["caption", "--checkpoint", "runs/x", "epochs=3"])
    assert _run_and_overrides(args) == ("runs/x", ["epochs=3"])
    assert "deprecated" in capsys.readouterr().err
    args = parser.parse_args(["caption", "runs/x", "epochs=3", "--set", "dim=8"])
    assert _run_and_overrides(args) == ("runs/x", ["dim=8", "epochs=3"])
    assert main(["caption"]) == 2
    assert "needs a run directory: alignkit caption RUN" in capsys.readouterr().err
    assert main(["caption", "epochs=3"]) == 2
    assert "the first argument is the run directory" in capsys.readouterr().err


def test_config_show_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from alignkit.recipes.config import config_keys, default_config, load_config

    assert main(["config", "show", "byol"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_config(None, ["recipe=byol"])
    assert shown["train"]["epochs"] == default_config("byol")["train"]["epochs"]
    assert main(["config", "show", "byol", "train.epochs=5", "-o", str(tmp_path / "b.yaml")]) == 0
    assert load_config(tmp_path / "b.yaml")["train"]["epochs"] == 5
    assert main(["config", "keys", "supcon"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    keys = config_keys("supcon")
    assert [line.split()[0] for line in lines] == list(keys)
    assert all(line.split(None, 1)[1] == keys[line.split()[0]] for line in lines)
    assert main(["config", "keys", "nope"]) == 2
    assert "RECIPE must be one of" in capsys.readouterr().err


def test_trainer_prints_one_line_per_epoch_outside_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from torch import nn

    from alignkit.train import Trainer

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
            x, y = batch
            return {"loss": ((self.lin(x).squeeze(-1) - y) ** 2).mean()}

    x, y = torch.randn(16, 2), torch.randn(16)
    kwargs = {"epochs": 3, "lr": 1e-2, "batch_size": 8, "out_dir": tmp_path, "device": "cpu"}
    result = Trainer(Tiny(), (x, y), progress="[1/2] tiny: ", **kwargs).fit()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" loss ")[0] for line in lines] == [f"[1/2] tiny: epoch {e}/3" for e in (1, 2, 3)]
    last = float(lines[-1].split(" loss ")[1].split()[0])
    assert last == pytest.approx(result.epochs[-1]["train_loss"], rel=1e-3)
    Trainer(Tiny(), (x, y), progress=False, **kwargs).fit()
    assert capsys.readouterr().err == ""


def test_gradient_fit_prints_about_ten_lines_outside_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from alignkit.adapters import fit_adapter

    x = torch.randn(64, 6)
    y = x @ torch.randn(6, 5)
    fit_adapter(x, y, method="mlp", objective="mse", epochs=20, patience=100, hidden_dim=8, progress=True)
    lines = capsys.readouterr().err.splitlines()
    want = [f"fit mlp/mse: epoch {e}/20" for e in range(2, 21, 2)]
    assert [line.split(" loss ")[0] for line in lines] == want
    fit_adapter(x, y, method="mlp", epochs=20, hidden_dim=8, progress=False)
    assert capsys.readouterr().err == ""
