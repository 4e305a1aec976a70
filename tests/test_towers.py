"""Tests of alignkit.towers: the tower contract, frozen embedding with its disk cache, the ViT, the
sentence-transformers / Hugging Face / user-module towers and build_tower. Tiny models only."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from alignkit.towers import base as towers_base
from alignkit.towers.base import (
    Tower,
    embed_frozen,
    embedding_cache_path,
    items_digest,
    num_rows,
    prepare_inputs,
    select_rows,
    state_digest,
)
from alignkit.towers.frozen import FrozenFeatures
from alignkit.towers.vit import ViT


class _Counting(Tower):
    """Linear tower that counts the rows it has embedded."""

    def __init__(self, d_in: int = 3, d_out: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.out_dim = d_out
        self.frozen = True
        self.rows_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_seen += x.shape[0]
        return self.linear(x)


# ------------------------------------------------------------------------------------------------
# base


def test_default_prepare_select_and_rows() -> None:
    tower = _Counting()
    x = prepare_inputs(tower, [[1, 2, 3], [4, 5, 6]])
    assert x.dtype == torch.float32 and x.shape == (2, 3)
    assert torch.equal(select_rows(tower, x, [1]), x[1:2])
    d = {"a": torch.arange(6).reshape(3, 2), "b": torch.arange(3)}
    picked = select_rows(tower, d, torch.tensor([2, 0]))
    assert picked["b"].tolist() == [2, 0] and picked["a"].tolist() == [[4, 5], [0, 1]]
    assert num_rows(d) == 3 and num_rows(x) == 2
    with pytest.raises(ValueError, match="same number of rows"):
        num_rows({"a": torch.zeros(2, 1), "b": torch.zeros(3)})
    with pytest.raises(ValueError, match="items"):
        prepare_inputs(tower, "not numbers")
    plain = nn.Linear(3, 2)  # a plain module: defaults apply
    assert torch.equal(select_rows(plain, x, slice(0, 1)), x[:1])


def test_embed_frozen_matches_forward_and_caches(tmp_path: Path) -> None:
    tower = _Counting()
    items = torch.randn(7, 3)
    out = embed_frozen(tower, items, batch_size=3, progress=False, cache_dir=tmp_path)
    with torch.no_grad():
        assert torch.allclose(out, tower.linear(items))
    assert out.dtype == torch.float32 and out.shape == (7, 2) and tower.rows_seen == 7
    files = list((tmp_path / "towers").iterdir())
    assert len(files) == 1
    again = embed_frozen(tower, items, batch_size=2, progress=False, cache_dir=tmp_path)
    assert tower.rows_seen == 7 and torch.equal(again, out)  # cache hit: the tower did not run
    # other items, or changed weights → a new key
    embed_frozen(tower, items[:5], batch_size=4, progress=False, cache_dir=tmp_path)
    assert tower.rows_seen == 12
    with torch.no_grad():
        tower.linear.weight.add_(1.0)
    changed = embed_frozen(tower, items, batch_size=7, progress=False, cache_dir=tmp_path)
    assert tower.rows_seen == 19 and not torch.allclose(changed, out)
    # an explicit cache_key replaces the tower identity
    a = embed_frozen(tower, items, progress=False, cache_dir=tmp_path, cache_key="k")
    with torch.no_grad():
        tower.linear.weight.add_(1.0)
    b = embed_frozen(tower, items, progress=False, cache_dir=tmp_path, cache_key="k")
    assert torch.equal(a, b)
    assert len(list((tmp_path / "towers").iterdir())) == 4


def test_embed_frozen_restores_mode_and_rewrites_corrupt_cache(tmp_path: Path) -> None:
    tower = _Counting()
    tower.train()
    items = torch.randn(4, 3)
    embed_frozen(tower, items, progress=False, cache_dir=tmp_path)
    assert tower.training
    path = embedding_cache_path(tower.cache_identity(), items, tmp_path)
    assert path.is_file()
    path.write_bytes(b"garbage")
    out = embed_frozen(tower, items, progress=False, cache_dir=tmp_path)
    assert tower.rows_seen == 8 and out.shape == (4, 2)
    assert path.stat().st_size > 7


def test_embed_frozen_cache_write_failure_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(towers_base, "save_embeddings", full_disk)
    monkeypatch.setattr(towers_base, "_WARNED_CACHE_WRITE", False)
    tower = _Counting()
    with pytest.warns(UserWarning, match="No space left"):
        out = embed_frozen(tower, torch.randn(3, 3), progress=False, cache_dir=tmp_path)
    assert out.shape == (3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embed_frozen(tower, torch.randn(3, 3), progress=False, cache_dir=tmp_path)


def test_embed_frozen_bad_input(tmp_path: Path) -> None:
    tower = _Counting()
    with pytest.raises(ValueError, match="batch_size"):
        embed_frozen(tower, torch.randn(2, 3), batch_size=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        embed_frozen(tower, [], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="out_dim"):
        embed_frozen(nn.Linear(3, 2), torch.randn(2, 3), cache_dir=tmp_path)
    bad = _Counting()
    bad.out_dim = 5
    with pytest.raises(ValueError, match=r"out_dim=5"):
        embed_frozen(bad, torch.randn(2, 3), cache=False)


def test_digests_are_sensitive() -> None:
    assert items_digest(["a", "b"]) != items_digest(["b", "a"])
    assert items_digest(torch.zeros(2, 2)) != items_digest(torch.zeros(4))
    assert items_digest(torch.zeros(2)) != items_digest(torch.zeros(2, dtype=torch.float64))
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    assert state_digest(a) != state_digest(b)
    b.load_state_dict(a.state_dict())
    assert state_digest(a) == state_digest(b)


def test_frozen_features_identity(tmp_path: Path) -> None:
    tower = FrozenFeatures(4)
    x = torch.randn(5, 4, dtype=torch.float16)
    prepared = tower.prepare(x)
    assert prepared.dtype == torch.float32 and torch.equal(tower(prepared), x.float())
    assert tower.frozen and tower.out_dim == 4 and not list(tower.parameters())
    out = embed_frozen(tower, x, batch_size=2, progress=False, cache_dir=tmp_path)
    assert torch.equal(out, x.float()) and not (tmp_path / "towers").exists()  # never cached
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        tower.prepare(torch.randn(5, 3))
    with pytest.raises(ValueError, match="out_dim"):
        FrozenFeatures(0)


# ------------------------------------------------------------------------------------------------
# ViT


@pytest.mark.parametrize("pooling", ["cls", "attention", "mean"])
def test_vit_shapes_and_gradient(pooling: str) -> None:
    vit = ViT(image_size=8, patch_size=2, width=16, depth=2, num_heads=2, pooling=pooling)
    x = torch.randn(3, 8, 8)
    out = vit(vit.prepare(x))
    assert out.shape == (3, 16) and vit.out_dim == 16 and not vit.frozen
    tokens = vit.forward_tokens(x.unsqueeze(1))
    assert tokens.shape == (3, 16, 16)
    (out.sum() + tokens.sum()).backward()
    missing = [n for n, p in vit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    if pooling == "mean":
        assert torch.allclose(out, tokens.mean(1), atol=1e-6)


def test_vit_rectangular_multichannel() -> None:
    vit = ViT(image_size=(8, 12), patch_size=(4, 3), in_channels=3, width=8, depth=1, num_heads=2)
    assert vit(torch.randn(2, 3, 8, 12)).shape == (2, 8)
    assert vit.forward_tokens(torch.randn(2, 3, 8, 12)).shape == (2, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, 3, 8, 12\)"):
        vit(torch.randn(2, 8, 12))


def test_vit_patch_tokens_see_their_patch() -> None:
    # with depth 1 and attention, every token depends on every patch; positions differ per token
    vit = ViT(image_size=4, patch_size=2, width=8, depth=1, num_heads=2, pooling="mean", seed=1)
    vit.eval()
    x = torch.zeros(1, 4, 4)
    base = vit.forward_tokens(x)
    assert not torch.allclose(base[0, 0], base[0, 1])  # learned positions distinguish tokens
    y = x.clone()
    y[0, :2, :2] = 1.0  # changes patch 0 only
    assert not torch.allclose(vit.forward_tokens(y), base)


def test_vit_seed_is_deterministic_and_leaves_global_rng() -> None:
    x = torch.randn(2, 1, 8, 8)
    state = torch.get_rng_state()
    a, b = ViT(width=16, num_heads=2, seed=3), ViT(width=16, num_heads=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    c = ViT(width=16, num_heads=2, seed=4)
    assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), c(x))
    torch.manual_seed(7)
    d = ViT(width=16, num_heads=2, pooling="attention")
    torch.manual_seed(7)
    e = ViT(width=16, num_heads=2, pooling="attention")
    assert torch.equal(d(x), e(x))


def test_vit_bad_config() -> None:
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViT(image_size=9, patch_size=2)
    with pytest.raises(ValueError, match="num_heads"):
        ViT(width=10, num_heads=4)
    with pytest.raises(ValueError, match="pooling"):
        ViT(pooling="max")
    with pytest.raises(ValueError, match="depth"):
        ViT(depth=0)
