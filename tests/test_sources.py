"""Data sources: group-safe splits, explicit split files, group-aware retrieval positives,
memory-mapped feature files, and tables of (text | image path) pairs — all on data the tests make."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import alignkit.functional as AF
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
