"""Hostile files: every loader answers a one-line ``ValueError`` naming the path, never another exception,
never an allocation the file does not justify, never an unpickling.

Two parts: a corpus of hand-made hostile files (generated here, in ``tmp_path``) and a hypothesis fuzz that
mutates valid files of every format and feeds them to every loader (bounded: ``_FUZZ_EXAMPLES`` each).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignkit.io import (
    MAX_BYTES_ENV,
    check_not_input,
    load_embeddings,
    load_safetensors,
    load_yaml_bounded,
    memory_budget,
    save_embeddings,
)

_FUZZ_EXAMPLES = int(os.environ.get("ALIGNKIT_FUZZ_EXAMPLES", "60"))


def _npy_bytes(header: str, body: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy file with a hand-written header dict (padded as numpy pads it)."""
    raw = header.encode("latin1")
    size_fmt = "<H" if version == (1, 0) else "<I"
    prefix = 10 if version == (1, 0) else 12
    pad = (-(prefix + len(raw) + 1)) % 64
    raw = raw + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(size_fmt, len(raw)) + raw + body


def _one_line_value_error(call: Callable[[], object], path: Path | str) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# --------------------------------------------------------------------------------- the hostile corpus


HOSTILE_NPY = {
    # a 3.5 PiB declared shape in a 128-byte file: refused before any allocation
    "huge_shape": _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000000), }"),
    "overflow_shape": _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (10**400, 2), }"),
    "negative_shape": _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-5, 2), }"),
    "float_shape": _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2.5, 2), }"),
    "bad_descr": _npy_bytes("{'descr': 'zz', 'fortran_order': False, 'shape': (2, 2), }"),
    "descr_list": _npy_bytes("{'descr': [1, 2, 3], 'fortran_order': False, 'shape': (2, 2), }"),
    "object_dtype": _npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (2, 2), }", b"\0" * 64),
    "unterminated": _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2"),
    "not_a_dict": _npy_bytes("[1, 2, 3]"),
    "missing_keys": _npy_bytes("{'descr': '<f4'}"),
    "code": _npy_bytes("{'descr': __import__('os').getcwd(), 'fortran_order': False, 'shape': (1,)}"),
    "truncated_body": _npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (100, 4), }", b"\0" * 40),
    "huge_header_len": b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{}",
    "bad_version": b"\x93NUMPY\x07\x00" + b"\0" * 100,
    "bad_magic": b"\x93NUMPZ\x01\x00" + b"\0" * 100,
    "empty": b"",
    "pickle": b"\x80\x04\x95" + b"\0" * 50,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_NPY))
def test_hostile_npy_is_one_line_value_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.npy"
    path.write_bytes(HOSTILE_NPY[name])
    _one_line_value_error(lambda: load_embeddings(path), path)


def test_declared_size_is_checked_against_the_file_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.npy"
    path.write_bytes(HOSTILE_NPY["huge_shape"])
    message = _one_line_value_error(lambda: load_embeddings(path), path)
    assert "PiB" in message and "truncated or corrupt" in message


def test_memory_budget_is_enforced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.npy"
    save_embeddings(path, torch.ones(64, 16))  # 4 KiB of data
    assert load_embeddings(path).shape == (64, 16)
    monkeypatch.setenv(MAX_BYTES_ENV, "1024")
    assert memory_budget() == 1024
    message = _one_line_value_error(lambda: load_embeddings(path), path)
    assert MAX_BYTES_ENV in message and "memory budget" in message
    for ext in (".safetensors", ".pt"):
        monkeypatch.delenv(MAX_BYTES_ENV)
        other = tmp_path / f"x{ext}"
        save_embeddings(other, torch.ones(64, 16))
        monkeypatch.setenv(MAX_BYTES_ENV, "1024")
        _one_line_value_error(lambda other=other: load_embeddings(other), other)


def test_npz_zip_bomb_member_is_refused_by_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        buf = io.BytesIO()
        np.save(buf, np.zeros((4096, 64), dtype=np.float32))  # 1 MiB of zeros, compresses to ~1 KiB
        archive.writestr("x.npy", buf.getvalue())
    assert path.stat().st_size < 10_000
    monkeypatch.setenv(MAX_BYTES_ENV, str(100_000))
    message = _one_line_value_error(lambda: load_embeddings(path), path)
    assert "memory budget" in message


def test_npz_member_with_hostile_header(tmp_path: Path) -> None:
    path = tmp_path / "h.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", HOSTILE_NPY["huge_shape"])
    _one_line_value_error(lambda: load_embeddings(path), path)


