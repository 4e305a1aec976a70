"""Tests for ``alignkit fit`` / ``alignkit transform`` (alignkit.cli.fit, alignkit.cli.transform).

Three levels:

* the sub-commands on a parser built here with ``add_commands`` (always runs);
* ``alignkit.cli.main`` in-process and ``python -m alignkit`` in a subprocess: while ``fit`` is not yet
  wired into ``alignkit.cli._parser`` these run through a parser that adds the commands to
  ``alignkit.cli``'s own parser (so ``main``'s error handling is the real one); once wired, the real
  ``python -m alignkit``;
* ``test_cli_main_has_fit_and_transform`` checks the wiring itself: skipped only while ``fit`` is absent
  from ``alignkit.cli._parser()``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import alignkit
import alignkit.cli
from alignkit.adapters import Adapter
from alignkit.cli import fit as fit_command
from alignkit.cli import transform as transform_command
from alignkit.io import load_embeddings, save_embeddings

REPO = Path(alignkit.__file__).resolve().parents[1]



def add_commands(sub: argparse._SubParsersAction) -> None:
    fit_command.add_command(sub)
    transform_command.add_command(sub)


def _wired() -> bool:
    return "fit" in alignkit.cli._parser()._subparsers._group_actions[0].choices


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """x (300, 8); y = 2·x·Q + 1 for an orthogonal Q; z has other rows; w other columns."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    y = (2.0 * x @ q + 1.0).astype(np.float32)
    paths = {name: tmp_path / f"{name}.npy" for name in ("x", "y", "z", "w")}
    np.save(paths["x"], x)
    np.save(paths["y"], y)
    np.save(paths["z"], x[:100])
    np.save(paths["w"], x[:, :5])
    return paths


