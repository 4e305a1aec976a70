from __future__ import annotations

import subprocess
import sys

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
