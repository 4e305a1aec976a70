"""The config schema of every recipe: validated YAML plus ``KEY=VALUE`` overrides.

    from alignkit.recipes import load_config
    config = load_config("configs/clip.yaml", ["train.epochs=3", "model.embed_dim=64"])

Configs are nested mappings (YAML); every key is listed in :func:`config_keys` with its type, its
allowed values and its default, and anything else — an unknown key, a wrong type, a value out of
range — raises ``ValueError`` naming the dotted key and what is allowed. ``key=value`` overrides use
the same dotted keys (``train.epochs=3``) and are parsed by the key's type.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from alignkit.io import atomic_write, load_yaml_bounded

__all__ = [
    "ATTRIBUTES",
    "INPUT_KEYS",
    "RECIPES",
    "config_keys",
    "default_config",
    "load_config",
    "parse_overrides",
    "validate_config",
    "write_config",
]

RECIPES = ("clip", "byol", "supcon", "joint", "binder", "disentangled", "repa", "itm")
ATTRIBUTES = ("slant", "ink", "thickness", "height", "width", "vertical", "horizontal")
IMAGE_TOWERS = ("mlp", "cnn", "vit")
PROJECTIONS = ("linear", "mlp")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class _Field:
    """One config key: ``kind`` in int | float | bool | str | choice, bounds, choices, default."""

    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    open_low: bool = False
    doc: str = ""
    unit: str = ""

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"

            def bound(v: float) -> str:  # an integer bound in full (1073741824, not 1.07374e+09)
                return str(int(v)) if self.kind == "int" else f"{v:g}"

            parts = []
            if self.low is not None:
                parts.append(f"{'>' if self.open_low else '≥'} {bound(self.low)}")
            if self.high is not None:
                parts.append(f"≤ {bound(self.high)}")
            text = noun + (" " + " and ".join(parts) if parts else "")
            text += f" ({self.unit})" if self.unit else ""
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "value":
            text = self.doc or "a value"
        else:
            text = "a non-empty string"
        return text + (" or null" if self.nullable else "")

    def coerce(self, key: str, value: Any) -> Any:
        """``value`` checked (and converted: ``"1e-3"`` → 0.001) or a ValueError naming ``key``."""
        bad = ValueError(f"config key {key!r} must be {self.allowed()}, got {value!r}")
        if value is None:
            if self.nullable:
                return None
            raise bad
        if self.kind == "choice":
            if value not in self.choices or isinstance(value, bool) != isinstance(self.choices[0], bool):
                raise bad
            return value
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise bad
        if self.kind == "value":  # a list / mapping / scalar checked where it is used (data sources)
            if isinstance(value, (str, int, float, list, dict)) and not isinstance(value, bool):
                return value
            raise bad
        if self.kind == "str":
            if isinstance(value, str) and value:
                return value
            raise bad
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value) if self.kind == "float" else int(value)
            except ValueError:
                raise bad from None
        if self.kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, (int, np.integer)):
                raise bad
            value = int(value)
        else:
            if not isinstance(value, (int, float, np.integer, np.floating)):
                raise bad
            value = float(value)
            if not math.isfinite(value):
                raise bad
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        return value


# Upper bounds: every numeric key has one, checked before anything is allocated (a width of 1e8
# or 1e29 epochs is refused with the unit named, not attempted).
MAX_WIDTH = 65536  # features: widths, hidden and embedding dimensions
MAX_EPOCHS = 100_000
MAX_ROWS = 1 << 30  # samples: batch size, training subset
MAX_SEED = 2**32 - 1  # numpy's seed range


def _int(
    default: int | None,
    low: int = 0,
    high: int | None = None,
    nullable: bool = False,
    unit: str = "",
) -> _Field:
    return _Field("int", default, low=low, high=high, nullable=nullable, unit=unit)


def _float(
    default: float | None,
    low: float | None = 0.0,
    high: float | None = None,
    open_low: bool = False,
    nullable: bool = False,
    unit: str = "",
) -> _Field:
    return _Field("float", default, low=low, high=high, open_low=open_low, nullable=nullable, unit=unit)


def _choice(default: Any, choices: Sequence[Any]) -> _Field:
    return _Field("choice", default, choices=tuple(choices))


def _str_field(default: str | None, nullable: bool = True) -> _Field:
    return _Field("str", default, nullable=nullable)


def _value(default: Any, doc: str) -> _Field:
    return _Field("value", default, nullable=True, doc=doc)


SOURCES = ("digits", "embeddings", "pairs")
TOWERS = ("auto", "mlp", "cnn", "vit", "frozen", "sentence-transformers", "hf", "import")
POOLINGS = ("cls", "mean", "attention")

#: Keys whose values are lists or mappings (not descended into when a config is flattened).
VALUE_KEYS = frozenset(
    {"data.extras", "data.extra_columns", "data.extra_types", "data.class_names", "data.prompts",
     "data.image_size", "model.tower_a_kwargs", "model.tower_b_kwargs"}
)

#: Where the pairs come from (:mod:`alignkit.data.sources`); ``digits`` ignores all but ``data.seed``,
#: ``data.text_model`` and ``data.train_subset``.
_SOURCE_FIELDS: dict[str, _Field] = {
    "data.source": _choice("digits", SOURCES),
    "data.a": _str_field(None),
    "data.b": _str_field(None),
    "data.key_a": _str_field(None),
    "data.key_b": _str_field(None),
    "data.labels": _str_field(None),
    "data.labels_key": _str_field(None),
    "data.groups": _str_field(None),
    "data.groups_key": _str_field(None),
    "data.extras": _value(None, "a mapping name → path of further (N, d) feature files"),
    "data.table": _str_field(None),
    "data.column_a": _str_field(None),
    "data.column_b": _str_field(None),
    "data.type_a": _choice("auto", ("auto", "text", "image")),
    "data.type_b": _choice("auto", ("auto", "text", "image")),
    "data.label_column": _str_field(None),
    "data.group_column": _str_field(None),
    "data.extra_columns": _value(None, "a list of further column names"),
    "data.extra_types": _value(None, "a mapping column → text | image | label | number"),
    "data.image_root": _str_field(None),
    "data.image_size": _value(32, "an integer or [height, width]"),
    "data.image_mode": _choice("L", ("L", "RGB")),
    "data.image_fit": _choice("crop", ("crop", "stretch")),
    "data.class_names": _value(None, "a list of class names or a .txt path (one per line)"),
    "data.prompts": _value(None, "a prompt template with {} for the class name, or a list of them"),
    "data.val_fraction": _float(0.1, high=0.9),
    "data.test_fraction": _float(0.2, high=0.9),
    "data.split_file": _str_field(None),
    "data.split_column": _str_field(None),
}


def _tower_fields(side: str) -> dict[str, _Field]:
    """``model.tower_<side>`` and its options: which encoder turns side ``a`` / ``b`` into features."""
    return {
        f"model.tower_{side}": _choice("auto", TOWERS),
        f"model.tower_{side}_path": _str_field(None),
        f"model.tower_{side}_pooling": _choice("mean", POOLINGS),
        f"model.tower_{side}_finetune": _Field("bool", False),
        f"model.tower_{side}_kwargs": _value(None, "a mapping of keyword arguments for an import tower"),
    }


_COMMON: dict[str, _Field] = {
    "recipe": _choice("clip", RECIPES),
    "seed": _int(0, high=MAX_SEED, unit="seed"),
    "data.seed": _int(0, high=MAX_SEED, unit="seed"),
    "data.train_subset": _int(None, low=2, high=MAX_ROWS, nullable=True, unit="samples"),
    "data.text_model": _Field("str", "all-MiniLM-L6-v2"),
    **_SOURCE_FIELDS,
    **_tower_fields("a"),
    **_tower_fields("b"),
    "model.image_tower": _choice("mlp", IMAGE_TOWERS),
    "model.image_width": _int(256, low=1, high=MAX_WIDTH, unit="features"),
    "model.dropout": _float(0.1, high=0.95),
    "model.embed_dim": _int(64, low=1, high=MAX_WIDTH, unit="dimensions"),
    "train.epochs": _int(40, low=1, high=MAX_EPOCHS, unit="epochs"),
    "train.batch_size": _int(128, low=2, high=MAX_ROWS, unit="samples"),
    "train.lr": _float(3e-3, open_low=True, high=10.0, unit="learning rate"),
    "train.weight_decay": _float(1e-4, high=10.0, unit="weight decay"),
    "train.warmup_fraction": _float(0.05, high=1.0),
    "train.min_lr_ratio": _float(0.0, high=1.0),
    "train.grad_clip": _float(None, open_low=True, high=1e6, nullable=True, unit="gradient norm"),
    "train.log_every": _int(5, low=1, high=10**9, unit="steps"),
    "train.device": _choice("auto", DEVICES),
    "train.evaluate_checkpoint": _choice("best", CHECKPOINTS),
    "train.threads": _int(1, low=1, high=4096, nullable=True, unit="threads"),
    "train.null_permutations": _int(50, high=10000, unit="permutations"),
    "train.bootstrap": _int(0, high=100000, unit="resamples"),
}

#: The keys that say where the data and the encoders come from (``data.source``, ``model.tower_a`` …):
#: the recipe files under ``configs/`` leave them at their defaults and do not list them.
INPUT_KEYS = frozenset([*_SOURCE_FIELDS, *_tower_fields("a"), *_tower_fields("b")])

_PROJECTION = {"model.projection": _choice("linear", PROJECTIONS)}
_CLIP_TEMPERATURE = {
    "model.init_temperature": _float(0.07, open_low=True, high=100.0, unit="temperature"),
    "model.learn_temperature": _Field("bool", True),
}

_RECIPE_FIELDS: dict[str, dict[str, _Field]] = {
    "clip": {
        **_PROJECTION,
        **_CLIP_TEMPERATURE,
        "loss.contrastive": _choice("clip", ("clip", "siglip")),
    },
    "byol": {
        "model.text_width": _int(256, low=1, high=MAX_WIDTH, unit="features"),
        "model.hidden_dim": _int(512, low=1, high=MAX_WIDTH, unit="features"),
        "model.tau_base": _float(0.99, high=1.0),
    },
    "supcon": {
        **_PROJECTION,
        **_CLIP_TEMPERATURE,
        "loss.clip_weight": _float(1.0, high=1e6, unit="loss weight"),
        "loss.supcon_weight": _float(1.0, high=1e6, unit="loss weight"),
        "loss.temperature": _float(0.1, open_low=True, high=100.0, unit="temperature"),
        "loss.variant": _choice("out", ("out", "in")),
    },
    "joint": {
        **_PROJECTION,
        **_CLIP_TEMPERATURE,
        "loss.clip_weight": _float(1.0, high=1e6, unit="loss weight"),
        "loss.soft_nn_kl_weight": _float(1.0, high=1e6, unit="loss weight"),
        "loss.structure_weight": _float(1.0, high=1e6, unit="loss weight"),
        "loss.temperature": _float(0.1, open_low=True, high=100.0, unit="temperature"),
    },
    "binder": {
        **_PROJECTION,
        "model.profile_width": _int(128, low=1, high=MAX_WIDTH, unit="features"),
        "loss.temperature": _float(0.07, open_low=True, high=100.0, unit="temperature"),
    },
    "disentangled": {
        "data.attribute": _Field("str", "slant"),
        "data.noise": _float(0.1, high=100.0, unit="noise scale"),
        "model.subspace_dim": _int(32, low=1, high=MAX_WIDTH, unit="dimensions"),
        "model.hidden_dim": _int(None, low=1, high=MAX_WIDTH, nullable=True, unit="features"),
        "model.init_temperature": _float(0.07, open_low=True, high=100.0, unit="temperature"),
        "loss.temperature": _float(0.1, open_low=True, high=100.0, unit="temperature"),
        "loss.independence": _choice("correlation", ("correlation", "cka")),
        "loss.independence_weight": _float(1.0, high=1e6, unit="loss weight"),
        "loss.clip_weight": _float(1.0, high=1e6, unit="loss weight"),
        "train.probe_iterations": _int(300, low=1, high=10**6, unit="iterations"),
    },
    "repa": {  # a small SiT on the digits with REPA (alignkit.recipes.systems.repa)
        "model.width": _int(64, low=4, high=MAX_WIDTH, unit="features"),
        "model.depth": _int(4, low=1, high=64, unit="blocks"),
        "model.num_heads": _int(4, low=1, high=256, unit="heads"),
        "model.patch_size": _int(2, low=1, high=8, unit="pixels"),
        "model.class_dropout": _float(0.1, high=0.95),
        "model.projector_dim": _int(256, low=1, high=MAX_WIDTH, nullable=True, unit="features"),
        "model.target_encoder": _Field("str", "simclr"),
        "model.target_epochs": _int(60, low=1, high=MAX_EPOCHS, unit="epochs"),
        "model.sampler": _choice("heun", ("euler", "heun")),
        "model.sample_steps": _int(5, low=1, high=10000, unit="ODE steps"),
        "model.cfg_scale": _float(1.0, high=100.0, unit="guidance scale"),
        "loss.repa_weight": _float(0.5, high=1000.0, unit="loss weight"),
        "loss.repa_depth": _int(2, low=1, high=64, unit="blocks"),
    },
    "itm": {  # CLIP + image-text matching through CoAttention, re-ranking (alignkit.recipes.systems.itm)
        **_PROJECTION,
        **_CLIP_TEMPERATURE,
        "model.vit_depth": _int(2, low=1, high=64, unit="blocks"),
        "model.fusion_layers": _int(1, low=1, high=64, unit="blocks"),
        "model.fusion_heads": _int(4, low=1, high=256, unit="heads"),
        "loss.itm_weight": _float(1.0, high=1e6, unit="loss weight"),
        "loss.itm_negative_temperature": _float(
            None, open_low=True, high=100.0, nullable=True, unit="temperature"
        ),
        "loss.itm_top_k": _int(16, low=1, high=MAX_ROWS, unit="candidates"),
    },
}

# Per-recipe defaults that differ from the field defaults above.
_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {},
    "byol": {"train.lr": 2e-3, "train.epochs": 60},
    "supcon": {},
    "joint": {},
    "binder": {"train.epochs": 60},
    "disentangled": {},
    "repa": {"train.epochs": 30, "train.lr": 1e-3, "train.batch_size": 64, "train.weight_decay": 0.0},
    "itm": {
        "model.image_tower": "vit",
        "model.image_width": 64,
        "model.dropout": 0.0,
        "train.epochs": 30,
        "loss.itm_negative_temperature": 0.3,
    },
}


def _schema(recipe: str) -> dict[str, _Field]:
    if recipe not in RECIPES:
        raise ValueError(
            f"config key 'recipe' must be one of {', '.join(map(repr, RECIPES))}, got {recipe!r}"
        )
    return {**_COMMON, **_RECIPE_FIELDS[recipe]}


def config_keys(recipe: str = "clip") -> dict[str, str]:
    """Every dotted config key of ``recipe`` → ``"<allowed values> (default <d>)"``, sorted."""
    schema = _schema(recipe)
    defaults = _flatten(default_config(recipe))
    return {k: f"{schema[k].allowed()} (default {defaults[k]!r})" for k in sorted(schema)}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"config keys must be non-empty strings, got {key!r} under {prefix or 'the top'}"
            )
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in VALUE_KEYS:
            if not value:
                raise ValueError(f"config key {dotted!r} is an empty section")
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # e.g. overrides train=3 train.epochs=2
                section = ".".join(parents[: depth + 1])
                raise ValueError(
                    f"config key {section!r} is a section (it holds {dotted!r}), it cannot also be set to a "
                    f"value ({node!r})"
                )
        if isinstance(node.get(leaf), dict):
            raise ValueError(
                f"config key {dotted!r} is a section (it holds {sorted(node[leaf])}), it cannot also be set "
                f"to a value ({value!r})"
            )
        node[leaf] = value
    return tree


def default_config(recipe: str = "clip") -> dict[str, Any]:
    """The complete default config of ``recipe`` as a nested dict (what ``configs/<recipe>.yaml`` holds)."""
    schema = _schema(recipe)
    flat = {k: f.default for k, f in schema.items()}
    flat.update(_RECIPE_DEFAULTS[recipe])
    flat["recipe"] = recipe
    return _unflatten(flat)


def _close(key: str, allowed: Sequence[str]) -> str:
    import difflib

    near = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a (partial) nested config and fill in the defaults of its recipe.

    ``config["recipe"]`` picks the recipe (default ``"clip"``). Every other key must be one of
    :func:`config_keys` for that recipe and hold an allowed value.

    Returns:
        The complete resolved config (a new nested dict).

    Raises:
        ValueError: naming the dotted key and the allowed keys or values.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a config must be a mapping of sections, got {type(config).__name__}")
    flat = _flatten(config)
    recipe = flat.get("recipe", "clip")
    schema = _schema(recipe)
    resolved = _flatten(default_config(recipe))
    for key, value in flat.items():
        if key not in schema:
            raise ValueError(
                f"unknown config key {key!r} for recipe {recipe!r}{_close(key, list(schema))}; "
                f"allowed keys: {', '.join(sorted(schema))}"
            )
        resolved[key] = schema[key].coerce(key, value)
    if recipe == "joint" and not any(
        resolved[k] > 0 for k in ("loss.clip_weight", "loss.soft_nn_kl_weight", "loss.structure_weight")
    ):
        raise ValueError(
            "config keys 'loss.clip_weight', 'loss.soft_nn_kl_weight' and 'loss.structure_weight' are all 0; "
            "at least one must be > 0"
        )
    if recipe == "supcon" and resolved["loss.clip_weight"] == 0 and resolved["loss.supcon_weight"] == 0:
        raise ValueError(
            "config keys 'loss.clip_weight' and 'loss.supcon_weight' are both 0; one must be > 0"
        )
    _check_source(recipe, resolved)
    if recipe == "repa" and resolved["loss.repa_depth"] > resolved["model.depth"]:
        raise ValueError(
            f"config key 'loss.repa_depth' must be ≤ model.depth = {resolved['model.depth']}, "
            f"got {resolved['loss.repa_depth']}"
        )
    if recipe == "itm":
        _check_itm(resolved)
    subset = resolved["data.train_subset"]
    if subset is not None and resolved["train.batch_size"] > subset:
        raise ValueError(
            f"config key 'train.batch_size' must be ≤ data.train_subset = {subset}, "
            f"got {resolved['train.batch_size']}"
        )
    return _unflatten(resolved)


def _check_itm(c: Mapping[str, Any]) -> None:
    """The ``itm`` recipe fuses ViT patch tokens with the text model's token embeddings."""
    if c["model.image_tower"] != "vit" or c["model.tower_a"] not in ("auto", "vit"):
        raise ValueError(
            "recipe 'itm' fuses image patch tokens: config key 'model.image_tower' must be 'vit' and "
            f"'model.tower_a' 'auto' or 'vit', got {c['model.image_tower']!r} and {c['model.tower_a']!r}"
        )
    if c["model.tower_b"] not in ("auto", "sentence-transformers") or c["model.tower_b_finetune"]:
        raise ValueError(
            "recipe 'itm' reads the token embeddings of a frozen sentence-transformers text model: config "
            "key 'model.tower_b' must be 'auto' or 'sentence-transformers' (not fine-tuned), "
            f"got {c['model.tower_b']!r}"
        )
    if c["data.source"] == "embeddings":
        raise ValueError(
            "recipe 'itm' cannot train on data.source 'embeddings': its matcher fuses image patch tokens "
            "with caption token sequences, and embedding files hold one pooled vector per row; use "
            "'digits' or 'pairs' (image files and captions)"
        )
    if c["model.image_width"] % c["model.fusion_heads"]:
        raise ValueError(
            f"config key 'model.fusion_heads' must divide model.image_width = {c['model.image_width']}, "
            f"got {c['model.fusion_heads']}"
        )


