"""Training recipes: validated YAML configs, the captioned-digits data, and one trainable system per
recipe, run end to end by :func:`run_recipe` (train → test-split evaluation → run directory).

    from alignkit.recipes import load_config, run_recipe
    config = load_config("configs/clip.yaml", ["train.epochs=3", "model.embed_dim=64"])
    metrics = run_recipe(config, "runs/clip")          # runs/clip/{config.yaml, metrics.json, …}

Recipes (the ``recipe`` key; every recipe aligns the 8×8 digit images with their captions, embedded
once by the frozen all-MiniLM-L6-v2 text tower and cached on disk — the LiT setting, Zhai et al.
2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning", with the *text* side locked):

==============  ====================================================================================
``clip``        :class:`~alignkit.models.DualEncoder`: image tower trained from scratch + projection,
                frozen text embeddings + projection, CLIP loss with a learnable temperature (Radford
                et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").
``byol``        :class:`~alignkit.models.CrossModalBYOL`: the image branch predicts the momentum target
                of the text branch (a trainable MLP on the frozen text embeddings) and back (Grill et
                al. 2020, "Bootstrap Your Own Latent").
``supcon``      the CLIP dual encoder plus the supervised contrastive loss over the image and text
                embeddings as two views of each sample, positives = same digit (Khosla et al. 2020,
                "Supervised Contrastive Learning").
``joint``       the dual encoder trained with ``λ1·soft-NN KL + λ2·structure`` (+ ``λ0·CLIP``) through
                :class:`~alignkit.losses.JointLoss`. Both the soft-NN KL and the structure loss vanish
                when every embedding collapses to one point, so the CLIP term (``loss.clip_weight``)
                anchors the pairing; set it to 0 to study the pure micro + macro objective.
``binder``      :class:`~alignkit.models.Binder` with the image as anchor, modality A = captions and
                modality B = a second "sensor": the row and column ink profiles of the image (16
                numbers). The training split is halved at random: one half gives (image, caption)
                pairs, the other (image, profile) pairs, so A and B never meet in a loss; their
                alignment *emerges* (Girdhar et al. 2023, "ImageBind"), reported as caption ↔ profile
                retrieval.
``disentangled`` :class:`~alignkit.models.disentangle.DisentangledContrastive` on the image tower with
                one sub-space for the digit and one for an attribute (slant bucket by default), two
                noisy views per image, an independence penalty, plus a CLIP term tying the whole
                embedding to the captions; reports linear-probe accuracy of each factor from each
                sub-space.
==============  ====================================================================================

Configs are nested mappings (YAML); every key is listed in :func:`config_keys` with its type, its
allowed values and its default, and anything else — an unknown key, a wrong type, a value out of
range — raises ``ValueError`` naming the dotted key and what is allowed. ``key=value`` overrides use
the same dotted keys (``train.epochs=3``) and are parsed by the key's type.
"""

from __future__ import annotations

import functools
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from alignkit.functional._checks import EPS
from alignkit.io import atomic_write

__all__ = [
    "ATTRIBUTES",
    "RECIPES",
    "BYOLSystem",
    "BinderSystem",
    "CLIPSystem",
    "DisentangledSystem",
    "JointSystem",
    "RecipeData",
    "RecipeSystem",
    "SupConSystem",
    "build_system",
    "config_keys",
    "default_config",
    "image_tower",
    "ink_profiles",
    "load_config",
    "load_data",
    "parse_overrides",
    "run_recipe",
    "validate_config",
    "write_config",
]

RECIPES = ("clip", "byol", "supcon", "joint", "binder", "disentangled")
ATTRIBUTES = ("slant", "ink", "thickness", "height", "width", "vertical", "horizontal")
IMAGE_TOWERS = ("mlp", "cnn")
PROJECTIONS = ("linear", "mlp")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINTS = ("best", "last")


# ==================================================================================================
# Config schema


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

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            parts = []
            if self.low is not None:
                parts.append(f"{'>' if self.open_low else '≥'} {self.low:g}")
            if self.high is not None:
                parts.append(f"≤ {self.high:g}")
            text = noun + (" " + " and ".join(parts) if parts else "")
        elif self.kind == "bool":
            text = "true or false"
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


