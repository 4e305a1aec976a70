"""Captioning from an aligned run: train ClipCap, CapDec, DeCap and CoCa decoders on the digit captions,
decode test images with iterative decoding as the baseline, and score every method.

    alignkit train --config configs/clip.yaml --out runs/clip          # the joint space
    alignkit caption --checkpoint runs/clip --fit                       # train + evaluate all methods
    alignkit caption --checkpoint runs/clip --images my_digits.npy --method decap

What each method sees (``e_img`` / ``e_txt`` = the run's normalised joint embeddings of an image and of
its caption's MiniLM embedding; decoders are :class:`~alignkit.models.PrefixCaptioner` or
:class:`~alignkit.models.CoCa` trained from scratch with a :class:`~alignkit.data.WordTokenizer`):

==================  ===========================================  ==========================================
method              trained on                                   captions an image from
==================  ===========================================  ==========================================
clipcap             (e_img, caption) pairs                       e_img
capdec              (normalize(e_txt) + N(0, 0.016·I), caption)  e_img — text-only training
decap               (e_txt, caption)                             softmax(cos(e_img, M)/0.01)-mixture of the
                                                                 memory M = e_txt of the training captions
iterative-memory    nothing                                      the training caption nearest to e_img
iterative-beam      capdec's decoder                             the beam (of 5) whose MiniLM → joint
                                                                 embedding is nearest to e_img
coca                (image, caption) pairs, its own image tower  the image
==================  ===========================================  ==========================================

Files under ``RUN/captions/``: ``tokenizer.json``, ``settings.json``, one Trainer directory per
trained decoder (``clipcap/checkpoints/best.json`` …, resumable), ``metrics.json`` (per method and
search: digit-word accuracy, attribute accuracy, attribute precision, BLEU-4 on the test split) and
``samples.json`` (the first test captions of each method), and ``source.json``: the SHA-256 of the run
weights everything there was derived from (:func:`alignkit.train.checkpoint.checkpoint_digest`). When the
run is retrained (other weights), the decoders and scores are stale: :func:`fit_captioners` says so
and retrains them, :func:`load_captioner` refuses them with a one-line reason; nothing is reused
silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.data.digits import (
    ATTRIBUTE_WORDS,
    DigitsCaptions,
    _as_images,
    caption_attribute_accuracy,
    load_digits_captions,
)
from alignkit.data.tokenizer import WordTokenizer
from alignkit.functional._checks import check_dropout
from alignkit.io import atomic_write, sha256_json
from alignkit.models.captioning import MAPPINGS, SEARCHES, CoCa, PrefixCaptioner
from alignkit.names import CAPTION_METHODS

__all__ = [
    "METHODS",
    "AlignedRun",
    "CaptionSettings",
    "caption_images",
    "evaluate_captions",
    "fit_captioners",
    "image_token_tower",
    "load_captioner",
    "load_run",
    "read_images",
    "stale_reason",
]

METHODS = CAPTION_METHODS  # defined without torch, for `alignkit caption --help`
TRAINED = {
    "clipcap": "clipcap",
    "capdec": "capdec",
    "decap": "decap",
    "iterative-beam": "capdec",
    "coca": "coca",
}
CAPTIONS_DIR = "captions"
MAX_BEAMS = 256  # beams of a beam search (beam_size, candidates); more is refused before decoding


# Upper bounds of the integer settings (checked before any model is built), with their units.
_SETTING_BOUNDS = {
    "epochs": (100_000, "epochs"),
    "coca_epochs": (100_000, "epochs"),
    "batch_size": (1 << 20, "samples"),
    "dim": (65_536, "features"),
    "depth": (256, "layers"),
    "num_heads": (1024, "heads"),
    "prefix_length": (1024, "tokens"),
    "beam_size": (MAX_BEAMS, "beams"),
    "candidates": (MAX_BEAMS, "beams"),
    "max_length": (4096, "tokens"),
}

#: what ``RUN/captions/`` was derived from: ``{"checkpoint": "checkpoints/best.json", "digest": sha256}``
SOURCE_FILE = "source.json"
#: the derived files that go stale with the run's weights (tokenizer.json and settings.json do not)
_DERIVED = ("clipcap", "capdec", "decap", "coca", "metrics.json", "samples.json")


@dataclass(frozen=True)
class CaptionSettings:
    """Hyper-parameters of the decoders (defaults: what README's table was measured with).

    Attributes:
        epochs: training epochs of each prefix captioner; coca_epochs: of CoCa (it also learns its
            image tower).
        batch_size, lr, weight_decay: AdamW with 5 % warm-up and cosine decay (the Trainer's).
        dim, depth, num_heads, dropout: decoder width, blocks, heads, dropout.
        prefix_length, mapping: ClipCap's k and mapping network ("mlp" or "transformer").
        noise_variance: CapDec's σ² (0.016).
        decap_temperature: DeCap's τ (0.01).
        beam_size: beams for ``search="beam"``; candidates: beams kept for iterative-beam.
        max_length: longest generated caption in tokens.
        descriptive_only: learn only from captions whose template states attributes (leaves out "a
            photo of the number …"; see :meth:`AlignedRun.rows`). The most probable caption of a
            decoder that learned it is always that template: it has the fewest uncertain words.
        seed: seeds training.
    """

    epochs: int = 20
    coca_epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    prefix_length: int = 4
    mapping: str = "mlp"
    noise_variance: float = 0.016
    decap_temperature: float = 0.01
    beam_size: int = 3
    candidates: int = 5
    max_length: int = 32
    descriptive_only: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (high, unit) in _SETTING_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"settings.{name} must be an integer in [1, {high}] ({unit}), got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(
                f"settings.dim ({self.dim}) must be divisible by settings.num_heads ({self.num_heads})"
            )
        if self.mapping not in MAPPINGS:
            raise ValueError(f"settings.mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        for name, low in (("lr", 0.0), ("decap_temperature", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ValueError(f"settings.{name} must be a number > {low}, got {value!r}")
        for name in ("weight_decay", "noise_variance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"settings.{name} must be a number ≥ 0, got {value!r}")
        check_dropout(self.dropout, "settings.dropout")
        if not isinstance(self.descriptive_only, bool):
            raise ValueError(
                f"settings.descriptive_only must be true or false, got {self.descriptive_only!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"settings.seed must be an integer ≥ 0, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CaptionSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown caption setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


# ==================================================================================================
# The aligned run


@dataclass
class AlignedRun:
    """An ``alignkit train`` run loaded for decoding.

    Attributes:
        path: the run directory.
        config: its resolved config.
        data: the recipe data (:class:`~alignkit.recipes.RecipeData`).
        digits: the captioned digits (all caption templates, attribute words).
        system: the recipe's system with the best (or last) weights, in eval mode.
        checkpoint: the manifest those weights came from (``checkpoints/best.json`` or ``last.json``).
        digest: the SHA-256 of those weights (what derived decoders and scores record).
    """

    path: Path
    config: dict[str, Any]
    data: Any
    digits: DigitsCaptions
    system: nn.Module
    checkpoint: Path | None = None
    digest: str = ""

    def rows(self, split: str, descriptive_only: bool = True) -> Tensor:
        """(n,) int64 rows of ``split``; with ``descriptive_only`` only those whose caption's template
        names at least one attribute (a field other than ``{digit}`` / ``{digit_word}``)."""
        rows = self.data.splits[split]
        if not descriptive_only:
            return rows
        fields = [
            {f for _, f, _, _ in string.Formatter().parse(t) if f} - {"digit", "digit_word"}
            for t in self.digits.templates
        ]
        keep = torch.tensor(
            [bool(fields[int(self.digits.template_ids[int(i)])]) for i in rows], dtype=torch.bool
        )
        return rows[keep]

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """(N, 8, 8) images in [0, 1] → (N, E) unit joint-space embeddings."""
        return F.normalize(self.system.encode_image(images.float()), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, text: Tensor) -> Tensor:
        """(N, D) MiniLM caption embeddings → (N, E) unit joint-space embeddings."""
        return F.normalize(self.system.encode_text(text.float()), dim=-1)


def load_run(run_dir: str | os.PathLike[str], checkpoint: str = "best") -> AlignedRun:
    """Load ``run_dir`` (written by ``alignkit train``): config, data and the ``best``/``last`` weights.

    Raises:
        ValueError: not a directory, no ``config.yaml``, no checkpoint, or weights that do not fit.
    """
    from alignkit.recipes import build_system, load_config, load_data
    from alignkit.train.checkpoint import checkpoint_digest, load_checkpoint

    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"checkpoint {run} is not a run directory (expected the --out of alignkit train)")
    if not (run / "config.yaml").is_file():
        raise ValueError(f"{run} has no config.yaml: not an alignkit train run")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    manifest = run / "checkpoints" / f"{checkpoint}.json"
    if checkpoint == "best" and not manifest.is_file():
        manifest = run / "checkpoints" / "last.json"
    if not manifest.is_file():
        raise ValueError(
            f"{run} has no checkpoints/{checkpoint}.json: train it first (alignkit train -o {run})"
        )
    config = load_config(run / "config.yaml")
    data = load_data(config["data"]["seed"], config["data"]["text_model"])
    system = build_system(config, data)
    try:
        load_checkpoint(manifest).load_into(system)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{manifest} does not fit the {config['recipe']} recipe's model: {err}") from None
    system.eval()
    digits = load_digits_captions(config["data"]["seed"])
    return AlignedRun(run, config, data, digits, system, manifest, checkpoint_digest(manifest))


def _source(run: AlignedRun) -> dict[str, str]:
    checkpoint = run.checkpoint.relative_to(run.path).as_posix() if run.checkpoint else ""
    return {"checkpoint": checkpoint, "digest": run.digest}


def stale_reason(run: AlignedRun) -> str | None:
    """Why ``RUN/captions/`` may not be reused with the run's current weights, or ``None`` when it may.

    Stale: it holds decoders or scores (:data:`_DERIVED`) but ``source.json`` is missing (written
    before digests were recorded) or names other weights than ``run.digest`` (the run was retrained).
    """
    base = _captions_dir(run)
    present = [name for name in _DERIVED if (base / name).exists()]
    if not present:
        return None
    recorded = _read_json(base / SOURCE_FILE) or {}
    if recorded.get("digest") == run.digest:
        return None
    if not recorded.get("digest"):
        why = "records no source checkpoint"
    else:
        old, new = str(recorded["digest"])[:12], run.digest[:12]
        why = f"comes from other weights (sha256 {old}…, the run now has {new}…)"
    return f"{base} ({', '.join(present)}) {why}: the run was retrained since"


def _clear_stale(run: AlignedRun) -> None:
    import shutil

    base = _captions_dir(run)
    for name in _DERIVED:
        target = base / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


# ==================================================================================================
# Decoders


def image_token_tower(width: int = 64) -> nn.Module:
    """CoCa's image tower for 8×8 digits: (N, 8, 8) → (N, 16, width) tokens.

    Conv3×3(1→32) → GELU → Conv3×3(32→width) → GELU → MaxPool2 gives a 4×4 grid of ``width``-channel
    cells; each cell is a token, plus a learned position embedding (captions say where the ink sits).
    """
    return _TokenTower(width)


class _TokenTower(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, width, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
        )
        self.position = nn.Parameter(torch.randn(16, width) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 3 or tuple(images.shape[1:]) != (8, 8):
            raise ValueError(f"images must have shape (N, 8, 8), got {tuple(images.shape)}")
        grid = self.conv(images.unsqueeze(1))  # (N, width, 4, 4)
        return grid.flatten(2).transpose(1, 2) + self.position


def _build(method: str, settings: CaptionSettings, vocab_size: int, embed_dim: int) -> nn.Module:
    s = settings
    if method == "coca":
        return CoCa(
            image_token_tower(64),
            64,
            vocab_size,
            embed_dim=embed_dim,
            dim=s.dim,
            num_heads=s.num_heads,
            unimodal_depth=s.depth,
            multimodal_depth=s.depth,
            max_length=s.max_length,
            dropout=s.dropout,
        )
    return PrefixCaptioner(
        embed_dim,
        vocab_size,
        s.prefix_length,
        s.mapping,
        s.dim,
        s.depth,
        s.num_heads,
        s.max_length,
        s.dropout,
    )


class _Fitting(nn.Module):
    """The Trainer's view of a decoder: batches ``[condition, tokens]``, optional CapDec noise."""

    def __init__(self, model: nn.Module, noise_variance: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.noise_variance = noise_variance

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        condition, tokens = batch
        if isinstance(self.model, CoCa):
            out = self.model(condition, tokens)
            return {k: out[k] for k in ("loss", "caption_loss", "contrastive_loss")}
        if self.noise_variance > 0:
            from alignkit.functional import noise_injection

            condition = noise_injection(condition, self.noise_variance)
        return {"loss": self.model.loss(condition, tokens)}


def _captions_dir(run: AlignedRun) -> Path:
    return run.path / CAPTIONS_DIR


def _tokenizer(run: AlignedRun) -> WordTokenizer:
    """The vocabulary of every caption template of the training images (saved once per run)."""
    path = _captions_dir(run) / "tokenizer.json"
    if path.is_file():
        payload = _read_decoder_json(path)
        try:
            return WordTokenizer.from_dict(payload)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    train = run.digits.splits["train"]
    tokenizer = WordTokenizer.fit([c for i in train for c in run.digits.all_captions[int(i)]])
    _write_decoder_json(path, tokenizer.to_dict())
    return tokenizer


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as out:
        json.dump(payload, out, indent=2, allow_nan=True)
        out.write("\n")


_DIGEST_KEY = "sha256"


def _write_decoder_json(path: Path, payload: dict[str, Any]) -> None:
    """``tokenizer.json`` / ``settings.json``, which shape and drive the decoders, with the SHA-256 of
    their content (:func:`alignkit.io.sha256_json`) beside it; the decoders' weights are checkpoints,
    digested by :mod:`alignkit.train.checkpoint`."""
    _write_json(path, {**payload, _DIGEST_KEY: sha256_json(payload)})


def _read_decoder_json(path: Path) -> dict[str, Any]:
    """A file written by :func:`_write_decoder_json`, its digest checked (files written before digests
    were stored have none and are read as they are)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not readable JSON ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    digest = payload.pop(_DIGEST_KEY, None)
    if digest is not None and digest != sha256_json(payload):
        raise ValueError(
            f"{path}: corrupt (SHA-256 mismatch of its content); delete {path.parent} to retrain the decoders"
        )
    return payload


def _conditions(run: AlignedRun, method: str, rows: Tensor) -> Tensor:
    """What ``method``'s decoder is trained on for ``rows``: images, image or text embeddings."""
    if method == "coca":
        return run.data.images[rows]
    if method == "clipcap":
        return run.image_embeddings(run.data.images[rows])
    return run.text_embeddings(run.data.text[rows])  # capdec (noise added per step), decap


def _fit_one(
    run: AlignedRun,
    method: str,
    settings: CaptionSettings,
    tokenizer: WordTokenizer,
    progress: bool,
    resume: bool,
) -> nn.Module:
    from alignkit.train import Trainer, seed_everything

    seed_everything(settings.seed)
    embed_dim = int(run.image_embeddings(run.data.images[:1]).shape[1])
    model = _build(method, settings, len(tokenizer), embed_dim)
    system = _Fitting(model, settings.noise_variance if method == "capdec" else 0.0)
    splits = {name: run.rows(name, settings.descriptive_only) for name in ("train", "val")}
    captions = run.data.captions
    tokens = {
        name: tokenizer.encode([captions[int(i)] for i in splits[name]], max_length=settings.max_length)
        for name in ("train", "val")
    }
    train = [_conditions(run, method, splits["train"]), tokens["train"]]
    val = [_conditions(run, method, splits["val"]), tokens["val"]] if len(splits["val"]) else None

    def evaluate(fitting: nn.Module) -> dict[str, float]:
        if val is None:
            return {}
        model = fitting.model
        if isinstance(model, CoCa):
            return {"val_loss": float(model(val[0], val[1])["caption_loss"])}
        return {"val_loss": float(model.loss(val[0], val[1]))}  # no noise: the clean input

    trainer = Trainer(
        system,
        train,
        epochs=_epochs_wanted(method, settings),
        lr=settings.lr,
        out_dir=_captions_dir(run) / method,
        batch_size=settings.batch_size,
        weight_decay=settings.weight_decay,
        warmup_fraction=0.05,
        evaluate=evaluate if val is not None else None,
        monitor="val_loss" if val is not None else "train_loss",
        seed=settings.seed,
        log_every=10,
        progress=f"alignkit caption: {method} decoder " if progress else False,
        resume=resume,
        device="cpu",
    )
    result = trainer.fit()
    if result.best_checkpoint is not None:
        trainer.load_best()
    return model.eval()


def _read_settings(run: AlignedRun) -> CaptionSettings | None:
    path = _captions_dir(run) / "settings.json"
    if not path.is_file():
        return None
    try:
        return CaptionSettings.from_dict(_read_decoder_json(path))
    except (TypeError, ValueError) as err:
        message = str(err)
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _settings_for(run: AlignedRun, settings: CaptionSettings | None) -> CaptionSettings:
    """``settings``, or those the run's decoders were trained with; a mismatch refuses to mix them."""
    saved = _read_settings(run)
    if settings is None:
        return saved or CaptionSettings()
    if saved is not None and saved != settings:
        trained = [
            m
            for m in ("clipcap", "capdec", "decap", "coca")
            if (_captions_dir(run) / m / "checkpoints" / "last.json").is_file()
        ]
        if trained:
            raise ValueError(
                f"{_captions_dir(run)} holds decoders ({', '.join(trained)}) trained with other settings; "
                f"delete that directory to retrain with new ones"
            )
    return settings


def _epochs_done(run: AlignedRun, name: str) -> int:
    """Epochs the ``name`` decoder has finished (0 when it has no checkpoint yet)."""
    from alignkit.train.checkpoint import load_checkpoint

    last = _captions_dir(run) / name / "checkpoints" / "last.json"
    if not last.is_file():
        return 0
    return int(load_checkpoint(last, verify=False).state.get("epoch", 0))


def _epochs_wanted(name: str, settings: CaptionSettings) -> int:
    return settings.coca_epochs if name == "coca" else settings.epochs


def load_captioner(run: AlignedRun, method: str) -> tuple[nn.Module, WordTokenizer, CaptionSettings]:
    """The trained decoder of ``method`` (its best checkpoint), the tokenizer and the settings.

    Raises:
        ValueError: unknown method; the decoder has not been trained, or its training was interrupted
            (``alignkit caption --fit`` trains it, or finishes it from its last checkpoint).
    """
    from alignkit.train.checkpoint import load_checkpoint

    if method not in TRAINED:
        raise ValueError(f"method must be one of {tuple(TRAINED)}, got {method!r}")
    name = TRAINED[method]
    manifest = _captions_dir(run) / name / "checkpoints" / "best.json"
    settings = _read_settings(run)
    fit = f"run alignkit caption {run.path} --fit --methods {method}"
    stale = stale_reason(run)
    if stale is not None:
        raise ValueError(f"{stale}; {fit} to retrain")
    if not manifest.is_file() or settings is None:
        raise ValueError(f"no trained {name} decoder in {_captions_dir(run)}: {fit}")
    done, wanted = _epochs_done(run, name), _epochs_wanted(name, settings)
    if done < wanted:
        raise ValueError(f"the {name} decoder stopped after {done} of {wanted} epochs: {fit} to finish it")
    tokenizer = _tokenizer(run)
    embed_dim = int(run.image_embeddings(run.data.images[:1]).shape[1])
    fitting = _Fitting(_build(name, settings, len(tokenizer), embed_dim))
    try:
        load_checkpoint(manifest).load_into(fitting)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{manifest} does not fit {_captions_dir(run) / 'settings.json'}: {err}") from None
    return fitting.model.eval(), tokenizer, settings


# ==================================================================================================
# Captioning


@torch.no_grad()
def caption_images(
    run: AlignedRun,
    images: Tensor,
    method: str = "clipcap",
    search: str = "beam",
    beam_size: int | None = None,
    decoders: Mapping[str, tuple[nn.Module, WordTokenizer, CaptionSettings]] | None = None,
    batch_size: int = 256,
) -> list[str]:
    """Caption (N, 8, 8) images in [0, 1] with ``method`` (one of :data:`METHODS`).

    ``search`` ("greedy" | "beam") and ``beam_size`` apply to the generating methods; iterative-beam
    always generates ``settings.candidates`` beams and keeps the one nearest to the image in the
    joint space. ``decoders`` reuses already-loaded decoders (``method`` → :func:`load_captioner`).
    """
    from alignkit.functional import memory_projection, nearest_candidates

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    images = _check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if beam_size is not None and (
        isinstance(beam_size, bool) or not isinstance(beam_size, int) or not 1 <= beam_size <= MAX_BEAMS
    ):
        raise ValueError(f"beam_size must be an integer in [1, {MAX_BEAMS}] (beams), got {beam_size!r}")
    if method == "iterative-memory":
        train = run.rows("train", (_read_settings(run) or CaptionSettings()).descriptive_only)
        memory = run.text_embeddings(run.data.text[train])
        chosen = nearest_candidates(run.image_embeddings(images), memory)
        return [run.data.captions[int(train[int(j)])] for j in chosen]
    model, tokenizer, settings = (decoders or {}).get(method) or load_captioner(run, method)
    beams = settings.beam_size if beam_size is None else beam_size
    memory = None
    if method == "decap":
        memory = run.text_embeddings(run.data.text[run.rows("train", settings.descriptive_only)])
    out: list[str] = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        if method == "coca":
            ids = model.generate(chunk, search, beams, settings.max_length)
        else:
            query = run.image_embeddings(chunk)
            if memory is not None:  # DeCap: onto the text memory
                query = memory_projection(query, memory, settings.decap_temperature)
            if method == "iterative-beam":
                out += _rerank(run, model, tokenizer, query, settings)
                continue
            ids = model.generate(query, search, beams, settings.max_length)
        out += tokenizer.batch_decode(ids)
    return out


def _rerank(
    run: AlignedRun,
    model: PrefixCaptioner,
    tokenizer: WordTokenizer,
    query: Tensor,
    settings: CaptionSettings,
) -> list[str]:
    """Iterative decoding: beams from the decoder, re-embedded (MiniLM → joint space); keep the nearest."""
    from alignkit.data.text import encode_texts
    from alignkit.functional import nearest_candidates

    ids, _ = model.beams(query, settings.candidates, settings.max_length)
    n, k = ids.shape[:2]
    texts = tokenizer.batch_decode(ids.reshape(n * k, -1))
    unique = sorted(set(texts))
    encoded = encode_texts(unique, model=run.config["data"]["text_model"])
    position = {t: i for i, t in enumerate(unique)}
    candidates = run.text_embeddings(encoded[[position[t] for t in texts]])
    groups = torch.arange(n).repeat_interleave(k)
    chosen = nearest_candidates(query, candidates, groups)
    return [texts[int(j)] for j in chosen]


def _check_images(images: Any) -> Tensor:
    """(N, 8, 8) or (8, 8) images in [0, 1] (checked by the digits' own image check) → float32 (N, 8, 8)."""
    array = _as_images(images)
    if tuple(array.shape[1:]) != (8, 8):
        raise ValueError(f"images must have shape (N, 8, 8) (scikit-learn digits), got {tuple(array.shape)}")
    return torch.from_numpy(array.astype(np.float32))


def read_images(path: str | os.PathLike[str]) -> Tensor:
    """Images to caption from a file: a ``.npy`` of (N, 8, 8) or (N, 64) values in [0, 1], or any file
    :func:`alignkit.io.load_embeddings` reads holding (N, 64) rows (an 8×8 image per row).

    Raises:
        ValueError: one line naming the file and the problem (pickled content is never loaded).
    """
    from alignkit.io import check_input_file, load_embeddings, read_npy

    file = Path(path)
    if file.suffix.lower() == ".npy":
        check_input_file(file)
        try:
            with open(file, "rb") as f:
                array = read_npy(f, file, os.fstat(f.fileno()).st_size)
        except OSError as err:
            raise ValueError(f"{file}: not a readable numeric .npy array ({err.strerror or err})") from None
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{file}: array has dtype {array.dtype}; expected numeric pixel values")
        tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    else:
        tensor = load_embeddings(file)
    if tensor.dim() == 2 and tensor.shape[1] == 64:
        tensor = tensor.reshape(-1, 8, 8)
    try:
        return _check_images(tensor)
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from None


# ==================================================================================================
# Evaluation


def evaluate_captions(
    captions: Sequence[str], digits: DigitsCaptions, rows: Sequence[int]
) -> dict[str, float]:
    """Score captions of the images ``rows`` of ``digits``.

    Returns:
        ``digit_accuracy`` (the caption names the right digit, word or numeral, and no other),
        ``attribute_accuracy`` (mean over the 7 attributes of :data:`~alignkit.data.ATTRIBUTE_WORDS`
        of the fraction of captions stating it correctly; a caption that does not mention it is
        wrong), ``attribute_precision`` (the same over the captions that mention it), ``bleu4``
        (corpus BLEU-4 against every caption template of the image, Papineni et al. 2002), and
        ``mean_length`` in words.
    """
    from alignkit.metrics import corpus_bleu

    rows = [int(i) for i in rows]
    truth = [digits.attribute_words(i) for i in rows]
    accuracy = caption_attribute_accuracy(captions, truth)
    precision = caption_attribute_accuracy(captions, truth, given_mention=True)
    names = list(ATTRIBUTE_WORDS)
    mentioned = [precision[n] for n in names if not np.isnan(precision[n])]
    return {
        "digit_accuracy": accuracy["digit"],
        "attribute_accuracy": float(np.mean([accuracy[n] for n in names])),
        "attribute_precision": float(np.mean(mentioned)) if mentioned else float("nan"),
        "bleu4": corpus_bleu(list(captions), [digits.all_captions[i] for i in rows]),
        "mean_length": float(np.mean([len(WordTokenizer.tokenize(c)) for c in captions])),
        **{f"{n}_accuracy": accuracy[n] for n in names},
    }


def fit_captioners(
    run_dir: str | os.PathLike[str],
    methods: Sequence[str] = METHODS,
    settings: CaptionSettings | None = None,
    progress: bool = True,
    resume: bool = True,
    searches: Sequence[str] = SEARCHES,
) -> dict[str, Any]:
    """Train the decoders ``methods`` need on ``run_dir``'s training split, caption its test images
    with each search and write ``RUN/captions/metrics.json`` and ``samples.json``.

    Already trained decoders are reused (``resume``: an interrupted one continues from its last
    checkpoint). Returns the metrics: ``{"methods": {method: {search: scores}}, "settings", …}``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    for search in searches:
        if search not in SEARCHES:
            raise ValueError(f"searches must be among {SEARCHES}, got {search!r}")
    start = time.perf_counter()
    run = load_run(run_dir)
    stale = stale_reason(run)
    if stale is not None:  # never reuse decoders or scores of other weights
        _say(progress, f"{stale}; retraining the decoders")
        _clear_stale(run)
    settings = _settings_for(run, settings)
    _write_decoder_json(_captions_dir(run) / "settings.json", dataclasses.asdict(settings))
    _write_json(_captions_dir(run) / SOURCE_FILE, _source(run))
    tokenizer = _tokenizer(run)
    decoders: dict[str, tuple[nn.Module, WordTokenizer, CaptionSettings]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        name = TRAINED.get(method)
        if name is None or name in decoders:
            continue
        t0 = time.perf_counter()
        finished = resume and _epochs_done(run, name) >= _epochs_wanted(name, settings)
        if finished:  # trained earlier: reuse it
            model = load_captioner(run, name)[0]
        else:  # new, or interrupted: the Trainer continues from the last checkpoint when resuming
            _say(progress, f"training the {name} decoder ({_epochs_wanted(name, settings)} epochs)")
            model = _fit_one(run, name, settings, tokenizer, progress, resume)
        decoders[name] = (model, tokenizer, settings)
        seconds[name] = time.perf_counter() - t0
    for method in methods:
        if method in TRAINED:
            decoders[method] = decoders[TRAINED[method]]
    test = run.digits.splits["test"]
    images = run.data.images[torch.as_tensor(test)]
    results: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    for method in methods:
        results[method] = {}
        for search in searches if method in ("clipcap", "capdec", "decap", "coca") else ("beam",):
            _say(
                progress,
                f"scoring {method} ({search} search) on all {len(test)} test images "
                "(for captions/metrics.json)",
            )
            captions = caption_images(run, images, method, search, decoders=decoders)
            results[method][search] = evaluate_captions(captions, run.digits, test)
            if search == "beam" or len(searches) == 1:
                samples[method] = [
                    {"index": int(i), "caption": c, "reference": run.digits.captions[int(i)]}
                    for i, c in zip(test[:12], captions[:12], strict=False)
                ]
    metrics = {
        "run": str(run.path),
        "recipe": run.config["recipe"],
        "checkpoint_digest": run.digest,
        "split": "test",
        "n_images": len(test),
        "settings": dataclasses.asdict(settings),
        "train_seconds": seconds,
        "seconds": time.perf_counter() - start,
        "methods": results,
    }
    previous = _read_metrics(run.path)
    if previous and previous.get("settings") == metrics["settings"]:  # keep other methods' results
        merged = {**previous.get("methods", {}), **results}
        metrics["methods"] = {m: merged[m] for m in METHODS if m in merged}
        old_samples = _read_json(_captions_dir(run) / "samples.json") or {}
        merged_samples = {**old_samples, **samples}
        samples = {m: merged_samples[m] for m in METHODS if m in merged_samples}
    _write_json(_captions_dir(run) / "metrics.json", metrics)
    _write_json(_captions_dir(run) / "samples.json", samples)
    return metrics


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"alignkit caption: {message}", file=sys.stderr, flush=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _read_metrics(run_dir: Path) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / CAPTIONS_DIR / "metrics.json")


def read_caption_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``RUN/captions/metrics.json`` as a dict, or ``None`` when absent or unreadable."""
    return _read_metrics(Path(run_dir))