def _wire_into_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``alignkit.cli.main`` know fit / transform (a no-op once they are wired)."""
    if _wired():
        return
    original = alignkit.cli._parser

    def patched() -> argparse.ArgumentParser:
        parser = original()
        add_commands(parser._subparsers._group_actions[0])
        return parser

    monkeypatch.setattr(alignkit.cli, "_parser", patched)


def _expected(files: dict[str, Path]) -> np.ndarray:
    return np.load(files["y"])


# --------------------------------------------------------------------------------------------------
# the commands on a parser built here


def test_fit_prints_the_table_and_writes_an_adapter(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapter.safetensors"
    assert _run(["fit", str(files["x"]), str(files["y"]), "--out", str(out), "--method", "linear"]) == 0
    text = capsys.readouterr().out
    assert "linear / mse: 8 → 8 dims, closed form" in text  # --method linear: its closed form
    rows = {line.split("  ")[0].strip(): line.split() for line in text.splitlines()}
    keep_old, before, after, native = rows["R@1"][-4:]  # new-model queries on the held-out index
    assert float(after) == 1.0 and float(before) < 0.5 and float(native) == 1.0 == float(keep_old)
    assert float(rows["top-10 overlap with native"][-2]) == pytest.approx(1.0)
    assert "60 held-out rows" in text and "only 60 held-out rows" in text  # small: flagged
    assert f"adapter written to {out}" in text
    adapter = Adapter.load(out)
    mapped = adapter(load_embeddings(files["x"])).detach().numpy()
    np.testing.assert_allclose(mapped, _expected(files), atol=1e-4)


def test_fit_default_is_the_benchmark_winner_mlp_clip(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --method / --objective: mlp / clip (experiments/migration.py's validation winner), trained
    from the ridge solution with early stopping; --method alone takes that method's own objective."""
    out = tmp_path / "default.safetensors"
    argv = ["fit", str(files["x"]), str(files["y"]), "--out", str(out), "--json", "--epochs", "3"]
    assert _run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["method"], report["objective"], report["n_val"]) == ("mlp", "clip", 24)
    assert report["ridge_selected_by"] == "gcv" and report["mean_restored"] and report["epochs"] <= 3
    assert Adapter.load(out).normalize_input  # clip compares by cosine
    assert _run([*argv, "--method", "procrustes"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["method"], report["objective"], report["epochs"]) == ("procrustes", "mse", 0)


def test_fit_json_and_options(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mlp.safetensors"
    argv = ["fit", str(files["x"]), str(files["w"]), "--out", str(out), "--json", "--method", "mlp"]
    argv += [
        "--objective",
        "cosine",
        "--epochs",
        "4",
        "--seed",
        "2",
        "--val-fraction",
        "0.2",
        "--hidden-dim",
        "16",
    ]
    assert _run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapter"] == str(out)
    assert (report["method"], report["objective"], report["n_val"], report["target_dim"]) == (
        "mlp",
        "cosine",
        48,  # validation comes out of the 240 training rows (60 are held out)
        5,
    )
    assert report["recall_at_1_before"] is None  # 8 → 5 dims: no raw comparison
    assert report["epochs"] <= 4
    adapter = Adapter.load(out)
    assert adapter.hidden_dim == 16 and adapter.config["info"]["seed"] == 2


def test_transform_writes_the_expected_array(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = tmp_path / "adapter.safetensors"
    assert _run(["fit", str(files["x"]), str(files["y"]), "--out", str(adapter), "--method", "linear"]) == 0
    for name in ("mapped.npy", "mapped.safetensors", "mapped.pt"):
        out = tmp_path / name
        assert _run(["transform", str(adapter), str(files["x"]), "-o", str(out), "--batch-size", "7"]) == 0
        written = load_embeddings(out).numpy()
        assert written.dtype == np.float32 and written.shape == (300, 8)
        np.testing.assert_allclose(written, _expected(files), atol=1e-4)  # the true map 2·x·Q + 1
    assert "(300, 8)" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["fit", "{x}"], "needs two embedding files"),
        (["fit", "{x}", "{y}"], "--out is required"),
        (["fit", "{x}", "{missing}", "--out", "{out}"], "missing.npy: no such file"),
        (["fit", "{x}", "{z}", "--out", "{out}"], "has 300 rows and TARGET .* has 100"),
        (["fit", "{x}", "{y}", "--out", "{out}", "--method", "pca"], "--method must be one of"),
        (["fit", "{x}", "{y}", "--out", "{out}", "--objective", "l1"], "--objective must be one of"),
        (
            ["fit", "{x}", "{y}", "--out", "{out}", "--method", "procrustes", "--objective", "clip"],
            "for method=.procrustes.",
        ),
        (["fit", "{x}", "{y}", "--out", "{out}", "--epochs", "abc"], r"--epochs must be an integer in \["),
        (
            ["fit", "{x}", "{y}", "--out", "{out}", "--val-fraction", "1.5"],
            r"--val-fraction must be in \[0, 1\)",
        ),
        (["fit", "{x}", "{y}", "--out", "{out}", "--lr", "nan"], "--lr must be a number"),
        (["fit", "{x}", "{y}", "--out", "{dir}/adapter.npy"], "written as .safetensors"),
        (["fit", "{x}", "{y}", "--out", "{dir}/nope/a.safetensors"], "does not exist"),
        (["fit", "{x}", "{y}", "--out", "{x}"], "written as .safetensors"),
        (["transform", "{adapter}"], "needs an adapter and an input file"),
        (["transform", "{adapter}", "{x}"], "-o/--out is required"),
        (["transform", "{adapter}", "{w}", "-o", "{dir}/m.npy"], "has 5 columns .* maps 8-dimensional"),
        (["transform", "{y}", "{x}", "-o", "{dir}/m.npy"], r"must end in \.safetensors"),
        (["transform", "{embeddings}", "{x}", "-o", "{dir}/m.npy"], "not an alignkit adapter"),
        (["transform", "{adapter}", "{x}", "-o", "{dir}/m.csv"], "cannot write extension '.csv'"),
        (["transform", "{adapter}", "{x}", "-o", "{adapter}"], "is the adapter file"),
        (["transform", "{adapter}", "{x}", "-o", "{dir}/m.npy", "--batch-size", "0"], "--batch-size must be"),
    ],
)
def test_bad_input_raises_one_line_value_error(
    files: dict[str, Path], tmp_path: Path, argv: list[str], match: str
) -> None:
    adapter = tmp_path / "adapter.safetensors"
    Adapter("linear", 8, 8).save(adapter)
    embeddings = tmp_path / "embeddings.safetensors"
    save_embeddings(embeddings, np.load(files["x"]))
    names = {k: str(v) for k, v in files.items()}
    names.update(
        missing=str(tmp_path / "missing.npy"),
        out=str(tmp_path / "out.safetensors"),
        dir=str(tmp_path),
        adapter=str(adapter),
        embeddings=str(embeddings),
    )
    argv = [a.format(**names) for a in argv]
    with pytest.raises(ValueError, match=match) as info:
        _run(argv)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_fit_refuses_to_overwrite_its_input(files: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "source.safetensors"
    save_embeddings(source, np.load(files["x"]))
    with pytest.raises(ValueError, match="is the SOURCE file"):
        _run(["fit", str(source), str(files["y"]), "--out", str(source)])
    assert load_embeddings(source).shape == (300, 8)


# --------------------------------------------------------------------------------------------------
# through alignkit.cli.main


def test_main_turns_bad_input_into_one_stderr_line_and_exit_2(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _wire_into_main(monkeypatch)
    code = alignkit.cli.main(
        ["fit", str(files["x"]), str(files["z"]), "--out", str(tmp_path / "a.safetensors")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("alignkit fit: error: ") and "Traceback" not in err
    code = alignkit.cli.main(
        ["transform", str(tmp_path / "none.safetensors"), str(files["x"]), "-o", "m.npy"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no such adapter file" in err


def _command() -> list[str]:
    return [sys.executable, "-m", "alignkit"]


def _subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [*_command(), *argv], capture_output=True, text=True, check=False, cwd=cwd, env=env, timeout=120
    )


def test_end_to_end_in_a_subprocess(files: dict[str, Path], tmp_path: Path) -> None:
    argv = ["fit", "x.npy", "y.npy", "--out", "adapter.safetensors", "--method", "linear"]
    fit = _subprocess(argv, tmp_path)
    assert fit.returncode == 0, fit.stderr
    row = next(line for line in fit.stdout.splitlines() if line.startswith("R@1 "))
    assert float(row.split()[-2]) == 1.0  # after (the last column is native)
    assert "Traceback" not in fit.stderr

    transform = _subprocess(["transform", "adapter.safetensors", "x.npy", "-o", "mapped.npy"], tmp_path)
    assert transform.returncode == 0, transform.stderr
    np.testing.assert_allclose(np.load(tmp_path / "mapped.npy"), _expected(files), atol=1e-4)

    bad = _subprocess(["fit", "x.npy", "z.npy", "--out", "b.safetensors", "--method", "linear"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("alignkit fit: error: ")
    assert "300 rows" in bad.stderr and bad.stdout == ""
    assert not (tmp_path / "b.safetensors").exists()


def test_cli_main_has_fit_and_transform(files: dict[str, Path], tmp_path: Path) -> None:
    """Fails once ``fit`` is wired into alignkit.cli without ``transform``, or wired wrongly; skipped
    only while ``fit`` is absent from ``alignkit.cli._parser()`` (the lead adds the one line)."""
    if not _wired():
        pytest.skip("alignkit.cli._parser() does not have `fit` yet: add fit_cli.add_commands(sub)")
    choices = alignkit.cli._parser()._subparsers._group_actions[0].choices
    assert "transform" in choices
    out = tmp_path / "adapter.safetensors"
    fit = ["fit", str(files["x"]), str(files["y"]), "--out", str(out), "--method", "linear"]
    assert alignkit.cli.main(fit) == 0
    assert alignkit.cli.main(["transform", str(out), str(files["x"]), "-o", str(tmp_path / "m.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), _expected(files), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# migration options: --ridge, --test-fraction, closed forms without validation, transform --normalize / --csls


def test_fit_ridge_and_splits(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ridge.safetensors"
    argv = ["fit", str(files["x"]), str(files["y"]), "-o", str(out), "--method", "linear", "--json"]
    assert _run([*argv, "--ridge", "0.5", "--test-fraction", "0.1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ridge"], report["ridge_selected_by"]) == (0.5, "given")
    # a closed form has no validation rows
    assert (report["n_train"], report["n_val"], report["n_test"]) == (270, 0, 30)
    assert _run(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ridge_selected_by"] == "gcv" and report["ridge"] < 0.01  # exact data: little shrinkage
    assert _run([*argv, "--ridge-cv", "kfold:3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ridge_selected_by"] == "3-fold" and report["ridge"] < 0.01
    assert set(report["retrieval"]) == {"keep_old", "before", "after", "native"}
    assert _run(["fit", str(files["x"]), str(files["y"]), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == "1.0000"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--ridge", "lots"], "--ridge must be a number ≥ 0.0"),
        (["--ridge-cv", "kfold:1"], r"--ridge-cv must be gcv, kfold or kfold:K \(K ≥ 2 folds\)"),
        (["--ridge", "0.1", "--ridge-cv", "gcv"], "--ridge-cv chooses the ridge of --ridge auto"),
        (["--test-fraction", "1"], r"--test-fraction must be in \[0, 1\)"),
        (["--csls", "-3"], "--csls must be an integer ≥ 0"),
        (["--unpaired-source", "{x}"], "--unpaired-source and --unpaired-target go together"),
    ],
)
def test_fit_rejects_bad_migration_options(
    files: dict[str, Path], tmp_path: Path, extra: list[str], match: str
) -> None:
    argv = ["fit", str(files["x"]), str(files["y"]), "-o", str(tmp_path / "a.safetensors")]
    argv += [a.format(x=files["x"]) for a in extra]
    with pytest.raises(ValueError, match=match):
        _run(argv)


def test_transform_normalize_and_csls(files: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from alignkit.search import search

    adapter = tmp_path / "adapter.safetensors"
    argv = ["fit", str(files["x"]), str(files["y"]), "-o", str(adapter), "--quiet", "--method", "linear"]
    assert _run(argv) == 0
    unit = tmp_path / "unit.npy"
    assert _run(["transform", str(adapter), str(files["x"]), "-o", str(unit), "--normalize", "--quiet"]) == 0
    written = np.load(unit)
    expected = _expected(files)
    np.testing.assert_allclose(written, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    queries = tmp_path / "queries.npy"
    rng = np.random.default_rng(5)
    np.save(queries, (expected[:50] + 0.5 * rng.standard_normal((50, 8))).astype(np.float32))
    hubbed = tmp_path / "csls.npy"
    argv = ["transform", str(adapter), str(files["x"]), "-o", str(hubbed)]
    argv += ["--csls", str(queries), "--csls-k", "5"]
    assert _run(argv) == 0
    index = np.load(hubbed)
    assert index.shape == (300, 9)
    # inner product with [q/‖q‖, 1] ranks exactly as CSLS search does
    q = np.load(queries)
    q_aug = np.hstack([q / np.linalg.norm(q, axis=1, keepdims=True), np.ones((50, 1), np.float32)])
    top = np.argsort(-(q_aug @ index.T), axis=1)[:, :5]
    found = search(torch.from_numpy(q), torch.from_numpy(expected), csls_k=5, k=5).indices.numpy()
    assert (top[:, 0] == found[:, 0]).mean() > 0.98
    with pytest.raises(ValueError, match="--csls-k needs --csls"):
        _run(["transform", str(adapter), str(files["x"]), "-o", str(hubbed), "--csls-k", "5"])