def _int(default: int | None, low: int = 0, high: int | None = None, nullable: bool = False) -> _Field:
    return _Field("int", default, low=low, high=high, nullable=nullable)


def _float(
    default: float | None,
    low: float | None = 0.0,
    high: float | None = None,
    open_low: bool = False,
    nullable: bool = False,
) -> _Field:
    return _Field("float", default, low=low, high=high, open_low=open_low, nullable=nullable)


def _choice(default: Any, choices: Sequence[Any]) -> _Field:
    return _Field("choice", default, choices=tuple(choices))


_COMMON: dict[str, _Field] = {
    "recipe": _choice("clip", RECIPES),
    "seed": _int(0),
    "data.seed": _int(0),
    "data.train_subset": _int(None, low=2, nullable=True),
    "data.text_model": _Field("str", "all-MiniLM-L6-v2"),
    "model.image_tower": _choice("mlp", IMAGE_TOWERS),
    "model.image_width": _int(256, low=1),
    "model.dropout": _float(0.1, high=0.95),
    "model.embed_dim": _int(64, low=1),
    "train.epochs": _int(40, low=1),
    "train.batch_size": _int(128, low=2),
    "train.lr": _float(3e-3, open_low=True),
    "train.weight_decay": _float(1e-4),
    "train.warmup_fraction": _float(0.05, high=1.0),
    "train.min_lr_ratio": _float(0.0, high=1.0),
    "train.grad_clip": _float(None, open_low=True, nullable=True),
    "train.log_every": _int(5, low=1),
    "train.device": _choice("auto", DEVICES),
    "train.evaluate_checkpoint": _choice("best", CHECKPOINTS),
    "train.threads": _int(1, low=1, nullable=True),
}

_PROJECTION = {"model.projection": _choice("linear", PROJECTIONS)}
_CLIP_TEMPERATURE = {
    "model.init_temperature": _float(0.07, open_low=True),
    "model.learn_temperature": _Field("bool", True),
}