def _check_source(recipe: str, c: Mapping[str, Any]) -> None:
    """What a data source needs, and which recipes it can feed (a ValueError saying why not)."""
    source = c["data.source"]
    if recipe == "repa" and source != "digits":
        raise ValueError("recipe 'repa' trains on the digits only: data.source must be 'digits'")
    if source == "digits":
        if recipe == "disentangled" and c["data.attribute"] not in ATTRIBUTES:
            raise ValueError(
                f"config key 'data.attribute' must be one of {', '.join(map(repr, ATTRIBUTES))} "
                f"on the digits, got {c['data.attribute']!r}"
            )
        return
    need = {"embeddings": ("data.a", "data.b"), "pairs": ("data.table", "data.column_a", "data.column_b")}
    missing = [k for k in need[source] if c[k] is None]
    if missing:
        raise ValueError(f"data.source {source!r} needs config key(s) {', '.join(map(repr, missing))}")
    has_labels = c["data.labels"] is not None or c["data.label_column"] is not None
    extras = c["data.extras"] if source == "embeddings" else c["data.extra_columns"]
    if recipe == "supcon" and not has_labels:
        raise ValueError(
            "recipe 'supcon' needs class labels: set data.labels (embeddings) or data.label_column (pairs)"
        )
    if recipe == "binder" and not extras:
        raise ValueError(
            "recipe 'binder' needs a third modality bound to side a: set data.extras (embeddings: "
            "name → file) or data.extra_columns (pairs)"
        )
    if recipe == "disentangled" and not (has_labels and extras):
        raise ValueError(
            "recipe 'disentangled' needs two factors: class labels (data.labels / data.label_column) and "
            "a factor column or file (data.extra_columns / data.extras), named by data.attribute"
        )


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.projection=mlp"]`` → a nested dict of raw values.

    The text after ``=`` is read as a YAML scalar (``3`` → 3, ``true`` → True, ``null`` → None,
    ``0.5`` → 0.5, anything else a string); :func:`validate_config` then converts it to the key's
    type (``1e-3`` → 0.001 for a number) or rejects it.
    """
    flat: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"an override must look like key=value (e.g. train.epochs=3), got {item!r}")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"an override must look like key=value (e.g. train.epochs=3), got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            value = text
        if isinstance(value, (dict, list)) and key not in VALUE_KEYS:
            raise ValueError(f"override {key!r} must be a single value, got {text!r}")
        flat[key] = value
    return _unflatten(flat)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = _flatten(base) if base else {}
    merged.update(_flatten(extra) if extra else {})
    return _unflatten(merged)


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config (``None``: the clip defaults), apply ``key=value`` overrides, validate.

    Raises:
        ValueError: unreadable file, invalid YAML, unknown key or bad value (the message names it).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"config file {file} does not exist")
        try:  # bounded: no anchors / aliases (YAML bombs), nesting ≤ 32, ≤ 1 MiB
            loaded = load_yaml_bounded(file)
        except ValueError as err:
            reason = str(err).removeprefix(f"{file}: ").removeprefix("not valid YAML ")
            raise ValueError(f"config file {file} is not valid YAML: {reason}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ValueError(
                f"config file {file} must hold a mapping of sections, got {type(loaded).__name__}"
            )
        raw = dict(loaded)
    return validate_config(_merge(raw, parse_overrides(overrides)))


def write_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as YAML to ``path`` atomically (temporary file + ``os.replace``)."""
    return _atomic_write_text(Path(path), yaml.safe_dump(dict(config), sort_keys=False))


def _atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as out:
        out.write(text)
    return path