def _pt_file(tmp_path: Path, name: str, obj: object) -> Path:
    path = tmp_path / f"{name}.pt"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "name",
    ["meta", "nested", "quantized", "dict_of_dict", "list", "int", "huge_sparse", "complex"],
)
def test_hostile_pt_is_one_line_value_error(tmp_path: Path, name: str) -> None:
    objects: dict[str, Callable[[], object]] = {
        "meta": lambda: torch.empty(3, 4, device="meta"),
        "nested": lambda: torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)]),
        "quantized": lambda: torch.quantize_per_tensor(torch.ones(3, 4), 0.1, 0, torch.quint8),
        "dict_of_dict": lambda: {"a": {"b": torch.ones(2, 2)}},
        "list": lambda: [torch.ones(2, 2)],
        "int": lambda: 5,
        "huge_sparse": lambda: torch.sparse_coo_tensor(
            torch.zeros(2, 1, dtype=torch.long), torch.ones(1), (10**7, 10**7)
        ),
        "complex": lambda: torch.ones(2, 2, dtype=torch.complex64),
    }
    path = _pt_file(tmp_path, name, objects[name]())
    _one_line_value_error(lambda: load_embeddings(path), path)


def test_pt_pickle_is_never_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.ones(2, 2), "f": os.getcwd}, path)  # a callable: refused by weights_only
    _one_line_value_error(lambda: load_embeddings(path, key="x"), path)


HOSTILE_SAFETENSORS = {
    "empty": b"",
    "short": b"\x01\x02",
    "huge_header_len": struct.pack("<Q", 2**62) + b"{}",
    "garbage_json": struct.pack("<Q", 8) + b"{not js}",
    "json_list": struct.pack("<Q", 2) + b"[]",
    "offsets_outside": struct.pack("<Q", 64)
    + json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 10**15]}}).encode().ljust(64)
    + b"\0" * 16,
    "offsets_bad_type": struct.pack("<Q", 64)
    + json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": "zz"}}).encode().ljust(64),
    "shape_mismatch": struct.pack("<Q", 64)
    + json.dumps({"x": {"dtype": "F32", "shape": [400, 4], "data_offsets": [0, 16]}}).encode().ljust(64)
    + b"\0" * 16,
    "deep_json": struct.pack("<Q", 200_000) + (b"[" * 100_000 + b"]" * 100_000),
    "random": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SAFETENSORS))
def test_hostile_safetensors_is_one_line_value_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(HOSTILE_SAFETENSORS[name])
    _one_line_value_error(lambda: load_embeddings(path), path)
    _one_line_value_error(lambda: load_safetensors(path), path)


def test_hostile_parquet_is_one_line_value_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1" + b"\xff" * 100 + b"PAR1")
    _one_line_value_error(lambda: load_embeddings(path), path)


@pytest.mark.parametrize("ext", [".npy", ".npz", ".pt", ".safetensors", ".parquet"])
def test_symlink_loop_and_directory(tmp_path: Path, ext: str) -> None:
    loop = tmp_path / f"loop{ext}"
    other = tmp_path / f"other{ext}"
    loop.symlink_to(other)
    other.symlink_to(loop)
    message = _one_line_value_error(lambda: load_embeddings(loop), loop)
    assert "symlink loop" in message
    folder = tmp_path / f"folder{ext}"
    folder.mkdir()
    assert "not a regular file" in _one_line_value_error(lambda: load_embeddings(folder), folder)
    under_file = tmp_path / "plain.txt" / f"x{ext}"
    (tmp_path / "plain.txt").write_text("x")
    _one_line_value_error(lambda: load_embeddings(under_file), under_file)


def test_check_not_input_sees_links(tmp_path: Path) -> None:
    src = tmp_path / "x.npy"
    save_embeddings(src, torch.ones(2, 2))
    (tmp_path / "soft.npy").symlink_to(src)
    os.link(src, tmp_path / "hard.npy")
    for alias in (src, tmp_path / "soft.npy", tmp_path / "hard.npy", tmp_path / "sub" / ".." / "x.npy"):
        with pytest.raises(ValueError, match="is the input file"):
            check_not_input(alias, src)
    check_not_input(tmp_path / "y.npy", src)  # a new file is fine