_RECIPE_FIELDS: dict[str, dict[str, _Field]] = {
    "clip": {**_PROJECTION, **_CLIP_TEMPERATURE},
    "byol": {
        "model.text_width": _int(256, low=1),
        "model.hidden_dim": _int(512, low=1),
        "model.tau_base": _float(0.99, high=1.0),
    },
    "supcon": {
        **_PROJECTION,
        **_CLIP_TEMPERATURE,
        "loss.clip_weight": _float(1.0),
        "loss.supcon_weight": _float(1.0),
        "loss.temperature": _float(0.1, open_low=True),
        "loss.variant": _choice("out", ("out", "in")),
    },
    "joint": {
        **_PROJECTION,
        **_CLIP_TEMPERATURE,
        "loss.clip_weight": _float(1.0),
        "loss.soft_nn_kl_weight": _float(1.0),
        "loss.structure_weight": _float(1.0),
        "loss.temperature": _float(0.1, open_low=True),
    },
    "binder": {
        **_PROJECTION,
        "model.profile_width": _int(128, low=1),
        "loss.temperature": _float(0.07, open_low=True),
    },
    "disentangled": {
        "data.attribute": _choice("slant", ATTRIBUTES),
        "data.noise": _float(0.1),
        "model.subspace_dim": _int(32, low=1),
        "model.hidden_dim": _int(None, low=1, nullable=True),
        "model.init_temperature": _float(0.07, open_low=True),
        "loss.temperature": _float(0.1, open_low=True),
        "loss.independence": _choice("correlation", ("correlation", "cka")),
        "loss.independence_weight": _float(1.0),
        "loss.clip_weight": _float(1.0),
        "train.probe_iterations": _int(300, low=1),
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
        if isinstance(value, Mapping):
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
        for part in parents:
            node = node.setdefault(part, {})
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
    subset = resolved["data.train_subset"]
    if subset is not None and resolved["train.batch_size"] > subset:
        raise ValueError(
            f"config key 'train.batch_size' must be ≤ data.train_subset = {subset}, "
            f"got {resolved['train.batch_size']}"
        )
    return _unflatten(resolved)


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
        if isinstance(value, (dict, list)):
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
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            first = " ".join(str(err).split())[:200]
            raise ValueError(f"config file {file} is not valid YAML: {first}") from None
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


# ==================================================================================================
# Data


@dataclass
class RecipeData:
    """The captioned digits as tensors, shared by every recipe.

    Attributes:
        images: (N, 8, 8) float32 in [0, 1].
        labels: (N,) int64 digits.
        text: (N, D) float32 MiniLM embeddings of the captions (unit rows; D = 384).
        prompts: (10, K, D) embeddings of the K zero-shot prompts of each digit.
        profiles: (N, 16) the ink profiles (:func:`ink_profiles`), the binder's second "sensor".
        attributes: name → (N,) int64 bucket index of each attribute word (0 = the low word).
        splits: ``"train"`` / ``"val"`` / ``"test"`` → (n,) int64 row indices.
        captions: the N captions.
    """

    images: Tensor
    labels: Tensor
    text: Tensor
    prompts: Tensor
    profiles: Tensor
    attributes: dict[str, Tensor]
    splits: dict[str, Tensor]
    captions: list[str]


def ink_profiles(images: Tensor) -> Tensor:
    """Row and column ink profiles: ``[Σ_c p[r, c] / W for each row r ‖ Σ_r p[r, c] / H for each column c]``.

    Shapes: (N, H, W) → (N, H + W). A second, lossy "sensor" view of each image for the binder
    recipe. Cost O(N·H·W).
    """
    if not isinstance(images, Tensor) or images.dim() != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, H, W), got {got}")
    h, w = images.shape[1:]
    return torch.cat([images.sum(2) / w, images.sum(1) / h], dim=1)


@functools.lru_cache(maxsize=4)
def load_data(seed: int = 0, text_model: str = "all-MiniLM-L6-v2") -> RecipeData:
    """The captioned digits (:func:`alignkit.data.load_digits_captions`) with cached caption and prompt
    embeddings (:func:`alignkit.data.encode_texts`), as :class:`RecipeData`.

    Cached per process (the tensors are shared: do not modify them). The first call on a machine
    encodes the 1,797 captions with MiniLM (≈ 20-40 s on 2 CPU cores); later calls read the disk
    cache (``$ALIGNKIT_CACHE`` or ``~/.cache/alignkit``).
    """
    from alignkit.data import ATTRIBUTE_WORDS, class_prompts, encode_texts, load_digits_captions

    digits = load_digits_captions(seed=seed)
    images = torch.from_numpy(np.ascontiguousarray(digits.images, dtype=np.float32))
    text = encode_texts(digits.captions, model=text_model)
    prompts = class_prompts()
    flat = [p for per_class in prompts for p in per_class]
    prompt_emb = encode_texts(flat, model=text_model).reshape(len(prompts), len(prompts[0]), -1)
    attributes = {}
    for name in ATTRIBUTES:
        words = list(ATTRIBUTE_WORDS[name])
        attributes[name] = torch.tensor(
            [words.index(str(w)) for w in digits.attributes[name]], dtype=torch.long
        )
    return RecipeData(
        images=images,
        labels=torch.from_numpy(np.asarray(digits.labels, dtype=np.int64)),
        text=text,
        prompts=prompt_emb,
        profiles=ink_profiles(images),
        attributes=attributes,
        splits={k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in digits.splits.items()},
        captions=list(digits.captions),
    )


# ==================================================================================================
# Towers


class _Flatten8x8(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)


class _AddChannel(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], 1, *x.shape[-2:])


