"""Data sources: group-safe splits, explicit split files, group-aware retrieval positives,
memory-mapped feature files, and tables of (text | image path) pairs — all on data the tests make."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import alignkit.functional as AF
from alignkit.data.sources import FeatureRows, ImageRows, PairedSource, load_source
from alignkit.data.splits import factorize, group_positives, group_split, read_split_file

# --------------------------------------------------------------------------------------------------
# group_split


def _check_partition(splits: dict[str, torch.Tensor], n: int) -> None:
    assert set(splits) == {"train", "val", "test"}
    rows = torch.cat([splits["train"], splits["val"], splits["test"]])
    assert sorted(rows.tolist()) == list(range(n))  # disjoint and covering
    for part in splits.values():
        assert part.dtype == torch.int64
        assert torch.equal(part, part.sort().values)


def test_group_split_without_groups_has_exact_sizes_and_is_deterministic() -> None:
    splits = group_split(1000, None, val_fraction=0.1, test_fraction=0.25, seed=3)
    _check_partition(splits, 1000)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [650, 100, 250]
    again = group_split(1000, None, val_fraction=0.1, test_fraction=0.25, seed=3)
    assert all(torch.equal(splits[k], again[k]) for k in splits)
    other = group_split(1000, None, val_fraction=0.1, test_fraction=0.25, seed=4)
    assert not torch.equal(splits["test"], other["test"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_never_cuts_a_group(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 8, size=300)  # 300 groups of 1..7 rows
    groups = np.repeat(np.arange(300), sizes)
    rng.shuffle(groups)
    ids = [f"img{g:04d}.png" for g in groups]  # string ids work as well as ints
    n = len(groups)
    splits = group_split(n, ids, val_fraction=0.15, test_fraction=0.2, seed=seed)
    _check_partition(splits, n)
    owner: dict[int, str] = {}
    for name, rows in splits.items():
        for g in groups[rows.numpy()]:
            assert owner.setdefault(int(g), name) == name, f"group {g} straddles {owner[int(g)]} and {name}"
    # each split within one group's size (≤ 7 rows) of its target
    assert abs(len(splits["test"]) - round(0.2 * n)) <= 7
    assert abs(len(splits["val"]) - round(0.15 * n)) <= 7
    again = group_split(n, ids, val_fraction=0.15, test_fraction=0.2, seed=seed)
    assert all(torch.equal(splits[k], again[k]) for k in splits)


def test_group_split_gives_each_requested_split_a_group() -> None:
    groups = np.repeat(np.arange(5), 20)  # five groups of 20; 80/10/10 cannot be met exactly
    splits = group_split(100, groups, val_fraction=0.1, test_fraction=0.1, seed=0)
    _check_partition(splits, 100)
    assert all(len(splits[k]) >= 20 for k in ("val", "test"))
    zero_val = group_split(100, None, val_fraction=0.0, test_fraction=0.3, seed=0)
    assert len(zero_val["val"]) == 0 and len(zero_val["test"]) == 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must"),
        ({"n": 10, "val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"n": 10, "test_fraction": -0.1}, "test_fraction"),
        ({"n": 10, "val_fraction": "x"}, "val_fraction"),
        ({"n": 10, "seed": -1}, "seed"),
        ({"n": 10, "groups": [0, 1, 2]}, "length 10"),
        ({"n": 5, "val_fraction": 0.01}, "rounds to 0"),
        ({"n": 4, "groups": [0, 0, 1, 1], "val_fraction": 0.25, "test_fraction": 0.25}, "2 group"),
        ({"n": 3, "groups": [0.5, 1, 2]}, "fractional"),
        ({"n": 3, "groups": [0, None, 2]}, "empty value"),
    ],
)
def test_group_split_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_split(**kwargs)


def test_factorize_codes_follow_sorted_ids() -> None:
    codes, names = factorize(["b", "a", "b", "c"])
    assert codes.tolist() == [1, 0, 1, 2] and names == ["a", "b", "c"]
    codes, names = factorize(np.array([7.0, 3.0, 7.0]))
    assert codes.tolist() == [1, 0, 1] and names == [3, 7]


# --------------------------------------------------------------------------------------------------
# read_split_file


def test_read_split_file_json_and_txt(tmp_path) -> None:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": [3, 0, 1], "test": [4]}))
    splits = read_split_file(path, 6)  # row 2 and 5 unused
    assert [splits[k].tolist() for k in ("train", "val", "test")] == [[0, 1, 3], [], [4]]
    text = tmp_path / "split.txt"
    text.write_text("split\ntrain\nTest\nvalidation\ntrain\n")
    splits = read_split_file(text, 4)
    assert [splits[k].tolist() for k in ("train", "val", "test")] == [[0, 3], [2], [1]]


@pytest.mark.parametrize(
    ("name", "content", "n", "groups", "match"),
    [
        ("s.json", {"train": [0, 9], "test": [1]}, 5, None, "outside \\[0, 5\\)"),
        ("s.json", {"train": [0, 1], "test": [1]}, 5, None, "row 1 is in both train and test"),
        ("s.json", {"train": [0, 0], "test": [1]}, 5, None, "more than once"),
        ("s.json", {"train": [0], "tset": [1]}, 5, None, "unknown split"),
        ("s.json", {"train": [0, 1]}, 5, None, "no test rows"),
        ("s.json", {"train": [0, 1], "test": [2]}, 3, [7, 8, 8], "group 8 has rows in both train and test"),
        ("s.txt", "train\ntest\n", 3, None, "2 split names, expected one per row \\(3\\)"),
        ("s.txt", "train\ntest\nholdout\n", 3, None, "row 2 has split 'holdout'"),
        ("s.yaml", "x", 3, None, "unknown split-file extension"),
    ],
)
def test_read_split_file_bad_input(tmp_path, name, content, n, groups, match) -> None:
    path = tmp_path / name
    path.write_text(json.dumps(content) if isinstance(content, dict) else content)
    with pytest.raises(ValueError, match=match):
        read_split_file(path, n, groups)


def test_read_split_file_tables(tmp_path) -> None:
    (tmp_path / "col.csv").write_text("split\ntrain\ntest\nval\ntrain\n")
    splits = read_split_file(tmp_path / "col.csv", 4)
    assert [splits[k].tolist() for k in ("train", "val", "test")] == [[0, 3], [2], [1]]
    (tmp_path / "idx.jsonl").write_text(
        "".join(
            json.dumps({"index": i, "split": s}) + "\n" for i, s in [(4, "train"), (1, "test"), (2, "train")]
        )
    )
    splits = read_split_file(tmp_path / "idx.jsonl", 5)
    assert [splits[k].tolist() for k in ("train", "val", "test")] == [[2, 4], [], [1]]
    (tmp_path / "nosplit.csv").write_text("part\ntrain\n")
    with pytest.raises(ValueError, match="no column 'split'"):
        read_split_file(tmp_path / "nosplit.csv", 1)


def test_read_split_file_missing(tmp_path) -> None:
    with pytest.raises(ValueError, match="no such split file"):
        read_split_file(tmp_path / "nope.json", 3)


# --------------------------------------------------------------------------------------------------
# group_positives


def _brute_force_recall(query, gallery, q_groups, g_groups, k):
    """Slow float64 loop: rank of the first gallery item sharing the query's group (ties count against)."""
    q = torch.nn.functional.normalize(query.double(), dim=1)
    g = torch.nn.functional.normalize(gallery.double(), dim=1)
    hits, ranks = 0, []
    for i in range(q.shape[0]):
        scores = [float(q[i] @ g[j]) for j in range(g.shape[0])]
        best = max(s for j, s in enumerate(scores) if g_groups[j] == q_groups[i])
        rank = 1 + sum(1 for j, s in enumerate(scores) if g_groups[j] != q_groups[i] and s >= best)
        ranks.append(rank)
        hits += rank <= k
    return hits / len(ranks), float(np.mean(ranks))