# ------------------------------------------------------------------------------------------------ YAML


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # the 674-byte "billion laughs" bomb shape: anchors/aliases refused before any expansion
        ("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b]\n", "anchors"),
        ("a: &a [*a]\n", "anchors"),  # recursive anchor
        ("base: &b {x: 1}\nother:\n  <<: *b\n", "anchors"),
        ("x: " + "[" * 500 + "]" * 500 + "\n", "nested deeper"),
        ("x: [1, 2\n", "not valid YAML"),
        ("x: !!python/object/apply:os.getcwd []\n", "not valid YAML"),
        ("a: 1\n" + "".join(f"k{i}: [{', '.join(['1'] * 10)}]\n" for i in range(20)), "values"),
    ],
)
def test_yaml_bombs_are_refused(text: str, match: str) -> None:
    message = _one_line_value_error(lambda: load_yaml_bounded(text, max_nodes=200), "YAML text")
    assert match in message, message


def test_yaml_file_bounds(tmp_path: Path) -> None:
    good = tmp_path / "c.yaml"
    good.write_text("train:\n  epochs: 3\nmodel: {embed_dim: 32}\n")
    assert load_yaml_bounded(good) == {"train": {"epochs": 3}, "model": {"embed_dim": 32}}
    big = tmp_path / "big.yaml"
    big.write_text("x: 1\n" * 300_000)
    assert "larger than" in _one_line_value_error(lambda: load_yaml_bounded(big), big)
    missing = tmp_path / "none.yaml"
    _one_line_value_error(lambda: load_yaml_bounded(missing), missing)
    for config in sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")):
        assert isinstance(load_yaml_bounded(config), dict)  # the shipped configs stay loadable


# ------------------------------------------------------------------------------------------------ fuzz


def _valid_files(root: Path) -> dict[str, bytes]:
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    files: dict[str, bytes] = {}
    for ext in (".npy", ".pt", ".safetensors"):
        path = root / f"seed{ext}"
        save_embeddings(path, x)
        files[ext] = path.read_bytes()
    buf = io.BytesIO()
    np.savez(buf, a=x.numpy(), b=x.numpy()[:, :2])
    files[".npz"] = buf.getvalue()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.table({"v": pa.array(x.tolist())}), sink)
        files[".parquet"] = sink.getvalue()
    except ImportError:  # pragma: no cover
        pass
    return files


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**6), st.integers(0, 2**32 - 1)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in mutations:
        if not out:
            break
        i = position % len(out)
        if kind == "flip":
            out[i] ^= value
        elif kind == "truncate":
            del out[i:]
        elif kind == "insert":
            out[i:i] = bytes([value])
        else:
            out[i : i + 4] = value.to_bytes(4, "little")
    return bytes(out)


def _loads_or_refuses(path: Path, call: Callable[[], object]) -> None:
    try:
        call()
    except ValueError as err:
        assert "\n" not in str(err), str(err)
    # any other exception type fails the test with the fuzzed file's bytes in hypothesis' report


@pytest.mark.parametrize("ext", [".npy", ".npz", ".pt", ".safetensors", ".parquet"])
def test_fuzz_embedding_loaders(tmp_path_factory: pytest.TempPathFactory, ext: str) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    seeds = _valid_files(root)
    if ext not in seeds:
        pytest.skip("pyarrow is not installed")
    seed = seeds[ext]

    @settings(
        max_examples=_FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        mutations=st.lists(_mutation, min_size=1, max_size=4), raw=st.booleans(), junk=st.binary(max_size=64)
    )
    def check(mutations: list[tuple[str, int, int]], raw: bool, junk: bytes) -> None:
        path = root / f"case{ext}"
        path.write_bytes(junk if raw else _mutate(seed, mutations))
        _loads_or_refuses(path, lambda: load_embeddings(path))
        if ext == ".npz":
            _loads_or_refuses(path, lambda: load_embeddings(path, key="a"))

    check()


def test_fuzz_yaml_loader() -> None:
    base = "recipe: clip\ntrain:\n  epochs: 3\n  lr: 1.0e-3\nmodel: {embed_dim: 32, towers: [a, b]}\n"

    @settings(max_examples=_FUZZ_EXAMPLES * 2, deadline=None, database=None)
    @given(mutations=st.lists(_mutation, min_size=1, max_size=4))
    def check(mutations: list[tuple[str, int, int]]) -> None:
        text = _mutate(base.encode(), mutations).decode("latin1")
        _loads_or_refuses(Path("YAML text"), lambda: load_yaml_bounded(text + "\n"))

    check()


