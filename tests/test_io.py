from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.cli import main
from alignkit.io import LOADABLE_EXTENSIONS, load_embeddings, save_embeddings

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]

# Set by _Trap.__setstate__: proof that a pickle was executed.
UNPICKLED: list[str] = []


def _mark(note: str) -> str:
    UNPICKLED.append(note)
    return note


class _Trap:
    """An object whose unpickling calls ``_mark`` (the pattern of a malicious pickle); alignkit must
    refuse it, never load it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _mark, ("executed",)


def _matrix(n: int = 7, d: int = 3, dtype: np.dtype = np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, d)).astype(dtype)


# --------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_npy_round_trip_keeps_dtype(tmp_path: Path, dtype: np.dtype) -> None:
    a = _matrix(dtype=dtype)
    np.save(tmp_path / "a.npy", a)
    x = load_embeddings(tmp_path / "a.npy")
    assert x.dtype == torch.from_numpy(a).dtype and x.shape == (7, 3)
    np.testing.assert_array_equal(x.numpy(), a)


def test_npy_integer_bool_and_half_become_float32(tmp_path: Path) -> None:
    for name, array in {
        "i.npy": np.arange(12, dtype=np.int64).reshape(4, 3),
        "u.npy": np.arange(12, dtype=np.uint8).reshape(4, 3),
        "b.npy": np.eye(3, dtype=bool),
        "h.npy": np.linspace(0, 1, 6, dtype=np.float16).reshape(3, 2),
    }.items():
        np.save(tmp_path / name, array)
        x = load_embeddings(tmp_path / name)
        assert x.dtype == torch.float32, name
        np.testing.assert_array_equal(x.numpy(), array.astype(np.float32))


def test_npz_single_array_and_key(tmp_path: Path) -> None:
    a, b = _matrix(), _matrix(5, 2, np.float64)
    np.savez(tmp_path / "one.npz", only=a)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "one.npz").numpy(), a)
    np.savez(tmp_path / "two.npz", img=a, txt=b)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "two.npz", key="txt").numpy(), b)
    with pytest.raises(ValueError, match=r"2 arrays \('img', 'txt'\); choose one with key="):
        load_embeddings(tmp_path / "two.npz")
    with pytest.raises(ValueError, match=r"no array named 'audio'; it has 'img', 'txt'"):
        load_embeddings(tmp_path / "two.npz", key="audio")


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_pt_tensor_and_dict(tmp_path: Path, suffix: str) -> None:
    t = torch.randn(6, 4, dtype=torch.float64)
    torch.save(t, tmp_path / f"t{suffix}")
    torch.testing.assert_close(load_embeddings(tmp_path / f"t{suffix}"), t, rtol=0, atol=0)
    torch.save({"image": t, "text": t[:, :2].float()}, tmp_path / f"d{suffix}")
    out = load_embeddings(tmp_path / f"d{suffix}", key="text")
    assert out.dtype == torch.float32 and out.shape == (6, 2)
    with pytest.raises(ValueError, match=r"2 entrys? .*'image', 'text'.*key="):
        load_embeddings(tmp_path / f"d{suffix}")
    with pytest.raises(ValueError, match="not a dict; drop key="):
        load_embeddings(tmp_path / f"t{suffix}", key="image")


def test_pt_half_and_integer_tensors_become_float32(tmp_path: Path) -> None:
    torch.save(torch.arange(6).reshape(3, 2), tmp_path / "i.pt")
    torch.save(torch.randn(3, 2).bfloat16(), tmp_path / "b.pt")
    assert load_embeddings(tmp_path / "i.pt").dtype == torch.float32
    b = load_embeddings(tmp_path / "b.pt")
    assert b.dtype == torch.float32 and b.shape == (3, 2)


def test_safetensors_round_trip_and_key(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    t = torch.randn(5, 3)
    save_embeddings(tmp_path / "e.safetensors", t)
    torch.testing.assert_close(load_embeddings(tmp_path / "e.safetensors"), t, rtol=0, atol=0)
    save_file({"a": t, "b": 2 * t}, str(tmp_path / "two.safetensors"))
    torch.testing.assert_close(load_embeddings(tmp_path / "two.safetensors", key="b"), 2 * t)
    with pytest.raises(ValueError, match=r"2 tensors \('a', 'b'\)"):
        load_embeddings(tmp_path / "two.safetensors")
    with pytest.raises(ValueError, match="no tensor named 'c'"):
        load_embeddings(tmp_path / "two.safetensors", key="c")


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".pth", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_then_load_is_identity_and_atomic(tmp_path: Path, suffix: str, dtype: torch.dtype) -> None:
    t = torch.randn(9, 4, dtype=dtype)
    target = tmp_path / f"e{suffix}"
    save_embeddings(target, t)
    back = load_embeddings(target)
    assert back.dtype == dtype
    torch.testing.assert_close(back, t, rtol=0, atol=0)
    save_embeddings(target, 2 * t)  # overwrite in place
    torch.testing.assert_close(load_embeddings(target), 2 * t, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left behind


def test_save_failure_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "e.npy"
    save_embeddings(target, torch.ones(2, 2))

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_embeddings(target, torch.zeros(2, 2))
    monkeypatch.undo()
    torch.testing.assert_close(load_embeddings(target), torch.ones(2, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["e.npy"]


def test_save_rejects_bad_extension_and_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.npy, \.pt, \.pth, \.safetensors"):
        save_embeddings(tmp_path / "e.csv", torch.ones(2, 2))
    with pytest.raises(ValueError, match="tensor must be"):
        save_embeddings(tmp_path / "e.npy", [[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not exist"):
        save_embeddings(tmp_path / "missing" / "e.npy", torch.ones(2, 2))
    with pytest.raises(ValueError, match="bfloat16"):
        save_embeddings(tmp_path / "e.npy", torch.ones(2, 2, dtype=torch.bfloat16))
    save_embeddings(tmp_path / "n.npy", np.ones((2, 3), dtype=np.float64))  # numpy input works too
    assert load_embeddings(tmp_path / "n.npy").dtype == torch.float64


def test_parquet_vector_column(tmp_path: Path) -> None:
    a = _matrix(4, 3)
    table = pa.table({"id": ["a", "b", "c", "d"], "label": [0, 1, 0, 1], "emb": [list(row) for row in a]})
    pq.write_table(table, tmp_path / "v.parquet")
    np.testing.assert_allclose(load_embeddings(tmp_path / "v.parquet").numpy(), a)


def test_parquet_fixed_size_list_and_key(tmp_path: Path) -> None:
    a = _matrix(4, 3, np.float64)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 3)
    other = pa.array([list(row[:2]) for row in a])
    pq.write_table(pa.table({"img": fixed, "txt": other}), tmp_path / "f.parquet")
    x = load_embeddings(tmp_path / "f.parquet", key="img")
    assert x.dtype == torch.float64
    np.testing.assert_array_equal(x.numpy(), a)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "f.parquet", key="txt").numpy(), a[:, :2])
    with pytest.raises(ValueError, match=r"2 vector columns \('img', 'txt'\); choose one with key="):
        load_embeddings(tmp_path / "f.parquet")
    with pytest.raises(ValueError, match="no column named 'audio'"):
        load_embeddings(tmp_path / "f.parquet", key="audio")


def test_parquet_numeric_columns_as_features(tmp_path: Path) -> None:
    table = pa.table({"f0": [1.0, 2.0, 3.0], "name": ["x", "y", "z"], "f1": [4, 5, 6]})
    pq.write_table(table, tmp_path / "n.parquet")
    x = load_embeddings(tmp_path / "n.parquet")
    np.testing.assert_array_equal(x.numpy(), np.array([[1, 4], [2, 5], [3, 6]], dtype=np.float64))
    single = load_embeddings(tmp_path / "n.parquet", key="f1")
    assert single.shape == (3, 1)
    with pytest.raises(ValueError, match="column 'name' has type string"):
        load_embeddings(tmp_path / "n.parquet", key="name")


def test_parquet_bad_tables(tmp_path: Path) -> None:
    pq.write_table(pa.table({"emb": [[1.0, 2.0], [3.0]]}), tmp_path / "ragged.parquet")
    with pytest.raises(ValueError, match="lengths 1 to 2"):
        load_embeddings(tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"emb": [[1.0, 2.0], None]}), tmp_path / "null.parquet")
    with pytest.raises(ValueError, match="1 null row"):
        load_embeddings(tmp_path / "null.parquet")
    pq.write_table(pa.table({"name": ["a", "b"]}), tmp_path / "text.parquet")
    with pytest.raises(ValueError, match="no vector column and no numeric column"):
        load_embeddings(tmp_path / "text.parquet")
    pq.write_table(pa.table({"f": [1.0, None, 3.0]}), tmp_path / "nan.parquet")
    with pytest.raises(ValueError, match="1 NaN"):
        load_embeddings(tmp_path / "nan.parquet")


# --------------------------------------------------------------------------------------------------
# Bad input


def test_object_npy_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    UNPICKLED.clear()
    trap = np.empty(2, dtype=object)
    trap[0], trap[1] = _Trap(), _Trap()
    np.save(tmp_path / "obj.npy", trap, allow_pickle=True)
    # the trap works: numpy with pickling allowed runs it
    np.load(tmp_path / "obj.npy", allow_pickle=True)
    assert UNPICKLED
    UNPICKLED.clear()
    with pytest.raises(ValueError, match=r"obj\.npy: holds a pickled object.*never loads"):
        load_embeddings(tmp_path / "obj.npy")
    assert not UNPICKLED
    np.savez(tmp_path / "obj.npz", a=trap)
    with pytest.raises(ValueError, match=r"obj\.npz: holds a pickled object"):
        load_embeddings(tmp_path / "obj.npz")
    assert not UNPICKLED


def test_pickled_object_in_pt_is_refused(tmp_path: Path) -> None:
    UNPICKLED.clear()
    torch.save({"x": _Trap()}, tmp_path / "obj.pt")
    with pytest.raises(
        ValueError, match=r"obj\.pt: not a readable tensor file for torch\.load\(weights_only=True\)"
    ):
        load_embeddings(tmp_path / "obj.pt")
    assert not UNPICKLED


def test_non_array_contents(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not an array"):
        load_embeddings(tmp_path / "list.pt")
    torch.save({"x": 3}, tmp_path / "scalar.pt")
    with pytest.raises(ValueError, match="holds a int, not an array"):
        load_embeddings(tmp_path / "scalar.pt")
    (tmp_path / "text.npy").write_text("just some text\n")
    with pytest.raises(ValueError, match=r"text\.npy"):
        load_embeddings(tmp_path / "text.npy")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([["a", "b"], ["c", "d"]]), "string dtype"),
        (np.ones((2, 2), dtype=np.complex64), "complex dtype"),
        (np.zeros(2, dtype=[("a", "f4"), ("b", "f4")]), "structured dtype"),
        (np.arange(5.0), r"1-D with shape \(5,\).*reshape"),
        (np.zeros((2, 3, 4)), r"shape \(2, 3, 4\), expected 2-D.*reshape"),
        (np.zeros((0, 4)), r"no rows \(shape \(0, 4\)\)"),
        (np.zeros((3, 0)), "no feature columns"),
        (np.array([[np.nan, 1.0], [np.inf, np.nan], [1.0, -np.inf]]), "2 NaN and 2 Inf value.*in 3 row"),
    ],
)
def test_bad_arrays(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=message):
        load_embeddings(tmp_path / "bad.npy")


def test_nan_in_torch_and_safetensors(tmp_path: Path) -> None:
    t = torch.ones(3, 2)
    t[1, 0] = float("nan")
    torch.save(t, tmp_path / "nan.pt")
    save_embeddings(tmp_path / "nan.safetensors", t)
    for name in ("nan.pt", "nan.safetensors"):
        with pytest.raises(ValueError, match=r"1 NaN and 0 Inf value\(s\) in 1 row"):
            load_embeddings(tmp_path / name)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors", ".parquet"])
def test_truncated_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"full{suffix}"
    a = _matrix(50, 8)
    if suffix == ".npy":
        np.save(path, a)
    elif suffix == ".npz":
        np.savez(path, a=a)
    elif suffix == ".pt":
        torch.save(torch.from_numpy(a), path)
    elif suffix == ".safetensors":
        save_embeddings(path, torch.from_numpy(a))
    else:
        pq.write_table(pa.table({"emb": [list(r) for r in a]}), path)
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"cut{suffix}"):
        load_embeddings(cut)


def test_missing_file_unknown_extension_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path / 'nope.npy'}: no such file"):
        load_embeddings(tmp_path / "nope.npy")
    (tmp_path / "e.csv").write_text("1,2\n")
    supported = ", ".join(LOADABLE_EXTENSIONS).replace(".", r"\.")
    with pytest.raises(ValueError, match=f"unknown extension '.csv'; supported: {supported}"):
        load_embeddings(tmp_path / "e.csv")
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        load_embeddings(tmp_path / "dir.npy")
    np.save(tmp_path / "a.npy", _matrix())
    with pytest.raises(ValueError, match="key='x' applies to"):
        load_embeddings(tmp_path / "a.npy", key="x")
    with pytest.raises(ValueError, match="path must be"):
        load_embeddings(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Through the command line


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "alignkit", "measure", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((60, 12)).astype(np.float32)
    b = a @ rng.standard_normal((12, 5)) + 0.1 * rng.standard_normal((60, 5))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    return tmp_path / "a.npy", tmp_path / "b.npy"


def test_cli_subprocess_good_input_prints_table(tmp_path: Path) -> None:
    _pair(tmp_path)
    proc = _run_cli("a.npy", "b.npy", "--metrics", "cka,mutual_knn", "--k", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("a.npy (60 × 12)") and "b.npy (60 × 5)" in lines[0]
    rows = {line.split()[0]: line.split()[1] for line in lines[3:] if line and not line.startswith("null")}
    assert set(rows) == {"cka", "unbiased_cka", "mutual_knn"}  # unbiased CKA always beside biased
    assert 0.0 < float(rows["cka"]) <= 1.0 and 0.0 <= float(rows["mutual_knn"]) <= 1.0


def test_cli_subprocess_json_parses(tmp_path: Path) -> None:
    _pair(tmp_path)
    proc = _run_cli("a.npy", "b.npy", "--json", "--metrics", "cka,procrustes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert (data["n"], data["d_a"], data["d_b"]) == (60, 12, 5)
    assert set(data["metrics"]) == {"cka", "unbiased_cka", "procrustes"}
    assert 0 < data["metrics"]["cka"] <= 1 and 0 <= data["metrics"]["procrustes"] <= 2


def test_cli_subprocess_bad_input_one_line_exit_2(tmp_path: Path) -> None:
    _pair(tmp_path)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    proc = _run_cli("a.npy", "obj.npy", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("alignkit measure: error: obj.npy: holds a pickled object")


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    _pair(tmp_path)
    np.save(tmp_path / "short.npy", np.zeros((10, 3), dtype=np.float32))
    np.save(tmp_path / "flat.npy", np.zeros(60, dtype=np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), dtype=np.float32))
    nan = np.ones((60, 3))
    nan[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.savez(tmp_path / "two.npz", p=np.ones((60, 2)), q=np.ones((60, 2)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:100])
    torch.save("a string", tmp_path / "str.pt")
    return {
        "missing": (["a.npy", "nope.npy"], "nope.npy: no such file"),
        "n mismatch": (["a.npy", "short.npy"], "same N samples"),
        "1-D": (["a.npy", "flat.npy"], "1-D"),
        "empty": (["a.npy", "empty.npy"], "no rows"),
        "nan": (["a.npy", "nan.npy"], "1 NaN"),
        "npz key": (["a.npy", "two.npz"], "choose one with --key-b"),
        "wrong key": (["a.npy", "two.npz", "--key-b", "r"], "no array named 'r'"),
        "truncated": (["a.npy", "cut.npy"], "cut.npy"),
        "not an array": (["a.npy", "str.pt"], "holds a str, not an array"),
        "extension": (["a.npy", "b.txt"], "unknown extension"),
        "unknown metric": (["a.npy", "a.npy", "--metrics", "cka,nope"], "valid metrics: cka, unbiased_cka"),
        "bad k": (["a.npy", "a.npy", "--k", "many"], "--k must be an integer"),
        "k too large": (["a.npy", "a.npy", "--metrics", "mutual_knn", "--k", "60"], "k = 60 is too large"),
        "no files": ([], "needs two embedding files"),
    }


def test_cli_bad_inputs_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for case, (args, message) in _bad_inputs(tmp_path).items():
        code = main(["measure", *args])
        out, err = capsys.readouterr()
        assert code == 2, case
        assert out == "", case
        assert err.count("\n") == 1 and err.startswith("alignkit measure: error: "), (case, err)
        assert message in err, (case, err)
