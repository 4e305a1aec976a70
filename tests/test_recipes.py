"""Tests of alignkit.recipes (configs, systems, run_recipe) and alignkit.recipes.evaluate.

The MiniLM caption embeddings come from the disk cache (``load_data`` is computed once per session; a
cold cache costs one MiniLM pass, ≈ 20-40 s). Every recipe run uses a small slice of the splits
(64 train rows, batch 32, 1 epoch) so that each takes a few seconds. Expected values (recall, zero-shot
accuracy, ink profiles) are recomputed here with plain loops from the saved tensors, never by calling
the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignkit.recipes import (
    RECIPES,
    RecipeData,
    RecipeSystem,
    build_system,
    config_keys,
    default_config,
    ink_profiles,
    load_config,
    load_data,
    parse_overrides,
    run_recipe,
    validate_config,
)
from alignkit.recipes.config import INPUT_KEYS
from alignkit.recipes.evaluate import EMBEDDING_KEYS, METRIC_KEYS, evaluate_split, write_evaluation
from alignkit.train import read_metrics

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FAST = [
    "train.epochs=1",
    "data.train_subset=64",
    "train.batch_size=32",
    "train.log_every=1",
]


@pytest.fixture(scope="session")
def full_data() -> RecipeData:
    return load_data()


@pytest.fixture(scope="session")
def small(full_data: RecipeData) -> RecipeData:
    """The same data with the val and test splits cut to 40 and 60 rows (train is cut by the config)."""
    d = full_data
    splits = {"train": d.splits["train"], "val": d.splits["val"][:40], "test": d.splits["test"][:60]}
    return dataclasses.replace(d, splits=splits)


def fast_config(recipe: str, *extra: str) -> dict:
    overrides = [f"recipe={recipe}", *FAST, *extra]
    if recipe == "disentangled":
        overrides.append("train.probe_iterations=20")
    return load_config(None, overrides)


# ------------------------------------------------------------------------------------------------ data


def test_data_shapes_and_splits(full_data: RecipeData) -> None:
    d = full_data
    n = len(d.captions)
    assert n == 1797
    assert d.images.shape == (n, 8, 8) and d.images.dtype == torch.float32
    assert d.text.shape == (n, 384)
    torch.testing.assert_close(d.text.norm(dim=1), torch.ones(n), atol=1e-4, rtol=0)
    assert d.prompts.shape[0] == 10 and d.prompts.shape[2] == 384
    assert d.profiles.shape == (n, 16)
    parts = torch.cat([d.splits[s] for s in ("train", "val", "test")]).sort().values
    assert torch.equal(parts, torch.arange(n))
    assert set(d.attributes) >= {"slant", "ink"}
    assert int(d.attributes["slant"].max()) == 2 and int(d.attributes["slant"].min()) == 0


def test_recipe_system_is_abstract() -> None:
    """A recipe must define training_step and the three encoders; the base alone cannot be built."""
    with pytest.raises(TypeError, match="encode_image, encode_text, image_features, training_step"):
        RecipeSystem()


def test_ink_profiles_match_loops() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 8, 8, generator=g)
    got = ink_profiles(images)
    for n in range(3):
        for r in range(8):
            assert math.isclose(
                float(got[n, r]), sum(float(images[n, r, c]) for c in range(8)) / 8, rel_tol=1e-5
            )
        for c in range(8):
            expected = sum(float(images[n, r, c]) for r in range(8)) / 8
            assert math.isclose(float(got[n, 8 + c]), expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="images"):
        ink_profiles(torch.rand(3, 64))


# --------------------------------------------------------------------------------------------- configs


def _flat(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_config_file_loads_and_matches_the_defaults() -> None:
    files = sorted(CONFIGS.glob("*.yaml"))
    assert sorted(f.stem for f in files) == sorted(RECIPES)
    for file in files:
        config = load_config(file)
        assert config["recipe"] == file.stem
        # the files document the defaults: a drift between the two is a bug
        assert config == default_config(file.stem)
        assert validate_config(config) == config
        raw = yaml.safe_load(file.read_text())
        listed = {k: v for k, v in _flat(config).items() if k not in INPUT_KEYS}
        assert _flat(raw) == listed, f"{file} must list every key except the data-source / tower keys"


@pytest.mark.parametrize("recipe", RECIPES)
def test_config_keys_cover_the_resolved_config(recipe: str) -> None:
    keys = config_keys(recipe)

    def flat(tree: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for k, v in tree.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert set(keys) == flat(default_config(recipe))
    assert "one of 'mlp', 'cnn'" in keys["model.image_tower"]


def test_unknown_key_names_the_key_and_the_allowed_keys() -> None:
    with pytest.raises(
        ValueError, match=r"'model\.embedd_dim'.*did you mean 'model\.embed_dim'.*allowed keys:"
    ):
        validate_config({"model": {"embedd_dim": 32}})
    # a key of another recipe is unknown for this one
    with pytest.raises(ValueError, match=r"unknown config key 'loss\.supcon_weight' for recipe 'clip'"):
        validate_config({"recipe": "clip", "loss": {"supcon_weight": 1.0}})
    with pytest.raises(
        ValueError, match=r"'recipe' must be one of 'clip', 'byol', 'supcon', 'joint', 'binder'"
    ):
        validate_config({"recipe": "dino"})
    with pytest.raises(ValueError, match="empty section"):
        validate_config({"model": {}})


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.epochs=0", r"'train\.epochs' must be an integer ≥ 1 and ≤ 100000 \(epochs\), got 0"),
        ("train.epochs=2.5", r"'train\.epochs' must be an integer ≥ 1 and ≤ 100000 \(epochs\), got 2\.5"),
        ("train.epochs=many", r"'train\.epochs' must be an integer ≥ 1 and ≤ 100000 \(epochs\), got 'many'"),
        ("train.lr=0", r"'train\.lr' must be a number > 0 and ≤ 10 \(learning rate\), got 0"),
        ("train.lr=nan", r"'train\.lr' must be a number > 0"),
        ("model.image_tower=resnet", r"'model\.image_tower' must be one of 'mlp', 'cnn', 'vit', got 'res"),
        ("model.learn_temperature=3", r"'model\.learn_temperature' must be true or false, got 3"),
        ("model.dropout=1.5", r"'model\.dropout' must be a number ≥ 0 and ≤ 0\.95, got 1\.5"),
        ("train.device=tpu", r"'train\.device' must be one of 'auto', 'cpu', 'cuda'"),
        ("model.embed_dim=null", r"'model\.embed_dim' must be an integer ≥ 1 and ≤ 65536 \(\w+\), got None"),
        ("train.epochs=true", r"'train\.epochs' must be an integer ≥ 1 and ≤ 100000 \(epochs\), got True"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(override: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_config(None, [override])


def test_cross_key_checks() -> None:
    with pytest.raises(ValueError, match=r"'train\.batch_size' must be ≤ data\.train_subset = 16"):
        load_config(None, ["data.train_subset=16", "train.batch_size=32"])
    with pytest.raises(ValueError, match="at least one must be > 0"):
        load_config(
            None,
            ["recipe=joint", "loss.clip_weight=0", "loss.soft_nn_kl_weight=0", "loss.structure_weight=0"],
        )
    with pytest.raises(ValueError, match="one must be > 0"):
        load_config(None, ["recipe=supcon", "loss.clip_weight=0", "loss.supcon_weight=0"])


def test_overrides_parse_types() -> None:
    raw = parse_overrides(
        ["train.epochs=3", "train.lr=1e-3", "model.learn_temperature=false", "data.train_subset=null"]
    )
    assert raw == {
        "train": {"epochs": 3, "lr": "1e-3"},  # YAML 1.1 reads 1e-3 as text; the schema converts it
        "model": {"learn_temperature": False},
        "data": {"train_subset": None},
    }
    config = load_config(
        None,
        [
            "train.epochs=3",
            "train.lr=1e-3",
            "model.learn_temperature=false",
            "model.projection=mlp",
            "train.grad_clip=1",
            "model.init_temperature=0.05",
        ],
    )
    assert config["train"]["epochs"] == 3 and type(config["train"]["epochs"]) is int
    assert config["train"]["lr"] == 0.001 and type(config["train"]["lr"]) is float
    assert config["model"]["learn_temperature"] is False
    assert config["model"]["projection"] == "mlp"
    assert config["train"]["grad_clip"] == 1.0 and type(config["train"]["grad_clip"]) is float
    # later overrides win; the recipe override switches the schema
    assert load_config(None, ["train.epochs=3", "train.epochs=5"])["train"]["epochs"] == 5
    assert load_config(None, ["recipe=byol"])["model"]["tau_base"] == 0.99
    for bad in ("train.epochs", "=3", "train..epochs=3", "train.epochs={a: 1}"):
        with pytest.raises(ValueError, match="override"):
            parse_overrides([bad])


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml is not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(bad)
    partial = tmp_path / "partial.yaml"
    partial.write_text("recipe: supcon\ntrain:\n  epochs: 7\n")
    config = load_config(partial, ["loss.variant=in"])
    assert config["train"]["epochs"] == 7 and config["loss"]["variant"] == "in"
    assert config["model"]["embed_dim"] == default_config("supcon")["model"]["embed_dim"]


# -------------------------------------------------------------------------------------- running recipes


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# the generative repa recipe reports FD instead of retrieval: tests/test_sit_recipe.py
@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "repa"])
def test_each_recipe_trains_one_epoch_and_evaluates(recipe: str, small: RecipeData, tmp_path: Path) -> None:
    config = fast_config(recipe)
    metrics = run_recipe(config, tmp_path, data=small, progress=False)
    for key in METRIC_KEYS:
        assert _finite_number(metrics[key]), (key, metrics[key])
    assert metrics["recipe"] == recipe and metrics["epochs"] == 1 and metrics["seconds"] > 0
    assert 0.0 <= metrics["zero_shot_accuracy"] <= 1.0
    assert 1.0 <= metrics["median_rank"] <= 60.0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics  # floats round-trip exactly through JSON
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config
    records = read_metrics(tmp_path / "metrics.jsonl")
    epochs = [r for r in records if r.get("type") == "epoch"]
    steps = [r for r in records if r.get("type") == "step"]
    assert len(epochs) == 1 and len(steps) == 64 // 32
    assert _finite_number(epochs[0]["val_loss"]) and 0.0 <= epochs[0]["val_recall@1"] <= 1.0
    assert epochs[0]["monitor"] == "val_loss"
    assert (tmp_path / "checkpoints" / "last.json").is_file()
    assert (tmp_path / "checkpoints" / "best.json").is_file()
    if recipe == "binder":
        for key in ("text_to_profile_recall@1", "profile_to_text_recall@10", "image_to_profile_recall@5"):
            assert 0.0 <= metrics[key] <= 1.0
    if recipe == "disentangled":
        assert {"probe_digit_from_digit", "probe_slant_from_digit", "probe_slant_from_slant"} <= set(metrics)


def test_evaluation_files_follow_the_contract(small: RecipeData, tmp_path: Path) -> None:
    config = fast_config("clip", "train.epochs=2", "model.embed_dim=24", "model.image_width=48")
    metrics = run_recipe(config, tmp_path, data=small, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(METRIC_KEYS) | {"recipe", "seconds", "epochs"} <= set(saved)
    assert all(_finite_number(saved[k]) for k in (*METRIC_KEYS, "seconds"))
    tensors = load_file(str(tmp_path / "embeddings_test.safetensors"))
    assert set(tensors) == set(EMBEDDING_KEYS)
    rows = small.splits["test"]
    n = len(rows)
    image, text, labels, classes = tensors["image"], tensors["text"], tensors["labels"], tensors["class_text"]
    assert image.shape == (n, 24) and text.shape == (n, 24) and classes.shape == (10, 24)
    assert labels.dtype == torch.int64 and torch.equal(labels, small.labels[rows])
    assert tensors["image_tower"].shape == (n, 48)
    torch.testing.assert_close(tensors["text_tower"], small.text[rows])
    for t in (image, text, classes):
        torch.testing.assert_close(t.norm(dim=1), torch.ones(len(t)), atol=1e-5, rtol=0)
    # zero-shot accuracy and image→text recall recomputed with loops from the saved tensors
    correct = 0
    for i in range(n):
        scores = [float(image[i] @ classes[c]) for c in range(10)]
        correct += int(max(range(10), key=scores.__getitem__) == int(labels[i]))
    assert saved["zero_shot_accuracy"] == pytest.approx(correct / n, abs=1e-6)
    ranks = []
    for i in range(n):
        own = float(image[i] @ text[i])
        ranks.append(sum(1 for j in range(n) if float(image[i] @ text[j]) >= own - 1e-7))
    for k in (1, 5, 10):
        assert saved[f"i2t_recall@{k}"] == pytest.approx(sum(r <= k for r in ranks) / n, abs=1e-6)
    ordered = sorted(ranks)
    assert saved["median_rank"] == pytest.approx((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)
    alignment = sum(float((image[i] - text[i]).pow(2).sum()) for i in range(n)) / n
    assert saved["alignment"] == pytest.approx(alignment, rel=1e-4)
    assert metrics["i2t_recall@1"] == saved["i2t_recall@1"]


def test_write_evaluation_is_complete_and_nan_safe(tmp_path: Path) -> None:
    tensors = {k: torch.zeros(3, 2) for k in EMBEDDING_KEYS}
    json_path, emb_path = write_evaluation(tmp_path, {"cka_linear": float("nan"), "recipe": "clip"}, tensors)
    assert json.loads(json_path.read_text()) == {"cka_linear": None, "recipe": "clip"}
    assert set(load_file(str(emb_path))) == set(EMBEDDING_KEYS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    with pytest.raises(ValueError, match="missing"):
        write_evaluation(tmp_path, {}, {"image": torch.zeros(3, 2)})


def test_runs_are_deterministic(small: RecipeData, tmp_path: Path) -> None:
    config = fast_config("clip", "train.epochs=2")
    first = run_recipe(config, tmp_path / "a", data=small, progress=False)
    second = run_recipe(config, tmp_path / "b", data=small, progress=False)
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["type"] == "step"]
    losses_b = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if r["type"] == "step"]
    assert losses_a == losses_b and len(losses_a) == 4
    drop = ("seconds",)
    assert {k: v for k, v in first.items() if k not in drop} == {
        k: v for k, v in second.items() if k not in drop
    }
    # a different seed gives a different run
    other = run_recipe(
        fast_config("clip", "train.epochs=2", "seed=1"), tmp_path / "c", data=small, progress=False
    )
    losses_c = [r["loss"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl") if r["type"] == "step"]
    assert losses_c != losses_a and other["recipe"] == "clip"


def test_binder_never_pairs_captions_with_profiles(small: RecipeData) -> None:
    config = fast_config("binder")
    system = build_system(config, small)
    rows = small.splits["train"][:64]
    images, text, profiles, kind = system.batch(small, rows)
    assert int((kind == 0).sum()) == 32 and int((kind == 1).sum()) == 32
    seen: list[set[str]] = []
    original = system.model.forward

    def spy(batch, masks=None):  # type: ignore[no-untyped-def]
        seen.append(set(batch))
        return original(batch, masks)

    system.model.forward = spy  # type: ignore[method-assign]
    out = system.training_step([images, text, profiles, kind])
    assert seen == [{"image", "text"}, {"image", "profile"}]
    assert {"loss", "loss_text", "loss_profile"} <= set(out)
    seen.clear()
    out = system.training_step([images, text, profiles, torch.zeros_like(kind)])
    assert seen == [{"image", "text"}] and "loss_profile" not in out


def test_dual_encoder_zero_shot_uses_the_prompt_ensemble(small: RecipeData) -> None:
    system = build_system(fast_config("clip"), small)
    system.eval()
    classes = system.class_embeddings(small.prompts)
    # reference: normalise each projected prompt, average per class, renormalise (CLIP prompt ensembling)
    with torch.no_grad():
        for c in range(10):
            rows = [system.model.proj_b(small.prompts[c, k]) for k in range(small.prompts.shape[1])]
            mean = sum(r / r.norm() for r in rows) / len(rows)
            torch.testing.assert_close(classes[c], mean / mean.norm(), atol=1e-5, rtol=1e-5)


def test_evaluate_split_rejects_bad_splits(small: RecipeData) -> None:
    system = build_system(fast_config("clip"), small)
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate_split(system, small, "holdout")