def test_sparse_tensor_with_invalid_indices_is_refused(tmp_path: Path) -> None:
    with torch.sparse.check_sparse_tensor_invariants(False):
        bad = torch.sparse_coo_tensor(torch.tensor([[0, 5], [0, 9]]), torch.ones(2), (2, 2))
    path = _pt_file(tmp_path, "bad_sparse", bad)
    _one_line_value_error(lambda: load_embeddings(path), path)


# -------------------------------------------------------------------------------- adapters, checkpoints


def _adapter_file(tmp_path: Path, method: str = "mlp") -> Path:
    from alignkit.adapters import Adapter

    adapter = Adapter(method, 5, 3, hidden_dim=8)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn_like(p))
    path = tmp_path / f"{method}.safetensors"
    adapter.save(path)
    return path


def test_adapter_flipped_weight_byte_is_refused(tmp_path: Path) -> None:
    from alignkit.adapters import Adapter

    path = _adapter_file(tmp_path)
    x = torch.randn(4, 5)
    assert Adapter.load(path)(x).shape == (4, 3)
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    for offset in (8 + header + 3, len(data) - 2):  # a byte of the first and of the last weight
        flipped = bytearray(data)
        flipped[offset] ^= 0x01  # a tiny change of one float: still finite, wrong map
        bad = tmp_path / "flipped.safetensors"
        bad.write_bytes(bytes(flipped))
        message = _one_line_value_error(lambda bad=bad: Adapter.load(bad), bad)
        assert "SHA-256 mismatch" in message


def test_adapter_without_digest_and_with_huge_dims(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from alignkit.adapters import Adapter

    good = Adapter("linear", 3, 2)
    tensors = {k: v.contiguous() for k, v in good.state_dict().items()}
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain), metadata={"alignkit_adapter": json.dumps(good.config)})
    assert "no SHA-256" in _one_line_value_error(lambda: Adapter.load(plain), plain)
    for config in (
        {**good.config, "source_dim": 10**12, "target_dim": 10**12},
        {**good.config, "method": "mlp", "hidden_dim": 10**12, "num_layers": 2, "activation": "gelu"},
    ):
        huge = tmp_path / "huge.safetensors"
        save_file(tensors, str(huge), metadata={"alignkit_adapter": json.dumps(config)})
        # built on the meta device: refused by the shape check, nothing allocated
        _one_line_value_error(lambda huge=huge: Adapter.load(huge), huge)


def test_fuzz_adapter_and_checkpoint_loaders(tmp_path: Path) -> None:
    from alignkit.adapters import Adapter
    from alignkit.train.checkpoint import load_checkpoint, save_checkpoint

    seed = _adapter_file(tmp_path).read_bytes()
    manifest = save_checkpoint(tmp_path / "ck" / "last.json", torch.nn.Linear(3, 2), state={"epoch": 1})
    manifest_seed = manifest.read_bytes()
    weights = next(manifest.parent.glob("last.*.model.safetensors"))
    weights_seed = weights.read_bytes()

    @settings(max_examples=_FUZZ_EXAMPLES, deadline=None, database=None)
    @given(mutations=st.lists(_mutation, min_size=1, max_size=4), target=st.sampled_from(["a", "m", "w"]))
    def check(mutations: list[tuple[str, int, int]], target: str) -> None:
        if target == "a":
            path = tmp_path / "case.safetensors"
            path.write_bytes(_mutate(seed, mutations))
            _loads_or_refuses(path, lambda: Adapter.load(path))
            return
        manifest.write_bytes(_mutate(manifest_seed, mutations) if target == "m" else manifest_seed)
        weights.write_bytes(_mutate(weights_seed, mutations) if target == "w" else weights_seed)
        _loads_or_refuses(manifest, lambda: load_checkpoint(manifest))

    check()


def test_caption_decoder_files_carry_a_digest(tmp_path: Path) -> None:
    from alignkit.captioning import _read_decoder_json, _write_decoder_json
    from alignkit.data.tokenizer import WordTokenizer

    path = tmp_path / "tokenizer.json"
    payload = WordTokenizer.fit(["a small digit", "a large digit"]).to_dict()
    _write_decoder_json(path, payload)
    assert _read_decoder_json(path) == payload
    stored = json.loads(path.read_text())
    assert len(stored["sha256"]) == 64
    stored["vocab"][-1] = stored["vocab"][-1] + "x"  # a tampered word: still valid JSON and a valid vocab
    path.write_text(json.dumps(stored))
    assert "SHA-256 mismatch" in _one_line_value_error(lambda: _read_decoder_json(path), path)
    path.write_text("[" * 100_000)
    _one_line_value_error(lambda: _read_decoder_json(path), path)