def test_group_positives_match_a_brute_force_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 12, (40,), generator=gen)
    centres = torch.randn(12, 6, generator=gen)
    query = centres[groups] + 0.8 * torch.randn(40, 6, generator=gen)
    gallery = centres[groups] + 0.8 * torch.randn(40, 6, generator=gen)
    positives = group_positives(groups)
    assert isinstance(positives, list)
    for i, pos in enumerate(positives):
        assert pos.tolist() == [j for j in range(40) if groups[j] == groups[i]]
    result = AF.recall_at_k(query, gallery, k=(1, 5), positives=positives)
    for k in (1, 5):
        recall, mean_rank = _brute_force_recall(query, gallery, groups.tolist(), groups.tolist(), k)
        assert result[f"recall@{k}"] == pytest.approx(recall)
        assert result["mean_rank"] == pytest.approx(mean_rank)
    # a grouped score differs from the one-positive score (the test can fail)
    assert result["recall@1"] > AF.recall_at_k(query, gallery, k=1)["recall@1"]


def test_group_positives_separate_gallery_and_singletons() -> None:
    q_groups = ["cat.png", "dog.png", "cat.png"]
    g_groups = ["dog.png", "cat.png", "bird.png"]
    assert group_positives(q_groups, g_groups).tolist() == [1, 0, 1]  # one positive each: (N,) tensor
    assert group_positives(torch.arange(5)).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="query row 0 has group 'fish'"):
        group_positives(["fish"], g_groups)


