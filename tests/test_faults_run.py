"""Run directories and the CLI under faults: two writers, a resume with a changed config, SIGKILL during a
checkpoint write, a full filesystem, Ctrl-C, links and loops as paths — each ends in a one-line message with
the documented exit code (0 ok, 2 bad input or environment, 130 interrupted), and no run is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.io import LOCK_NAME, directory_lock, save_embeddings

ROOT = Path(__file__).resolve().parents[1]
_KILLS = 8  # SIGKILL trials


def _holder(directory: Path) -> tuple[int, int]:
    """A forked process that holds ``directory``'s lock until the returned pipe is closed: (pid, pipe)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: lock, say so, wait
        try:
            os.close(ready_r)
            os.close(go_w)
            with directory_lock(directory):
                os.write(ready_w, b"1")
                os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    assert os.read(ready_r, 1) == b"1"
    os.close(ready_r)
    return pid, go_w


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ the lock


def test_second_writer_is_refused_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    pid, release = _holder(run)
    try:
        with pytest.raises(ValueError, match=rf"in use by another alignkit process \(pid {pid}"):
            directory_lock(run).__enter__()
        code, _, err = _run_cli(["train", "--out", str(run), "train.epochs=1"], capsys)
        assert code == 2 and f"pid {pid}" in err and err.count("\n") == 1
    finally:
        os.close(release)
        os.waitpid(pid, 0)
    with directory_lock(run) as lock:  # released when the holder exits
        assert lock.read_text().strip() == str(os.getpid())
    assert lock.read_text() == ""  # emptied on release, never unlinked


def test_lock_of_a_killed_or_dead_process_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    pid, release = _holder(run)
    os.kill(pid, signal.SIGKILL)  # the kernel drops the flock; the pid stays in the file
    os.waitpid(pid, 0)
    os.close(release)
    assert (run / LOCK_NAME).read_text().strip() == str(pid)
    with directory_lock(run) as lock:
        assert lock.read_text().strip() == str(os.getpid())
    assert f"taking over the stale lock of pid {pid}" in capsys.readouterr().err


def test_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with directory_lock(tmp_path / "r"), directory_lock(tmp_path / "r") as lock:
        assert lock.read_text().strip() == str(os.getpid())


# -------------------------------------------------------------------------------------------- resume


def _fake_run(run: Path, epochs: int = 5) -> bytes:
    """A run directory with config.yaml and a last checkpoint after 2 epochs (no training needed)."""
    from alignkit.recipes.config import validate_config, write_config
    from alignkit.train.checkpoint import save_checkpoint

    write_config(validate_config({"train": {"epochs": epochs}}), run / "config.yaml")
    save_checkpoint(
        run / "checkpoints" / "last.json",
        torch.nn.Linear(2, 2),
        state={"step": 14, "epoch": 2, "batch_in_epoch": 0},
    )
    (run / "metrics.jsonl").write_text('{"type": "epoch", "epoch": 2}\n')
    return (run / "config.yaml").read_bytes()


