"""Configs are bounded: YAML bombs refused, every numeric key capped with its unit, overrides that make a
key both a section and a value refused — each a one-line ValueError, before anything is allocated."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.recipes.config import RECIPES, _schema, load_config


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["train.epochs=1e29"], r"'train\.epochs' must be an integer ≥ 1 and ≤ 100000 \(epochs\)"),
        (["train.epochs=1.0e+29"], r"'train\.epochs' .*≤ 100000 \(epochs\), got 1e\+29"),
        (["model.embed_dim=1e8"], r"'model\.embed_dim' .*≤ 65536 \(dimensions\)"),
        (["model.image_width=100000000"], r"'model\.image_width' .*≤ 65536 \(features\)"),
        (["train.batch_size=1e30"], r"'train\.batch_size' .*≤ 1073741824 \(samples\)"),
        (["seed=1e10"], r"'seed' must be an integer ≥ 0 and ≤ 4294967295 \(seed\)"),
        (["train=3", "train.epochs=2"], r"'train' is a section .*cannot also be set"),
        (["train.epochs=2", "train=3"], r"'train' is a section .*cannot also be set"),
        (["model.embed_dim.x=2"], r"'model\.embed_dim' is a section|unknown config key"),
    ],
)
def test_overrides_are_bounded(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_every_numeric_key_has_an_upper_bound_with_its_unit() -> None:
    for recipe in RECIPES:
        for key, field in _schema(recipe).items():
            if field.kind in ("int", "float"):
                assert field.high is not None, f"{recipe}: {key} has no upper bound"
                assert field.unit or field.high <= 1.0, f"{recipe}: {key} names no unit"
            if field.kind == "int":  # integer bounds printed in full, never as 1.07374e+09
                assert f"≤ {int(field.high)}" in field.allowed() and "e+" not in field.allowed(), key


def test_itm_top_k_bound_is_printed_as_an_integer() -> None:
    with pytest.raises(ValueError, match=r"'loss\.itm_top_k' .*≤ 1073741824 \(candidates\), got 2000000000$"):
        load_config(None, ["recipe=itm", "loss.itm_top_k=2000000000"])


def test_yaml_bombs_in_config_files(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\ntrain: {epochs: *a8}\n")  # 10^9 leaves when expanded
    with pytest.raises(ValueError, match=r"bomb\.yaml is not valid YAML: .*anchors and aliases"):
        load_config(bomb)
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("train: &t {epochs: *t}\n")
    with pytest.raises(ValueError, match=r"recursive\.yaml is not valid YAML"):
        load_config(recursive)
    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "{a: " * 200 + "1" + "}" * 200 + "\n")
    with pytest.raises(ValueError, match=r"nested deeper than"):
        load_config(deep)
    big = tmp_path / "epochs.yaml"
    big.write_text("train:\n  epochs: 1e29\n")
    with pytest.raises(ValueError, match=r"≤ 100000 \(epochs\)"):
        load_config(big)