# --------------------------------------------------------------------------------------------------
# embeddings source


def _pair(n: int = 30, da: int = 6, db: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, da)).astype(np.float32), rng.standard_normal((n, db)).astype(np.float32)


@pytest.mark.parametrize("mode", ["pread", "mmap"])
def test_feature_rows_reads_rows_of_an_npy_file(tmp_path, mode: str) -> None:
    a, _ = _pair()
    path = tmp_path / "a.npy"
    np.save(path, a.astype(np.float16))
    rows = FeatureRows(path, mode=mode, release_bytes=1)  # mmap: release after every read
    expected = torch.from_numpy(a.astype(np.float16).astype(np.float32))
    assert len(rows) == 30 and rows.shape == (30, 6) and rows.storage_dtype == np.float16
    assert rows.dim() == rows.ndim == 2 and rows.dtype == torch.float32
    index = torch.tensor([5, 0, 29, 5])
    batch = rows[index]
    assert batch.dtype == torch.float32 and torch.equal(batch, expected[index])
    assert torch.equal(rows[3], expected[3]) and torch.equal(rows[2:7], expected[2:7])
    assert torch.equal(rows[np.array([1, 2])], expected[[1, 2]])
    runs = torch.tensor([9, 10, 11, 3, 4, 20, 10, -1])  # runs of consecutive rows, repeats, negative
    assert torch.equal(rows[runs], expected[runs])
    assert torch.equal(rows[28:100], expected[28:]) and torch.equal(rows[1:9:3], expected[1:9:3])
    assert rows[torch.tensor([], dtype=torch.long)].shape == (0, 6)
    assert torch.equal(rows.to_tensor(), expected)
    batch += 1  # a copy: the mapping is read-only and unchanged
    assert torch.equal(rows[index], expected[index])
    clone = pickle.loads(pickle.dumps(rows))  # DataLoader workers re-open the file
    assert torch.equal(clone[index], expected[index])
    loader = torch.utils.data.DataLoader(rows, batch_size=8)
    assert torch.equal(torch.cat(list(loader)), expected)
    with pytest.raises(IndexError):
        rows[torch.tensor([30])]
    with pytest.raises(ValueError, match="mode must be"):
        FeatureRows(path, mode="fast")


def test_feature_rows_to_tensor_respects_the_memory_budget(tmp_path, monkeypatch) -> None:
    np.save(tmp_path / "a.npy", np.ones((100, 8), dtype=np.float16))
    rows = FeatureRows(tmp_path / "a.npy")
    assert rows.to_tensor().shape == (100, 8)
    monkeypatch.setenv("ALIGNKIT_MAX_BYTES", "1000")
    with pytest.raises(ValueError, match="memory budget"):
        rows.to_tensor()
    assert rows[torch.arange(10)].shape == (10, 8)  # batches still work