def test_resume_with_an_incompatible_change_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alignkit.recipes.config import load_config
    from alignkit.recipes.run import check_resume

    run = tmp_path / "run"
    saved = _fake_run(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = _run_cli(
        ["train", "--out", str(run), "--resume", "model.embed_dim=32", "train.lr=0.01"], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "model.embed_dim (64 → 32)" in err and "train.lr (0.003 → 0.01)" in err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert after == before and (run / "config.yaml").read_bytes() == saved
    # still resumable with its own config, and where from
    where = check_resume(load_config(run / "config.yaml"), run)
    assert where == {"step": 14, "epoch": 2, "batch_in_epoch": 0}
    # a runtime key may change
    assert check_resume(load_config(run / "config.yaml", ["train.log_every=1"]), run) is not None


def test_resume_says_where_it_resumes_and_ctrl_c_is_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import alignkit.recipes.data

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(alignkit.recipes.data, "load_recipe_data", interrupted)  # stop after the message
    run = tmp_path / "run"
    _fake_run(run)
    code, _, err = _run_cli(["train", "--out", str(run), "--resume"], capsys)
    assert "resumed" in err and "from epoch 3 of 5, step 14" in err  # status lines go to stderr
    assert code == 130 and "interrupted" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run_cli(["train", "--out", str(empty), "--resume"], capsys)
    assert code == 130 and "holds no checkpoint yet; starting fresh" in err


# ------------------------------------------------------------------------------- SIGKILL mid-write


def test_sigkill_during_checkpoint_writes_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """A forked writer saving checkpoints in a loop is killed at random moments: the manifest always
    names a complete, digest-checked checkpoint whose weights match its own step."""
    from alignkit.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "ck" / "last.json"
    rng = random.Random(0)
    for trial in range(_KILLS):
        first = trial * 1000
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                for i in range(first, first + 10**6):
                    save_checkpoint(path, {"w": torch.full((64, 256), float(i))}, state={"i": i})
            finally:
                os._exit(0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until this writer has completed one checkpoint
            try:
                if load_checkpoint(path, verify=False).state["i"] >= first:
                    break
            except ValueError:
                pass  # mid-replace: the old files are being removed
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ckpt = load_checkpoint(path)  # verifies sizes and SHA-256
        assert torch.all(ckpt.model["w"] == float(ckpt.state["i"]))
        assert ckpt.state["i"] >= first


# ----------------------------------------------------------------------------- paths and exit codes


def test_transform_never_overwrites_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alignkit.adapters import Adapter

    adapter = tmp_path / "a.safetensors"
    Adapter("linear", 3, 3).save(adapter)
    x = tmp_path / "x.npy"
    save_embeddings(x, torch.randn(5, 3))
    original = x.read_bytes()
    (tmp_path / "soft.npy").symlink_to(x)
    os.link(x, tmp_path / "hard.npy")
    for out in (x, tmp_path / "soft.npy", tmp_path / "hard.npy", tmp_path / "sub" / ".." / "x.npy"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        code, _, err = _run_cli(["transform", str(adapter), str(x), "-o", str(out)], capsys)
        assert code == 2 and "is the input file" in err, err
    assert x.read_bytes() == original
    code, _, err = _run_cli(["transform", str(adapter), str(tmp_path / "soft.npy"), "-o", str(x)], capsys)
    assert code == 2 and x.read_bytes() == original


def test_paths_that_are_loops_or_under_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    plain = tmp_path / "plain"
    plain.write_text("x")
    for out in (loop, plain / "run"):
        code, _, err = _run_cli(["train", "--out", str(out), "train.epochs=1"], capsys)
        assert code == 2 and str(out) in err and err.count("\n") == 1, err
    code, _, err = _run_cli(["measure", str(tmp_path / "loop.npy"), str(tmp_path / "loop.npy")], capsys)
    assert code == 2 and err.count("\n") == 1


def test_os_errors_exit_2_and_internal_errors_keep_their_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import alignkit.cli as cli

    def denied(args: object) -> int:
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    def full(args: object) -> int:
        raise OSError(28, "No space left on device")  # a failed write() carries no path

    def bug(args: object) -> int:
        raise RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch for w: (2, 3) vs (3, 2)")

    original = cli._parser
    for func, wanted, text in (
        (denied, 2, f"{tmp_path / 'x'}: Permission denied"),
        (full, 2, "runs/x: No space left on device"),
        (bug, 1, "Error(s) in loading state_dict: size mismatch for w"),
    ):

        def parser(func: object = func) -> object:
            p = original()
            for action in p._actions:
                for choice in (getattr(action, "choices", None) or {}).values():
                    if hasattr(choice, "set_defaults"):
                        choice.set_defaults(func=func)
            return p

        monkeypatch.setattr(cli, "_parser", parser)
        code, _, err = _run_cli(["train", "--out", "runs/x"], capsys)
        assert code == wanted and text in err and err.count("\n") == 1, err


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs is Linux-only")
def test_full_filesystem_exits_2_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("a full filesystem needs a small tmpfs, which only root can mount")
    full = tmp_path / "full"
    full.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip() or mounted.returncode}")
    try:
        from alignkit.adapters import Adapter

        adapter = tmp_path / "a.safetensors"
        Adapter("linear", 64, 64).save(adapter)
        x = tmp_path / "x.npy"
        save_embeddings(x, torch.randn(1024, 64))  # 256 KiB of output into a 64 KiB filesystem
        out = full / "y.npy"
        code, _, err = _run_cli(["transform", str(adapter), str(x), "-o", str(out)], capsys)
        assert code == 2 and str(out) in err and "No space left on device" in err and err.count("\n") == 1
        assert not out.exists() and list(full.iterdir()) == []  # the temporary file was removed
    finally:
        subprocess.run(["umount", str(full)], check=False)
