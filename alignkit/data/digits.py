"""scikit-learn's 8×8 handwritten digits with captions measured on the pixels.

    from alignkit.data.digits import load_digits_captions, class_prompts
    data = load_digits_captions(seed=0)
    data.images[data.splits["train"]]      # (N_train, 8, 8) float32 in [0, 1]
    data.captions[0]                       # 'a heavy handwritten zero (0), upright, thick strokes, ...'
    prompts = class_prompts()              # 10 lists of zero-shot prompts, one list per digit

The images are the 1,797 digits bundled with scikit-learn (``sklearn.datasets.load_digits``; no
download), scaled from 0…16 to [0, 1]. Each caption names the digit *and* describes how it was
written, with words bucketed from quantities measured on the pixels, so that two images of the same
digit usually get different captions and image–text retrieval is instance-level, not only
class-level.

Attributes (measured by :func:`measure_attributes`; pixel value ``p[r, c]`` in [0, 1], row ``r``
counted downwards from the top, column ``c`` from the left; ink mass ``m = Σ p``; centroid
``r̄ = Σ r·p / m``, ``c̄ = Σ c·p / m``; central moments ``μ_ab = Σ (c − c̄)^a (r − r̄)^b p``):

============  =========================================  ==============================================
attribute     measurement                                words (buckets)
============  =========================================  ==============================================
ink           ``m``, the total ink                       faint / medium / heavy: tertiles of the
                                                         training split (medians likewise)
slant         ``−μ11 / μ02``: columns moved right per    left-leaning (< −0.1) / upright / right-leaning
              row going up (the deskewing shear)         (> 0.1): fixed, symmetric about 0
height        ``sqrt(12·μ02/m + 1)``: the length of a    short / tall: split at the median
              uniform bar with the same vertical spread
width         ``sqrt(12·μ20/m + 1)``, likewise across    narrow / wide: split at the median
thickness     ``m / #{p > 0}``: mean value of the inked  thin / thick: split at the median (thin pen
              pixels                                     strokes leave many faint, partly-covered pixels)
vertical      ``r̄``, the row of the ink centroid        high / low: split at the median
horizontal    ``c̄``, the column of the ink centroid     left / right: split at the median
============  =========================================  ==============================================

Height and width are the "soft" extents of the ink rather than its hard bounding box because the
dataset was size-normalised: the hard bounding box is 8 rows tall for all 1,797 images. For a bar
of ``L`` equal pixels the soft extent is exactly ``L``. The data-driven thresholds come from the
whole dataset (pixels only, no labels: :func:`digits_thresholds`), and the same thresholds are used
for any other image passed to :func:`attribute_words`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ATTRIBUTE_WORDS",
    "DEFAULT_TEMPLATES",
    "DIGIT_WORDS",
    "SEEN_PROMPT_TEMPLATES",
    "SLANT_THRESHOLD",
    "ZERO_SHOT_TEMPLATES",
    "DigitsCaptions",
    "attribute_words",
    "caption_attribute_accuracy",
    "class_prompts",
    "digits_thresholds",
    "load_digits_captions",
    "measure_attributes",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: The words of each attribute, from the low bucket to the high one (see the module docstring).
ATTRIBUTE_WORDS: Mapping[str, tuple[str, ...]] = {
    "ink": ("faint", "medium", "heavy"),
    "slant": ("left-leaning", "upright", "right-leaning"),
    "height": ("short", "tall"),
    "width": ("narrow", "wide"),
    "thickness": ("thin", "thick"),
    "vertical": ("high", "low"),
    "horizontal": ("left", "right"),
}

#: |−μ11/μ02| above this is a lean: about one column of shift over ten rows (≈ 6°).
SLANT_THRESHOLD = 0.1

#: Caption templates; one is picked per image (by seed). Fields: see :func:`load_digits_captions`.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a {ink} handwritten {digit_word} ({digit}), {slant}, {thickness} strokes, {size}",
    "a {slant} handwritten {digit_word} with {thickness} {ink} strokes, {height} and {width}",
    "the digit {digit}: {slant}, {ink} ink, {thickness} strokes, {width}, sitting {position}",
    "a {width}, {height} {digit_word} in {ink} {thickness} strokes, {slant}",
    "a {thickness}, {slant} {digit_word} drawn {vertical} on the grid with {ink} ink",
    "a photo of the number {digit_word}",
)

#: Zero-shot class prompts (CLIP-style prompt ensembling); fields ``{word}`` and ``{digit}``. None of
#: them is a caption template (:data:`DEFAULT_TEMPLATES`) or any part of a caption, so zero-shot
#: accuracy measures transfer to phrasings never seen in training.
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a scan of a handwritten {word}",
    "the numeral {digit}",
    "an image showing the digit {word}",
    "{word}, written by hand",
    "a small picture of a {word}",
)

#: The one training caption template that names only the digit ("a photo of the number three"):
#: zero-shot with it as the only prompt is reported separately, labelled as a seen template.
SEEN_PROMPT_TEMPLATES: tuple[str, ...] = ("a photo of the number {word}",)

_CAPTION_FIELDS = (
    "digit",
    "digit_word",
    "ink",
    "slant",
    "thickness",
    "height",
    "width",
    "size",
    "vertical",
    "horizontal",
    "position",
)
_PROMPT_FIELDS = ("word", "digit", "digit_word")
_MEASUREMENTS = ("ink", "slant", "height", "width", "thickness", "vertical", "horizontal")


@dataclass
class DigitsCaptions:
    """The captioned digits returned by :func:`load_digits_captions`.

    Attributes:
        images: (N, 8, 8) float32 in [0, 1] (scikit-learn's 0…16 divided by 16).
        labels: (N,) int64 digit labels 0…9.
        captions: N strings, the caption picked for each image.
        all_captions: N lists, every template filled in for each image (for evaluation).
        template_ids: (N,) int64, which template ``captions[i]`` used.
        attributes: name → (N,) array of words (see :data:`ATTRIBUTE_WORDS`).
        measurements: name → (N,) float64 array, the values the words were bucketed from.
        thresholds: name → bucket boundaries used (see :func:`digits_thresholds`).
        splits: ``"train"``, ``"val"``, ``"test"`` → sorted int64 indices; disjoint, covering 0…N−1,
            stratified by label.
        templates: the caption templates.
        seed: the seed that picked templates and splits.
    """

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    all_captions: list[list[str]]
    template_ids: np.ndarray
    attributes: dict[str, np.ndarray]
    measurements: dict[str, np.ndarray]
    thresholds: dict[str, tuple[float, ...]]
    splits: dict[str, np.ndarray]
    templates: tuple[str, ...]
    seed: int = 0
    class_names: tuple[str, ...] = field(default=DIGIT_WORDS)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def attribute_words(self, index: int) -> dict[str, str]:
        """The attribute words of image ``index`` plus its ``"digit"`` word, as in :func:`attribute_words`."""
        if not isinstance(index, (int, np.integer)) or not -len(self) <= int(index) < len(self):
            raise ValueError(f"index must be an integer in [0, {len(self)}), got {index!r}")
        words = {name: str(values[index]) for name, values in self.attributes.items()}
        words["digit"] = DIGIT_WORDS[int(self.labels[index])]
        return words


# --------------------------------------------------------------------------------------------------
# Measuring


def _as_images(images: Any, name: str = "images") -> np.ndarray:
    """``images`` as a float64 (N, H, W) array in [0, 1]; (H, W) becomes (1, H, W)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().double().numpy()
    if not isinstance(images, np.ndarray):
        raise ValueError(
            f"{name} must be a numpy array or torch.Tensor of shape (N, H, W), got {type(images).__name__}"
        )
    if images.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {images.dtype}")
    array = np.asarray(images, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    shape = "(" + ", ".join(str(s) for s in images.shape) + ")"
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W) with no empty axis, got {shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite values (NaN or Inf) in shape {shape}")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(
            f"{name} must hold values in [0, 1] (divide scikit-learn's 0…16 digits by 16), got range "
            f"[{array.min():g}, {array.max():g}] in shape {shape}"
        )
    return array


def measure_attributes(images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """The raw measurements behind the caption words, one value per image.

    Shapes: ``images`` (N, H, W) or (H, W), values in [0, 1] → name → (N,) float64 for the names
    ``ink``, ``slant``, ``height``, ``width``, ``thickness``, ``vertical``, ``horizontal``.

    Formulas (row ``r`` downwards, column ``c`` rightwards, ``m = Σ p``, centroid ``(r̄, c̄)``,
    ``μ_ab = Σ (c − c̄)^a (r − r̄)^b p`` — the image moments of Hu, 1962, "Visual pattern recognition
    by moment invariants")::

        ink = m                       slant = −μ11 / μ02  (0 when μ02 = 0)
        height = sqrt(12·μ02/m + 1)   width = sqrt(12·μ20/m + 1)
        thickness = m / #{p > 0}      vertical = r̄,  horizontal = c̄

    A blank image (m = 0) measures 0 for everything (and so gets the low words, and "upright").

    Cost: O(N·H·W) time and memory.
    """
    x = _as_images(images)
    _, h, w = x.shape
    rows = np.arange(h, dtype=np.float64)[None, :, None]
    cols = np.arange(w, dtype=np.float64)[None, None, :]
    mass = x.sum((1, 2))
    blank = mass <= 0
    safe = np.where(blank, 1.0, mass)
    r_bar = (x * rows).sum((1, 2)) / safe
    c_bar = (x * cols).sum((1, 2)) / safe
    dr = rows - r_bar[:, None, None]
    dc = cols - c_bar[:, None, None]
    mu02 = (x * dr * dr).sum((1, 2))
    mu20 = (x * dc * dc).sum((1, 2))
    mu11 = (x * dr * dc).sum((1, 2))
    # μ11² ≤ μ20·μ02 (Cauchy–Schwarz): μ02 = 0 forces μ11 = 0, an upright (horizontal) stroke.
    tiny = mu02 <= 1e-12 * safe
    slant = np.where(tiny, 0.0, -mu11 / np.where(tiny, 1.0, mu02))
    active = (x > 0).sum((1, 2))
    zero = np.zeros_like(mass)
    return {
        "ink": mass,
        "slant": slant + 0.0,  # no negative zeros
        "height": np.where(blank, zero, np.sqrt(12.0 * mu02 / safe + 1.0)),
        "width": np.where(blank, zero, np.sqrt(12.0 * mu20 / safe + 1.0)),
        "thickness": np.where(blank, zero, mass / np.maximum(active, 1)),
        "vertical": np.where(blank, zero, r_bar),
        "horizontal": np.where(blank, zero, c_bar),
    }


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.datasets.load_digits()``'s ``images`` (1797, 8, 8) float64 in 0..16 and ``target``
    (1797,) int, read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``)
    without importing scikit-learn, which takes 1-2 s; through ``load_digits`` if that file is not
    where it has been since scikit-learn 0.x. Cost: parsing a 0.2 MB text file, ~0.05 s."""
    spec = importlib.util.find_spec("sklearn")
    where = spec.submodule_search_locations if spec is not None else None
    path = Path(next(iter(where))) / "datasets" / "data" / "digits.csv.gz" if where else None
    if path is None or not path.is_file():  # pragma: no cover - every scikit-learn release has it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target)
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    raw_images, raw_labels = _sklearn_digits()
    images = (raw_images / 16.0).astype(np.float32)
    labels = raw_labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=8)
def _thresholds(rows: tuple[int, ...] | None = None) -> tuple[tuple[str, tuple[float, ...]], ...]:
    images, _ = _raw_digits()
    values = measure_attributes(images if rows is None else images[np.asarray(rows, dtype=np.int64)])
    out: dict[str, tuple[float, ...]] = {}
    for name, words in ATTRIBUTE_WORDS.items():
        if name == "slant":
            out[name] = (-SLANT_THRESHOLD, SLANT_THRESHOLD)
        else:
            qs = np.linspace(0.0, 1.0, len(words) + 1)[1:-1]
            out[name] = tuple(float(v) for v in np.quantile(values[name], qs))
    return tuple(out.items())


def digits_thresholds(rows: Sequence[int] | None = None) -> dict[str, tuple[float, ...]]:
    """Bucket boundaries per attribute: tertiles / medians of the digits ``rows`` (default all 1,797;
    :func:`load_digits_captions` passes its training split, so no test image shapes a caption
    word's boundary), ±0.1 for slant.

    A value ``v`` gets word ``ATTRIBUTE_WORDS[name][j]`` where ``j`` is the number of boundaries
    strictly below ``v`` (so a value equal to a boundary falls in the lower bucket).

    Cost: one pass over the rows (O(N·64)) on the first call, cached afterwards.
    """
    return dict(_thresholds(None if rows is None else tuple(int(r) for r in rows)))


def _bucket(values: Mapping[str, np.ndarray], thresholds: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    words: dict[str, np.ndarray] = {}
    for name, vocabulary in ATTRIBUTE_WORDS.items():
        bounds = np.asarray(thresholds[name], dtype=np.float64)
        index = np.searchsorted(bounds, values[name], side="left")  # number of bounds < v
        words[name] = np.asarray(vocabulary)[index]
    return words


def _check_thresholds(thresholds: Mapping[str, Sequence[float]] | None) -> dict[str, tuple[float, ...]]:
    if thresholds is None:
        return digits_thresholds()
    if not isinstance(thresholds, Mapping):
        raise ValueError(f"thresholds must be a mapping name → boundaries, got {type(thresholds).__name__}")
    merged = digits_thresholds()
    for name, bounds in thresholds.items():
        if name not in ATTRIBUTE_WORDS:
            raise ValueError(f"thresholds has unknown attribute {name!r}; known: {tuple(ATTRIBUTE_WORDS)}")
        values = tuple(float(b) for b in bounds)
        need = len(ATTRIBUTE_WORDS[name]) - 1
        if len(values) != need or any(not np.isfinite(v) for v in values) or list(values) != sorted(values):
            raise ValueError(
                f"thresholds[{name!r}] must be {need} finite increasing number(s), got {tuple(bounds)!r}"
            )
        merged[name] = values
    return merged


def attribute_words(
    images: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    thresholds: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, str]]:
    """The attribute words of each image, e.g. ``{"ink": "heavy", "slant": "upright", ...}``.

    Used to build captions and to score generated captions (:func:`caption_attribute_accuracy`).

    Args:
        images: (N, H, W) or (H, W), values in [0, 1].
        labels: optional (N,) digit labels 0…9; adds ``"digit": DIGIT_WORDS[label]``.
        thresholds: bucket boundaries per attribute; missing ones default to
            :func:`digits_thresholds`, so new images are described on the digits' scale.

    Returns:
        N dicts attribute → word (keys of :data:`ATTRIBUTE_WORDS`, plus ``"digit"`` with labels).

    Cost: O(N·H·W).
    """
    values = measure_attributes(images)
    n = values["ink"].shape[0]
    words = _bucket(values, _check_thresholds(thresholds))
    label_array = None if labels is None else _check_labels(labels, n)
    out = []
    for i in range(n):
        item = {name: str(words[name][i]) for name in ATTRIBUTE_WORDS}
        if label_array is not None:
            item["digit"] = DIGIT_WORDS[int(label_array[i])]
        out.append(item)
    return out


def _check_labels(labels: Any, n: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.dtype.kind not in "iu" or array.shape != (n,):
        raise ValueError(f"labels must be {n} integers 0…9 of shape ({n},), got {array.dtype} {array.shape}")
    if n and (array.min() < 0 or array.max() > 9):
        raise ValueError(f"labels must be digits 0…9, got range [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*")
_NUMERAL = re.compile(r"(?<![0-9.])[0-9](?![0-9.])")


def caption_attribute_accuracy(
    captions: Sequence[str], words: Sequence[Mapping[str, str]], given_mention: bool = False
) -> dict[str, float]:
    """How often generated captions state each attribute correctly.

    Caption ``i`` is right about attribute ``a`` when it contains the word ``words[i][a]`` and no
    other word of that attribute (``ATTRIBUTE_WORDS[a]``, or :data:`DIGIT_WORDS` for ``"digit"``), as
    whole lower-cased tokens (so "left" and "left-leaning" are different words). A lone numeral
    "0"…"9" counts as the digit's word (the caption "the digit 3: …" names a three). A caption that
    does not mention the attribute is wrong about it, unless ``given_mention``.

    Args:
        captions: N generated strings.
        words: N dicts from :func:`attribute_words` (or :meth:`DigitsCaptions.attribute_words`).
        given_mention: score each attribute only over the captions that mention it (a precision: is
            what is said right?); an attribute no caption mentions scores NaN and is left out of the
            mean.

    Returns:
        attribute → fraction of captions right about it, plus ``"mean"`` over the attributes.

    Cost: O(total caption length).
    """
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise ValueError(f"captions must be a list of strings, got {type(captions).__name__}")
    if len(captions) != len(words) or not captions:
        raise ValueError(
            f"captions and words must be non-empty and of equal length, got {len(captions)} and {len(words)}"
        )
    vocab: dict[str, tuple[str, ...]] = {**ATTRIBUTE_WORDS, "digit": DIGIT_WORDS}
    names = list(words[0])
    for name in names:
        if name not in vocab:
            raise ValueError(f"words has unknown attribute {name!r}; known: {tuple(vocab)}")
    hits = dict.fromkeys(names, 0)
    mentions = dict.fromkeys(names, 0)
    for i, (caption, truth) in enumerate(zip(captions, words, strict=True)):
        if not isinstance(caption, str):
            raise ValueError(f"captions[{i}] must be a str, got {type(caption).__name__}")
        if set(truth) != set(names):
            raise ValueError(f"words[{i}] has attributes {sorted(truth)}, expected {sorted(names)}")
        text = caption.lower()
        tokens = set(_TOKEN.findall(text)) | {DIGIT_WORDS[int(d)] for d in _NUMERAL.findall(text)}
        for name in names:
            said = tokens.intersection(vocab[name])
            hits[name] += said == {truth[name]}
            mentions[name] += bool(said)
    if given_mention:
        out = {name: hits[name] / mentions[name] if mentions[name] else float("nan") for name in names}
    else:
        out = {name: hits[name] / len(captions) for name in names}
    scored = [out[name] for name in names if not np.isnan(out[name])]
    out["mean"] = float(np.mean(scored)) if scored else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# Captions and prompts


def _check_templates(templates: Any, fields: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"{name} must be a non-empty sequence of format strings, got {templates!r}")
    out = []
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(template).__name__}")
        try:
            used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as err:
            raise ValueError(f"{name}[{i}] is not a valid format string ({err}): {template!r}") from None
        for used_field in used:
            if used_field not in fields:
                raise ValueError(
                    f"{name}[{i}] uses unknown field {{{used_field}}} in {template!r}; "
                    f"allowed: {tuple(fields)}"
                )
        out.append(template)
    return tuple(out)


def class_prompts(templates: Sequence[str] = ZERO_SHOT_TEMPLATES) -> list[list[str]]:
    """Zero-shot prompts: for each digit 0…9, every template filled in.

    Fields: ``{word}`` / ``{digit_word}`` ("three") and ``{digit}`` ("3"). Embed each prompt, average
    the (normalised) embeddings of a digit's prompts and renormalise to get its class vector
    (prompt ensembling, Radford et al., 2021, "Learning Transferable Visual Models From Natural
    Language Supervision").

    Returns:
        10 lists of ``len(templates)`` strings.
    """
    checked = _check_templates(templates, _PROMPT_FIELDS, "templates")
    return [
        [t.format(word=word, digit_word=word, digit=digit) for t in checked]
        for digit, word in enumerate(DIGIT_WORDS)
    ]


def _check_split(split: Any) -> tuple[float, float, float]:
    ok = isinstance(split, Sequence) and not isinstance(split, str) and len(split) == 3
    values = tuple(float(v) for v in split) if ok else ()
    if (
        not ok
        or any(not np.isfinite(v) or v < 0 for v in values)
        or values[0] <= 0
        or values[2] <= 0
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise ValueError(
            "split must be three fractions (train, val, test) ≥ 0 summing to 1 with train and test > 0, "
            f"got {split!r}"
        )
    return values  # type: ignore[return-value]


def _stratified_split(labels: np.ndarray, split: tuple[float, float, float], seed: int) -> dict:
    from alignkit.data.splits import stratified_holdout  # sklearn's train_test_split, without sklearn

    index = np.arange(labels.shape[0])
    train_frac, val_frac, test_frac = split
    rest, test = stratified_holdout(index, labels, test_frac, seed)
    if val_frac > 0:
        share = val_frac / (train_frac + val_frac)
        train, val = stratified_holdout(rest, labels[rest], share, seed)
    else:
        train, val = rest, index[:0]
    parts = {"train": train, "val": val, "test": test}
    return {name: np.sort(part).astype(np.int64) for name, part in parts.items()}


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _articles(text: str) -> str:
    """'a upright three' → 'an upright three' (the words are filled in after the article)."""
    return _A_BEFORE_VOWEL.sub(lambda m: m.group(1) + "n ", text)


def load_digits_captions(
    seed: int = 0,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    split: Sequence[float] = (0.7, 0.1, 0.2),
) -> DigitsCaptions:
    """scikit-learn's 1,797 digits with one caption per image and a stratified train/val/test split.

    Each image's attribute words (module docstring) fill every template; ``numpy.random.default_rng
    (seed)`` picks one template per image for ``captions`` and ``all_captions`` keeps them all. The
    split is two ``sklearn.model_selection.train_test_split`` calls with ``stratify=labels`` and
    ``random_state=seed`` (test first, then validation out of the rest), so it is fixed by ``seed``.

    Template fields: ``{digit}`` ("3"), ``{digit_word}`` ("three"), ``{ink}``, ``{slant}``,
    ``{thickness}``, ``{height}``, ``{width}``, ``{vertical}``, ``{horizontal}`` (the attribute
    words), ``{size}`` ("tall and narrow") and ``{position}`` ("high and to the left"). An "a"
    followed by a vowel in a filled-in caption becomes "an".

    Args:
        seed: picks the templates and the split; an integer ≥ 0.
        templates: caption templates (default :data:`DEFAULT_TEMPLATES`).
        split: fractions (train, val, test), ≥ 0, summing to 1; train and test > 0.

    Returns:
        A :class:`DigitsCaptions`.

    Cost: O(N·64) to measure, O(N·T) strings for T templates; about 0.1 s.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    seed = int(seed)
    checked = _check_templates(templates, _CAPTION_FIELDS, "templates")
    fractions = _check_split(split)
    raw_images, raw_labels = _raw_digits()
    images, labels = raw_images.copy(), raw_labels.copy()
    splits = _stratified_split(labels, fractions, seed)
    thresholds = digits_thresholds(splits["train"])
    values = measure_attributes(images)
    words = _bucket(values, thresholds)
    n = labels.shape[0]
    all_captions: list[list[str]] = []
    for i in range(n):
        fields = {name: str(words[name][i]) for name in ATTRIBUTE_WORDS}
        fields["digit"] = str(int(labels[i]))
        fields["digit_word"] = DIGIT_WORDS[int(labels[i])]
        fields["size"] = f"{fields['height']} and {fields['width']}"
        fields["position"] = f"{fields['vertical']} and to the {fields['horizontal']}"
        all_captions.append([_articles(t.format(**fields)) for t in checked])
    template_ids = np.random.default_rng(seed).integers(0, len(checked), size=n).astype(np.int64)
    captions = [all_captions[i][int(template_ids[i])] for i in range(n)]
    return DigitsCaptions(
        images=images,
        labels=labels,
        captions=captions,
        all_captions=all_captions,
        template_ids=template_ids,
        attributes=words,
        measurements=values,
        thresholds=thresholds,
        splits=splits,
        templates=checked,
        seed=seed,
    )