def test_feature_rows_truncated_file(tmp_path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.ones((50, 8), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut\.npy"):
        FeatureRows(path)[torch.tensor([49])]


def test_feature_rows_fortran_order_and_integer_storage(tmp_path) -> None:
    a = np.arange(40, dtype=np.int32).reshape(8, 5)
    np.save(tmp_path / "f.npy", np.asfortranarray(a.astype(np.float64)))
    np.save(tmp_path / "i.npy", a)
    index = torch.tensor([7, 2, 2])
    for name in ("f.npy", "i.npy"):
        rows = FeatureRows(tmp_path / name)
        assert torch.equal(rows[index], torch.from_numpy(a[[7, 2, 2]].astype(np.float32)))


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(5, dtype=np.float32), "expected 2-D"),
        (np.zeros((0, 3), dtype=np.float32), "at least one row"),
        (np.array([[1.0, np.nan]], dtype=np.float32), "row 0 has NaN"),
        (np.array([["a", "b"]]), "expected numbers"),
    ],
)
def test_feature_rows_bad_files(tmp_path, array, match) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=match):
        FeatureRows(path)


def _write_features(path, array: np.ndarray, key: str = "emb") -> None:
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, array)
    elif suffix == ".npz":
        np.savez(path, emb=array, other=np.zeros(3))
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({key: array, "other": np.zeros((2, 2), dtype=np.float32)}, str(path))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.table({"id": [f"r{i}" for i in range(len(array))], key: [list(map(float, r)) for r in array]}),
            path,
        )


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors", ".parquet"])
def test_embeddings_source_reads_every_format(tmp_path, suffix: str) -> None:
    a, b = _pair()
    _write_features(tmp_path / f"a{suffix}", a)
    np.save(tmp_path / "b.npy", b.astype(np.float16))
    key = None if suffix == ".npy" else "emb"
    labels = np.arange(30) % 3
    groups = np.repeat(np.arange(10), 3)
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "groups.txt").write_text("\n".join(f"img{g}" for g in groups))
    cfg = {
        "source": "embeddings",
        "a": f"a{suffix}",
        "key_a": key,
        "b": "b.npy",
        "labels": "labels.npy",
        "groups": "groups.txt",
        "class_names": ["zero", "one", "two"],
        "prompts": ["a {}", "the {}"],
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "seed": 1,
    }
    src = load_source(cfg, base_dir=tmp_path)
    assert isinstance(src, PairedSource) and src.kind_a == src.kind_b == "features"
    assert len(src) == 30 and src.dim("a") == 6 and src.dim("b") == 4
    assert isinstance(src.b, FeatureRows)
    rows = torch.tensor([0, 7, 29])
    assert torch.allclose(src.a[rows], torch.from_numpy(a)[rows])
    assert torch.equal(src.b[rows], torch.from_numpy(b.astype(np.float16).astype(np.float32))[rows])
    assert src.labels.tolist() == labels.tolist()
    assert src.groups.tolist() == groups.tolist()
    assert src.prompts == [["a zero", "the zero"], ["a one", "the one"], ["a two", "the two"]]
    _check_partition(src.splits, 30)
    assert [len(src.splits[k]) for k in ("train", "val", "test")] == [18, 6, 6]
    for part in src.splits.values():  # groups of 3 rows never straddle
        members = src.groups[part]
        for g in members.unique():
            assert int((members == g).sum()) == 3
    assert src.names == ("a", "b") and src.source == "embeddings"