def image_tower(kind: str = "mlp", width: int = 256, dropout: float = 0.0, size: int = 8) -> nn.Module:
    """A small image encoder trained from scratch: (N, size, size) images → (N, width) features.

    * ``"mlp"``: flatten → Linear(size², width) → GELU → Dropout → Linear(width, width) → GELU.
    * ``"cnn"``: Conv3×3(1→32) → GELU → Conv3×3(32→64) → GELU → MaxPool2 → flatten →
      Linear(64·(size/2)², width) → GELU (no global pooling: captions describe where the ink sits).

    The module has attribute ``out_dim = width``. Cost per image: O(size²·width + width²) (mlp) or
    O(size²·32·64·9) (cnn).
    """
    if kind not in IMAGE_TOWERS:
        raise ValueError(f"kind must be one of {IMAGE_TOWERS}, got {kind!r}")
    if kind == "mlp":
        tower = nn.Sequential(
            _Flatten8x8(),
            nn.Linear(size * size, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.GELU(),
        )
    else:
        half = size // 2
        tower = nn.Sequential(
            _AddChannel(),
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * half * half, width),
            nn.GELU(),
        )
    tower.out_dim = width  # type: ignore[assignment]
    return tower


def _mlp(in_dim: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU())


def _normalize(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=EPS)


def _prompt_classes(embed: Any, prompts: Tensor) -> Tensor:
    """Prompt ensembling: ``w_c = normalize(mean_k normalize(embed(prompts[c, k])))`` → (C, E)."""
    c, k, d = prompts.shape
    e = _normalize(embed(prompts.reshape(c * k, d))).reshape(c, k, -1)
    return _normalize(e.mean(1))


