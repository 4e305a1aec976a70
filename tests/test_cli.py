from __future__ import annotations

import subprocess
import sys

import pytest

from alignkit.cli import main


def test_losses_command_lists_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["losses"]) == 0
    names = capsys.readouterr().out.split()
    assert "clip" in names and "structure" in names


def test_demo_trains_and_beats_chance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "8"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("test image→profile R@1"))
    before, after, chance = (float(v) for v in row.split()[-3:])
    assert after > 10 * chance and after > before


def test_bad_arguments_give_one_line_and_exit_code_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "alignkit", "demo", "--epochs", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "epochs" in proc.stderr