def test_embeddings_source_string_labels_parquet_groups_and_split_file(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = _pair(n=12)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    meta = pa.table({"label": ["cat", "dog", "cow"] * 4, "image": [f"im{i // 2}" for i in range(12)]})
    pq.write_table(meta, tmp_path / "meta.parquet")
    split = {"train": list(range(8)), "val": [8, 9], "test": [10, 11]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    src = load_source(
        {
            "source": "embeddings",
            "a": str(tmp_path / "a.npy"),
            "b": str(tmp_path / "b.npy"),
            "labels": str(tmp_path / "meta.parquet"),
            "labels_key": "label",
            "groups": str(tmp_path / "meta.parquet"),
            "groups_key": "image",
            "split_file": str(tmp_path / "split.json"),
        }
    )
    assert src.class_names == ["cat", "cow", "dog"]
    assert src.labels.tolist() == [0, 2, 1] * 4
    assert src.groups.tolist() == [i // 2 for i in range(12)]
    assert {k: v.tolist() for k, v in src.splits.items()} == split


def test_embeddings_source_bad_input(tmp_path) -> None:
    a, b = _pair()
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b[:25])
    np.save(tmp_path / "b30.npy", b)
    np.save(tmp_path / "labels.npy", np.arange(29))
    base = {"source": "embeddings", "a": "a.npy", "b": "b30.npy"}

    def fails(match: str, **changes) -> None:
        with pytest.raises(ValueError, match=match):
            load_source({**base, **changes}, base_dir=tmp_path)

    fails(r"data.a .*a.npy has 30 rows but data.b .*b.npy has 25", b="b.npy")
    fails("needs data.b", b=None)
    fails("29 labels for 30 rows", labels="labels.npy")
    fails("no such file", a="missing.npy")
    fails("drop data.key_a", key_a="x")
    fails("must be digits, embeddings or pairs", source="images")
    fails("split_file or data.split_column", split_file="s.json", split_column="split")
    fails("data.prompts needs class names", prompts="a {}")
    fails("rounds to 0", val_fraction=0.01)
    with pytest.raises(ValueError, match="data section must be a mapping"):
        load_source(["embeddings"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# pairs source


def _image_folder(tmp_path, n: int = 6):
    from PIL import Image

    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(12 + i, 20, 3), dtype=np.uint8)  # varied sizes and aspect
        name = f"img/p{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    captions = [f"picture number {i}" for i in range(n)]
    return folder, names, captions


def _write_table(path, columns: dict) -> None:
    n = len(next(iter(columns.values())))
    if path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(columns))
            writer.writerows(zip(*columns.values(), strict=True))
    elif path.suffix == ".jsonl":
        with open(path, "w") as handle:
            for i in range(n):
                handle.write(json.dumps({k: v[i] for k, v in columns.items()}) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_pairs_source_images_and_captions(tmp_path, suffix: str) -> None:
    from PIL import Image

    folder, names, captions = _image_folder(tmp_path)
    _write_table(
        folder / f"pairs{suffix}",
        {
            "image": names,
            "caption": captions,
            "label": [i % 2 for i in range(6)],
            "album": ["x", "x", "y", "y", "z", "z"],
            "depth": names[::-1],
            "slant": ["lo", "hi", "lo", "hi", "lo", "hi"],
            "score": [0.5, 1.5, 2.0, 3.25, 4.0, 5.0],
        },
    )
    cfg = {
        "source": "pairs",
        "table": str(folder / f"pairs{suffix}"),
        "column_a": "image",
        "column_b": "caption",
        "label_column": "label",
        "group_column": "album",
        "extra_columns": ["depth", "slant", "score"],
        "extra_types": {"slant": "label"},
        "image_size": [8, 10],
        "val_fraction": 0.0,
        "test_fraction": 0.34,
    }
    src = load_source(cfg)
    assert (src.kind_a, src.kind_b) == ("image", "text")
    assert src.b == captions and src.names == ("image", "caption")
    assert isinstance(src.a, ImageRows) and src.a.shape == (6, 3, 8, 10)
    assert src.a.dim() == src.a.ndim == 4 and src.a.dtype == torch.float32 and len(src.a) == 6
    images = src.a[torch.arange(6)]
    assert images.dtype == torch.float32 and float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # row 1 equals Pillow's own centre-crop resize of the file (scale the short side, crop the middle)
    with Image.open(folder / names[1]) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = max(10 / w, 8 / h)
        big = im.resize((max(10, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (big.size[0] - 10) // 2, (big.size[1] - 8) // 2
        ref = np.asarray(big.crop((left, top, left + 10, top + 8)), dtype=np.float32).transpose(2, 0, 1) / 255
    assert torch.allclose(images[1], torch.from_numpy(ref))
    assert src.labels.tolist() == [0, 1, 0, 1, 0, 1] and src.class_names is None
    assert src.groups.tolist() == [0, 0, 1, 1, 2, 2]
    assert src.extra_kinds == {"depth": "image", "slant": "label", "score": "number"}
    assert src.extras["slant"].tolist() == [1, 0, 1, 0, 1, 0]
    assert torch.allclose(src.extras["score"], torch.tensor([0.5, 1.5, 2.0, 3.25, 4.0, 5.0]))
    assert torch.equal(src.extras["depth"][torch.tensor([0])], images[5:6])
    assert len(src.splits["test"]) == 2 and len(src.splits["val"]) == 0
    assert len(set(src.groups[src.splits["test"]].tolist())) == 1  # one whole album


def test_pairs_source_grayscale_stretch_text_pairs_and_split_column(tmp_path) -> None:
    folder, names, captions = _image_folder(tmp_path)
    _write_table(
        folder / "t.csv",
        {
            "query": captions,
            "doc": [c.upper() for c in captions],
            "pic": names,
            "split": ["train"] * 4 + ["test"] * 2,
        },
    )
    src = load_source(
        {
            "source": "pairs",
            "table": "data/t.csv",
            "column_a": "query",
            "column_b": "doc",
            "split_column": "split",
        },
        base_dir=tmp_path,
    )
    assert (src.kind_a, src.kind_b) == ("text", "text") and src.a == captions
    assert src.splits["test"].tolist() == [4, 5]
    gray = load_source(
        {
            "source": "pairs",
            "table": str(folder / "t.csv"),
            "column_a": "pic",
            "column_b": "query",
            "image_mode": "L",
            "image_size": 5,
            "image_fit": "stretch",
        }
    )
    assert gray.a.shape == (6, 1, 5, 5)
    as_text = load_source(
        {
            "source": "pairs",
            "table": str(folder / "t.csv"),
            "column_a": "pic",
            "column_b": "query",
            "type_a": "text",
        }
    )
    assert as_text.kind_a == "text" and as_text.a == names


def test_pairs_source_bad_input(tmp_path) -> None:
    from PIL import Image

    folder, names, captions = _image_folder(tmp_path)
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(outside)
    (folder / "img" / "link.png").symlink_to(outside)
    (folder / "img" / "broken.png").write_bytes(b"not an image at all")

    def table(image_column: list, name: str = "t.csv", **more) -> str:
        _write_table(folder / name, {"image": image_column, "caption": captions[: len(image_column)], **more})
        return str(folder / name)

    def fails(match: str, **cfg) -> None:
        with pytest.raises(ValueError, match=match) as info:
            load_source({"source": "pairs", "column_a": "image", "column_b": "caption", **cfg})
        assert "\n" not in str(info.value)

    good = table(names, name="good.csv")
    fails(r"no column 'text' \(data.column_b\); columns: image, caption", table=good, column_b="text")
    fails(r"broken.png: unreadable image", table=table([*names[:5], "img/broken.png"]))
    fails(r"img/missing.png: image file does not exist", table=table([*names[:5], "img/missing.png"]))
    fails(r"'../secret.png' leads to .*secret.png, outside the image folder", table=table(["../secret.png"]))
    fails(r"'img/link.png' leads to .*secret.png, outside", table=table(["img/link.png"]))
    fails(r"'/.*secret.png' leads to", table=table([str(outside)]))
    fails("mixes image paths and other values", table=table([*names[:5], "hello"]))
    fails(
        "row 2 of column 'caption' is '', expected non-empty text",
        table=table(names[:3], caption=["a", "b", ""]),
    )
    (folder / "empty.csv").write_text("image,caption\n")
    fails("table has no rows", table=str(folder / "empty.csv"))
    (folder / "ragged.csv").write_text("image,caption\nimg/p0.jpg,a\nimg/p1.png\n")
    fails("line 3 has 1 cells but the header has 2 columns", table=str(folder / "ragged.csv"))
    (folder / "j.jsonl").write_text('{"image": "img/p0.jpg", "caption": "a"}\n{"image": "img/p1.png"}\n')
    fails("row 1 of column 'caption' is None", table=str(folder / "j.jsonl"))
    fails("data.type_a must be auto, text or image", table=good, type_a="audio")
    fails("data.image_size must be", table=good, image_size=[4])
    fails("data.image_mode must be", table=good, image_mode="CMYK")
    fails("no column 'nope' \\(data.label_column\\)", table=good, label_column="nope")
    fails("needs data.table", table=None)
    fails("unknown table extension", table=str(folder / "img" / "p0.jpg"))
    fails(r"row 1 has split 'later'", table=table(names[:2], split=["train", "later"]), split_column="split")