def _device(module: nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


# ==================================================================================================
# Systems


class RecipeSystem(nn.Module, ABC):
    """What every recipe's system provides (on top of the Trainer's ``training_step``).

    * ``batch(data, rows)`` → the list of training tensors for the given rows;
    * ``training_step(batch)`` → ``{"loss", …}`` (the :class:`~alignkit.train.Trainer` protocol);
    * ``validation_loss(batch)`` → the loss on a held-out batch, deterministic (no random views);
    * ``embed(data, rows)`` → ``{"image", "text"}`` L2-normalised joint embeddings (row i = image i
      and its caption) and ``{"image_tower", "text_tower"}`` raw tower outputs;
    * ``class_embeddings(prompts)`` → (C, E) zero-shot class vectors from (C, K, D) prompt
      embeddings;
    * ``extra_metrics(data)`` → recipe-specific test-split numbers (may be empty).
    """

    recipe = ""

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        return [data.images[rows], data.text[rows]]

    @abstractmethod
    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        """``{"loss": scalar, …}`` for one training batch (the Trainer protocol)."""

    def validation_loss(self, batch: Sequence[Tensor]) -> Tensor:
        return self.training_step(batch)["loss"]

    @abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """(N, 8, 8) images → (N, E) joint-space embeddings (not normalised)."""

    @abstractmethod
    def encode_text(self, text: Tensor) -> Tensor:
        """(N, D) MiniLM caption embeddings → (N, E) joint-space embeddings (not normalised)."""

    @abstractmethod
    def image_features(self, images: Tensor) -> Tensor:
        """(N, 8, 8) images → the image tower's raw (N, W) features."""

    @torch.no_grad()
    def embed(self, data: RecipeData, rows: Tensor) -> dict[str, Tensor]:
        device = _device(self)
        images, text = data.images[rows].to(device), data.text[rows].to(device)
        return {
            "image": _normalize(self.encode_image(images)),
            "text": _normalize(self.encode_text(text)),
            "image_tower": self.image_features(images),
            "text_tower": text,
        }

    @torch.no_grad()
    def class_embeddings(self, prompts: Tensor) -> Tensor:
        return _prompt_classes(self.encode_text, prompts.to(_device(self)))

    @torch.no_grad()
    def zero_shot_logits(self, images: Tensor, class_text: Tensor) -> Tensor:
        """(N, C) cosine similarities of the image embeddings to the class vectors."""
        return _normalize(self.encode_image(images.to(_device(self)))) @ class_text.T

    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        return {}


class _DualEncoderSystem(RecipeSystem):
    """A :class:`~alignkit.models.DualEncoder` with the image tower as tower a and the (already
    encoded, frozen) text embeddings through ``nn.Identity`` as tower b."""

    def __init__(self, cfg: Mapping[str, Any], text_dim: int, loss: nn.Module | None = None) -> None:
        super().__init__()
        from alignkit.losses import CLIPLoss
        from alignkit.models import DualEncoder

        m = cfg["model"]
        tower = image_tower(m["image_tower"], m["image_width"], m["dropout"])
        if loss is None:
            loss = CLIPLoss(init_temperature=m["init_temperature"], learn_temperature=m["learn_temperature"])
        self.model = DualEncoder(
            tower,
            nn.Identity(),
            dim_a=m["image_width"],
            dim_b=text_dim,
            embed_dim=m["embed_dim"],
            projection=m["projection"],
            freeze_b=True,
            loss=loss,
        )

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_a(images)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.model.encode_b(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.tower_a(images)

    @torch.no_grad()
    def class_embeddings(self, prompts: Tensor) -> Tensor:
        # class prompts → text tower (cached MiniLM) → projection → DualEncoder.zero_shot_classifier
        prompts = prompts.to(_device(self))
        return self.model.zero_shot_classifier([prompts[c] for c in range(prompts.shape[0])], modality="b")

    @torch.no_grad()
    def zero_shot_logits(self, images: Tensor, class_text: Tensor) -> Tensor:
        return self.model.classify(images.to(_device(self)), weights=class_text, modality="a")

    def _temperature(self) -> dict[str, Tensor]:
        scale = self.model.logit_scale
        return {} if scale is None else {"temperature": 1.0 / scale.detach()}


class CLIPSystem(_DualEncoderSystem):
    """The ``clip`` recipe: LiT with the text side locked, CLIP loss with a learnable temperature."""

    recipe = "clip"

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text = batch[0], batch[1]
        out = self.model(images, text)
        return {"loss": out["loss"], **self._temperature()}


class SupConSystem(_DualEncoderSystem):
    """The ``supcon`` recipe: ``λ_clip·CLIP(e_img, e_txt) + λ_sup·SupCon([e_img, e_txt], digit)``."""

    recipe = "supcon"

    def __init__(self, cfg: Mapping[str, Any], text_dim: int) -> None:
        super().__init__(cfg, text_dim)
        from alignkit.losses import SupConLoss

        loss = cfg["loss"]
        self.supcon = SupConLoss(temperature=loss["temperature"], variant=loss["variant"])
        self.clip_weight = float(loss["clip_weight"])
        self.supcon_weight = float(loss["supcon_weight"])

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        return [data.images[rows], data.text[rows], data.labels[rows]]

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text, labels = batch
        out = self.model(images, text)
        views = torch.stack([out["emb_a"], out["emb_b"]], dim=1)  # (N, 2, E): two views per sample
        supcon = self.supcon(views, labels)
        loss = self.clip_weight * out["loss"] + self.supcon_weight * supcon
        return {"loss": loss, "clip": out["loss"], "supcon": supcon, **self._temperature()}


class JointSystem(_DualEncoderSystem):
    """The ``joint`` recipe: :class:`~alignkit.losses.JointLoss` of CLIP, soft-NN KL and structure."""

    recipe = "joint"

    def __init__(self, cfg: Mapping[str, Any], text_dim: int) -> None:
        from alignkit.losses import CLIPLoss, JointLoss

        m, spec = cfg["model"], cfg["loss"]
        terms: dict[str, Any] = {}
        if spec["clip_weight"] > 0:
            terms["clip"] = CLIPLoss(
                init_temperature=m["init_temperature"], learn_temperature=m["learn_temperature"]
            )
        if spec["soft_nn_kl_weight"] > 0:
            terms["soft_nn_kl"] = {"temperature": spec["temperature"]}
        if spec["structure_weight"] > 0:
            terms["structure"] = {}
        weights = {
            "clip": spec["clip_weight"],
            "soft_nn_kl": spec["soft_nn_kl_weight"],
            "structure": spec["structure_weight"],
        }
        joint = JointLoss(terms, weights={k: v for k, v in weights.items() if k in terms})
        super().__init__(cfg, text_dim, loss=joint)

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text = batch[0], batch[1]
        e_a, e_b = self.model.encode_a(images), self.model.encode_b(text)
        total, parts = self.model.loss(e_a, e_b, return_parts=True)
        out: dict[str, Any] = {"loss": total, **{k: v.detach() for k, v in parts.items()}}
        if "clip" in self.model.loss.terms:
            out["temperature"] = 1.0 / self.model.loss.terms["clip"].logit_scale.detach()
        return out


class BYOLSystem(RecipeSystem):
    """The ``byol`` recipe: :class:`~alignkit.models.CrossModalBYOL` between the image tower and a
    trainable text MLP on the frozen MiniLM embeddings; the joint image embedding is the image
    branch's *prediction* (what the cross-modal loss trains to match the text projection), the joint
    text embedding the text branch's online projection."""

    recipe = "byol"

    def __init__(self, cfg: Mapping[str, Any], text_dim: int) -> None:
        super().__init__()
        from alignkit.models import CrossModalBYOL

        m = cfg["model"]
        self.model = CrossModalBYOL(
            image_tower(m["image_tower"], m["image_width"], m["dropout"]),
            _mlp(text_dim, m["text_width"]),
            dim_a=m["image_width"],
            dim_b=m["text_width"],
            proj_dim=m["embed_dim"],
            hidden_dim=m["hidden_dim"],
            tau_base=m["tau_base"],
        )

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        out = self.model(batch[0], batch[1])
        return {"loss": out["loss"], "loss_ab": out["loss_ab"], "loss_ba": out["loss_ba"]}

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.model.step(step, max_steps)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_a(images, predict=True)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.model.encode_b(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.encoder_a(images)


class BinderSystem(RecipeSystem):
    """The ``binder`` recipe: image anchor, captions (A) and ink profiles (B), (image, A) and
    (image, B) pairs from disjoint halves of the training split (column 3 of the batch: 0 = a caption
    pair, 1 = a profile pair)."""

    recipe = "binder"

    def __init__(self, cfg: Mapping[str, Any], text_dim: int, profile_dim: int, seed: int) -> None:
        super().__init__()
        from alignkit.models import Binder

        m = cfg["model"]
        self.seed = seed
        self.model = Binder(
            "image",
            {
                "image": image_tower(m["image_tower"], m["image_width"], m["dropout"]),
                "text": nn.Identity(),
                "profile": _mlp(profile_dim, m["profile_width"]),
            },
            {"image": m["image_width"], "text": text_dim, "profile": m["profile_width"]},
            embed_dim=m["embed_dim"],
            temperature=cfg["loss"]["temperature"],
            projection=m["projection"],
            frozen=("text",),
        )

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        kind = torch.zeros(len(rows), dtype=torch.long)
        kind[torch.randperm(len(rows), generator=g)[len(rows) // 2 :]] = 1
        return [data.images[rows], data.text[rows], data.profiles[rows], kind]

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        images, text, profiles, kind = batch
        out: dict[str, Any] = {}
        total: Tensor | None = None
        for value, name, other in ((0, "text", text), (1, "profile", profiles)):
            rows = (kind == value).nonzero().squeeze(1)
            if len(rows) < 2:
                continue
            loss = self.model({"image": images[rows], name: other[rows]})["loss"]
            out[f"loss_{name}"] = loss.detach()
            total = loss if total is None else total + loss
        if total is None:
            raise ValueError("a binder batch needs at least 2 rows of one pair kind; raise train.batch_size")
        out["loss"] = total
        return out

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.embed("image", images)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.model.embed("text", text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.encoders["image"](images)

    @torch.no_grad()
    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        """Emergent caption ↔ profile retrieval on the test split (never trained on these pairs),
        and image → profile retrieval (trained)."""
        from alignkit.functional import recall_at_k

        rows = data.splits["test"]
        device = _device(self)
        text = self.model.embed("text", data.text[rows].to(device))
        prof = self.model.embed("profile", data.profiles[rows].to(device))
        image = self.model.embed("image", data.images[rows].to(device))
        out: dict[str, float] = {}
        for prefix, q, g in (
            ("text_to_profile", text, prof),
            ("profile_to_text", prof, text),
            ("image_to_profile", image, prof),
        ):
            r = recall_at_k(q, g, k=(1, 5, 10))
            out.update({f"{prefix}_recall@{k}": r[f"recall@{k}"] for k in (1, 5, 10)})
        return out


class DisentangledSystem(RecipeSystem):
    """The ``disentangled`` recipe: :class:`DisentangledContrastive` on two noisy views of each image
    with factors (digit, attribute bucket), plus ``λ_clip·CLIP`` between the whole image embedding
    and a linear projection of the caption embedding."""

    recipe = "disentangled"

    def __init__(self, cfg: Mapping[str, Any], text_dim: int) -> None:
        super().__init__()
        from alignkit.losses import CLIPLoss
        from alignkit.models.disentangle import DisentangledContrastive

        m, spec, d = cfg["model"], cfg["loss"], cfg["data"]
        self.attribute = d["attribute"]
        self.noise = float(d["noise"])
        self.probe_iterations = int(cfg["train"]["probe_iterations"])
        self.model = DisentangledContrastive(
            image_tower(m["image_tower"], m["image_width"], m["dropout"]),
            in_dim=m["image_width"],
            subspaces={"digit": m["subspace_dim"], self.attribute: m["subspace_dim"]},
            hidden_dim=m["hidden_dim"],
            temperature=spec["temperature"],
            independence=spec["independence"],
            independence_weight=spec["independence_weight"],
        )
        self.text_proj = nn.Linear(text_dim, 2 * m["subspace_dim"], bias=False)
        self.clip = CLIPLoss(init_temperature=m["init_temperature"])
        self.clip_weight = float(spec["clip_weight"])

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        factors = torch.stack([data.labels[rows], data.attributes[self.attribute][rows]], dim=1)
        return [data.images[rows], data.text[rows], factors]

    def _loss(self, batch: Sequence[Tensor], generator: torch.Generator | None) -> dict[str, Any]:
        images, text, factors = batch

        def view() -> Tensor:
            noise = torch.randn(images.shape, generator=generator, device="cpu").to(images.device)
            return (images + self.noise * noise).clamp(0.0, 1.0)

        parts = self.model.loss(view(), view(), factors, output_dict=True)
        assert isinstance(parts, dict)
        out: dict[str, Any] = {
            "contrastive": parts["contrastive"].detach(),
            "independence": parts["independence"].detach(),
        }
        total = parts["loss"]
        if self.clip_weight > 0:
            clip = self.clip(self.model(images), self.text_proj(text))
            out["clip"] = clip.detach()
            total = total + self.clip_weight * clip
        out["loss"] = total
        return out

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        return self._loss(batch, None)

    def validation_loss(self, batch: Sequence[Tensor]) -> Tensor:
        return self._loss(batch, torch.Generator().manual_seed(0))["loss"]

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model(images)

    def encode_text(self, text: Tensor) -> Tensor:
        return self.text_proj(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.model.encoder(images)

    @torch.no_grad()
    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        """Linear-probe accuracy of each factor (digit, attribute) from each sub-space (test split)."""
        device = _device(self)
        tr, te = data.splits["train"], data.splits["test"]
        ftr = self.batch(data, tr)[2].to(device)
        fte = self.batch(data, te)[2].to(device)
        report = self.model.probe_report(
            data.images[tr].to(device), ftr, data.images[te].to(device), fte, max_iter=self.probe_iterations
        )
        return {
            f"probe_{factor}_from_{space}": float(acc)
            for factor, row in report.items()
            for space, acc in row.items()
        }


def build_system(config: Mapping[str, Any], data: RecipeData) -> RecipeSystem:
    """The system of ``config["recipe"]`` (config as returned by :func:`validate_config`)."""
    cfg = validate_config(config)
    recipe = cfg["recipe"]
    text_dim = int(data.text.shape[1])
    if recipe == "clip":
        return CLIPSystem(cfg, text_dim)
    if recipe == "supcon":
        return SupConSystem(cfg, text_dim)
    if recipe == "joint":
        return JointSystem(cfg, text_dim)
    if recipe == "byol":
        return BYOLSystem(cfg, text_dim)
    if recipe == "binder":
        return BinderSystem(cfg, text_dim, int(data.profiles.shape[1]), cfg["seed"])
    return DisentangledSystem(cfg, text_dim)


# ==================================================================================================
# Running


def _train_rows(cfg: Mapping[str, Any], data: RecipeData) -> Tensor:
    rows = data.splits["train"]
    subset = cfg["data"]["train_subset"]
    return rows if subset is None else rows[:subset]


def run_recipe(
    config: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    data: RecipeData | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``config``'s recipe into ``out_dir`` and evaluate it on the test split.

    Writes (rank 0 only under ``torchrun``) ``config.yaml`` (the resolved config), ``metrics.jsonl``
    and ``checkpoints/`` (by :class:`~alignkit.train.Trainer`, with a per-epoch validation record
    holding ``val_loss`` — the monitored value — and ``val_recall@1``), then ``metrics.json`` and
    ``embeddings_test.safetensors`` (:func:`alignkit.evaluate.evaluate_run`) from the ``best`` (or
    ``last``, ``train.evaluate_checkpoint``) weights.

    Args:
        config: a config (validated here).
        out_dir: the run directory.
        resume: continue from ``out_dir/checkpoints/last.json`` if it exists.
        data: the data (default :func:`load_data` of ``data.seed`` / ``data.text_model``).
        progress: show the Trainer's progress bar (when stderr is a terminal).

    ``train.threads`` (default 1) is applied with ``torch.set_num_threads`` for the whole process:
    these towers are tiny, and on a shared 2-core CPU two intra-op threads per step were measured
    up to 80× slower than one (thread oversubscription); ``null`` keeps torch's setting.

    Returns:
        The test metrics (what ``metrics.json`` holds).

    Cost: ``train.epochs`` passes over the training split plus one pass over val per epoch.
    """
    from alignkit.evaluate import evaluate_run, make_validator
    from alignkit.train import Trainer, dist_info, seed_everything

    cfg = validate_config(config)
    start = time.perf_counter()
    data = load_data(cfg["data"]["seed"], cfg["data"]["text_model"]) if data is None else data
    out = Path(out_dir)
    info = dist_info()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out / "config.yaml")
    if cfg["train"]["threads"] is not None:
        # small towers: one thread per process avoids oversubscribing a shared CPU
        torch.set_num_threads(cfg["train"]["threads"])
    seed_everything(cfg["seed"])
    system = build_system(cfg, data)
    if info.distributed and cfg["recipe"] == "binder":
        raise ValueError(
            "the binder recipe trains on per-batch halves of unequal size; run it in one process"
        )
    t = cfg["train"]
    device = None if t["device"] == "auto" else t["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'train.device' is 'cuda' but no CUDA device is available")
    trainer = Trainer(
        system,
        system.batch(data, _train_rows(cfg, data)),
        epochs=t["epochs"],
        lr=t["lr"],
        out_dir=out,
        batch_size=t["batch_size"],
        weight_decay=t["weight_decay"],
        warmup_fraction=t["warmup_fraction"],
        min_lr_ratio=t["min_lr_ratio"],
        grad_clip=t["grad_clip"],
        evaluate=make_validator(data),
        monitor="val_loss",
        mode="min",
        seed=cfg["seed"],
        log_every=t["log_every"],
        progress=progress,
        resume=resume,
        device=device,
    )
    result = trainer.fit()
    if t["evaluate_checkpoint"] == "best" and result.best_checkpoint is not None:
        trainer.load_best()
    metrics: dict[str, Any] = {}
    if info.is_main:
        metrics = evaluate_run(system, data, out, recipe=cfg["recipe"], epochs=t["epochs"], start=start)
    return metrics
