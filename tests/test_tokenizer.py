"""alignkit.data.tokenizer.WordTokenizer: tokens, ids, exact round trips, serialisation, bad input."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from alignkit.data import WordTokenizer, load_digits_captions

PAD, BOS, EOS, UNK = 0, 1, 2, 3


@pytest.fixture(scope="module")
def captions() -> list[str]:
    data = load_digits_captions(0)
    return [caption for per_image in data.all_captions for caption in per_image]


@pytest.fixture(scope="module")
def digits_tokenizer(captions: list[str]) -> WordTokenizer:
    return WordTokenizer.fit(captions)


# --------------------------------------------------------------------------------------------------
# tokenize


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (
            "a heavy handwritten zero (0), upright, thick strokes, tall and wide",
            [
                "a",
                "heavy",
                "handwritten",
                "zero",
                "(",
                "0",
                ")",
                ",",
                "upright",
                ",",
                "thick",
                "strokes",
                ",",
                "tall",
                "and",
                "wide",
            ],
        ),
        (
            "the digit 3: left-leaning, faint ink",
            ["the", "digit", "3", ":", "left-leaning", ",", "faint", "ink"],
        ),
        ("A Right-Leaning SEVEN!", ["a", "right-leaning", "seven", "!"]),
        ("  spaced\tout\n words ", ["spaced", "out", "words"]),
        ("2024abc12", ["2024", "abc", "12"]),
        ("-dash- a--b x-1", ["-", "dash", "-", "a", "-", "-", "b", "x", "-", "1"]),
        ("it's snake_case?", ["it", "'", "s", "snake", "_", "case", "?"]),
        ("a-b-c.d;e", ["a-b-c", ".", "d", ";", "e"]),
        ("café naïve", ["café", "naïve"]),
        ("<pad>", ["<", "pad", ">"]),  # a special's string is never one token
        ("", []),
        ("   ", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert WordTokenizer.tokenize(text) == tokens
    assert WordTokenizer(WordTokenizer.SPECIALS).tokenize(text) == tokens  # also on an instance


# --------------------------------------------------------------------------------------------------
# Round trip on the digits captions


def test_round_trip_every_digits_caption(captions: list[str], digits_tokenizer: WordTokenizer) -> None:
    tok = digits_tokenizer
    assert len(captions) == 1797 * 6
    for caption in captions:
        ids = tok.encode([caption])
        assert ids.shape == (1, len(tok.tokenize(caption)) + 2)
        assert UNK not in ids.tolist()[0]
        assert tok.decode(ids[0]) == caption
    batch = tok.encode(captions)
    assert batch.dtype == torch.long
    assert tok.batch_decode(batch) == captions


def test_round_trip_with_a_train_split_vocabulary(captions: list[str]) -> None:
    # A tokenizer fitted on one caption per training image still covers every caption word.
    data = load_digits_captions(0)
    tok = WordTokenizer.fit([data.captions[i] for i in data.splits["train"]])
    assert tok.batch_decode(tok.encode(captions)) == captions


def test_digits_vocabulary(digits_tokenizer: WordTokenizer) -> None:
    vocab = digits_tokenizer.vocab
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    for word in ("left-leaning", "right-leaning", "upright", "(", ")", ",", ":", "0", "9", "zero"):
        assert word in vocab
    assert len(digits_tokenizer) == len(vocab) == len(set(vocab))


# --------------------------------------------------------------------------------------------------
# Vocabulary order, specials, ids


def test_specials() -> None:
    assert (WordTokenizer.PAD, WordTokenizer.BOS, WordTokenizer.EOS, WordTokenizer.UNK) == (0, 1, 2, 3)
    assert WordTokenizer.SPECIALS == ("<pad>", "<bos>", "<eos>", "<unk>")
    tok = WordTokenizer.fit(["b a"])
    assert tok.vocab == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"]
    assert dict(tok.token_to_id) == {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "a": 4, "b": 5}
    # special strings in text are split into ordinary tokens, never read as special ids
    assert tok.encode(["<eos> a"]).tolist() == [[BOS, UNK, UNK, UNK, 4, EOS]]


def test_vocabulary_sorted_by_count_then_token() -> None:
    # counts: the 3, cat 2, a 2, "." 2, sat 1, mat 1 → (−count, token) order: the; "." < a < cat; mat < sat
    tok = WordTokenizer.fit(["the cat sat.", "the cat", "a mat.", "a the"])
    assert tok.vocab[4:] == ["the", ".", "a", "cat", "mat", "sat"]


def test_ids_deterministic(captions: list[str], digits_tokenizer: WordTokenizer) -> None:
    shuffled = list(captions)
    random.Random(0).shuffle(shuffled)
    again = WordTokenizer.fit(shuffled)
    assert again.vocab == digits_tokenizer.vocab
    assert torch.equal(again.encode(captions[:50]), digits_tokenizer.encode(captions[:50]))


def test_min_count() -> None:
    texts = ["a a b", "c a b"]  # a 3, b 2, c 1
    assert WordTokenizer.fit(texts).vocab[4:] == ["a", "b", "c"]
    assert WordTokenizer.fit(texts, min_count=2).vocab[4:] == ["a", "b"]
    assert WordTokenizer.fit(texts, min_count=3).vocab[4:] == ["a"]
    assert WordTokenizer.fit(texts, min_count=4).vocab == list(WordTokenizer.SPECIALS)
    tok = WordTokenizer.fit(texts, min_count=2)
    assert tok.encode(["c a b d"]).tolist() == [[BOS, UNK, 4, 5, UNK, EOS]]


def test_encode_padding_and_shape() -> None:
    tok = WordTokenizer.fit(["a b"])  # a → 4, b → 5
    ids = tok.encode(["a", "b a b", ""])
    assert ids.dtype == torch.long
    assert ids.tolist() == [
        [BOS, 4, EOS, PAD, PAD],
        [BOS, 5, 4, 5, EOS],
        [BOS, EOS, PAD, PAD, PAD],
    ]
    assert tok.encode(("a",)).tolist() == [[BOS, 4, EOS]]  # any sequence of str


def test_unknown_words_are_unk() -> None:
    tok = WordTokenizer.fit(["a thick two"])
    ids = tok.encode(["a thin two (2)"])
    a, thick, two = (tok.token_to_id[t] for t in ("a", "thick", "two"))
    assert thick not in ids.tolist()[0]
    assert ids.tolist() == [[BOS, a, UNK, two, UNK, UNK, UNK, EOS]]
    assert tok.decode(ids[0]) == "a <unk> two <unk> <unk> <unk>"


def test_truncation_keeps_eos() -> None:
    tok = WordTokenizer.fit(["a b c d"])  # a 4, b 5, c 6, d 7
    texts = ["a b c d", "a"]
    assert tok.encode(texts, max_length=4).tolist() == [[BOS, 4, 5, EOS], [BOS, 4, EOS, PAD]]
    assert tok.encode(texts, max_length=3).tolist() == [[BOS, 4, EOS], [BOS, 4, EOS]]
    assert tok.encode(texts, max_length=2).tolist() == [[BOS, EOS], [BOS, EOS]]
    # max_length at or above the longest row changes nothing: T is still the longest row
    full = tok.encode(texts)
    assert full.shape == (2, 6)
    assert torch.equal(tok.encode(texts, max_length=6), full)
    assert torch.equal(tok.encode(texts, max_length=100), full)
    # every row ends in EOS followed only by padding
    ids = tok.encode(["a b c d " * 5, "b", "c d"], max_length=5)
    for row in ids.tolist():
        end = row.index(EOS)
        assert row[0] == BOS
        assert all(v == PAD for v in row[end + 1 :])
    assert ids.shape == (3, 5)
    assert tok.decode(ids[0]) == "a b c"


def test_token_to_id_and_vocab_are_read_only_views() -> None:
    tok = WordTokenizer.fit(["a b"])
    with pytest.raises(TypeError):
        tok.token_to_id["z"] = 9  # type: ignore[index]
    vocab = tok.vocab
    vocab.append("z")
    assert tok.vocab == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"]
    assert len(tok) == 6
    assert repr(tok) == "WordTokenizer(vocab_size=6)"


# --------------------------------------------------------------------------------------------------
# decode


def test_decode_rules() -> None:
    tok = WordTokenizer.fit(["x ( y ) , . : ; ! ? -"])
    i = tok.token_to_id
    # a leading BOS is dropped, PAD skipped, decoding stops at the first EOS
    ids = [BOS, i["x"], PAD, i["y"], EOS, i["x"], EOS, PAD]
    assert tok.decode(ids) == "x y"
    assert tok.decode(torch.tensor(ids)) == "x y"
    assert tok.decode(np.array(ids, dtype=np.int64).tolist()) == "x y"
    assert tok.decode([np.int64(v) for v in ids]) == "x y"  # numpy integers are ids too
    assert tok.decode([i["x"], i["y"]]) == "x y"  # no BOS, no EOS
    assert tok.decode([]) == ""
    assert tok.decode([BOS, EOS]) == ""
    assert tok.decode([EOS, i["x"]]) == ""
    # only the *leading* BOS is dropped; a later one, and UNK, print as their strings
    assert tok.decode([BOS, BOS, i["x"], UNK]) == "<bos> x <unk>"
    # no space before , . : ; ) ! ? and none after (
    words = ["x", ",", "y", ".", "x", ":", "y", ";", "(", "x", ")", "!", "y", "?", "-", "x"]
    assert tok.decode([i[w] for w in words]) == "x, y. x: y; (x)! y? - x"
    assert tok.decode([i["("], i["("], i["x"], i[")"], i[")"]]) == "((x))"
    assert tok.decode([i[","], i["x"]]) == ", x"  # nothing to glue to at the start


def test_decode_round_trips_punctuated_text() -> None:
    texts = ["the digit 7: left-leaning, thin strokes, wide (sitting low)!", "is it 3? yes; 35."]
    tok = WordTokenizer.fit(texts)
    assert tok.batch_decode(tok.encode(texts)) == texts


def test_batch_decode() -> None:
    tok = WordTokenizer.fit(["a b"])
    ids = torch.tensor([[BOS, 4, 5, EOS, PAD], [BOS, 5, EOS, PAD, PAD], [4, 4, 4, 4, 4]], dtype=torch.int32)
    assert tok.batch_decode(ids) == ["a b", "b", "a a a a a"]
    assert tok.batch_decode(torch.zeros(0, 3, dtype=torch.long)) == []


# --------------------------------------------------------------------------------------------------
# Serialisation


def test_to_dict_from_dict_round_trip(captions: list[str], digits_tokenizer: WordTokenizer) -> None:
    d = digits_tokenizer.to_dict()
    loaded = WordTokenizer.from_dict(json.loads(json.dumps(d)))
    assert loaded.vocab == digits_tokenizer.vocab
    assert dict(loaded.token_to_id) == dict(digits_tokenizer.token_to_id)
    assert torch.equal(loaded.encode(captions[:100]), digits_tokenizer.encode(captions[:100]))
    assert set(d) == {"format", "version", "vocab"}
    assert WordTokenizer(d["vocab"]).vocab == digits_tokenizer.vocab


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: ["not", "a", "dict"], "d must be a dict"),
        (lambda d: {k: v for k, v in d.items() if k != "vocab"}, "keys"),
        (lambda d: {**d, "extra": 1}, "keys"),
        (lambda d: {**d, "format": "something.Else"}, r"d\['format'\]"),
        (lambda d: {**d, "version": 2}, r"d\['version'\]"),
        (lambda d: {**d, "version": True}, r"d\['version'\]"),
        (lambda d: {**d, "vocab": "abc"}, r"d\['vocab'\] must be a list"),
        (lambda d: {**d, "vocab": d["vocab"][1:]}, r"d\['vocab'\] must start with the specials"),
        (lambda d: {**d, "vocab": [*d["vocab"], "a"]}, r"d\['vocab'\]\[6\] = 'a' is a duplicate"),
        (lambda d: {**d, "vocab": [*d["vocab"], "<pad>"]}, r"d\['vocab'\]\[6\] = '<pad>' is a duplicate"),
        (lambda d: {**d, "vocab": [*d["vocab"], 7]}, r"d\['vocab'\]\[6\] must be a str"),
        (lambda d: {**d, "vocab": [*d["vocab"], "two words"]}, r"d\['vocab'\]\[6\].*single"),
        (lambda d: {**d, "vocab": [*d["vocab"], "Upper"]}, r"d\['vocab'\]\[6\].*single"),
        (lambda d: {**d, "vocab": [*d["vocab"], ""]}, r"d\['vocab'\]\[6\].*single"),
    ],
)
def test_from_dict_rejects_malformed(mutate: Callable[[dict], Any], match: str) -> None:
    d = WordTokenizer.fit(["a b"]).to_dict()
    with pytest.raises(ValueError, match=match):
        WordTokenizer.from_dict(mutate(d))


def test_constructor_validates_vocab() -> None:
    with pytest.raises(ValueError, match="vocab must be a list"):
        WordTokenizer("abc")
    with pytest.raises(ValueError, match="vocab must start with the specials"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match=r"vocab\[5\] = 'x' is a duplicate"):
        WordTokenizer([*WordTokenizer.SPECIALS, "x", "x"])


# --------------------------------------------------------------------------------------------------
# Bad input


def test_fit_errors() -> None:
    with pytest.raises(ValueError, match="texts must be a sequence of strings, got a single str"):
        WordTokenizer.fit("a b c")
    with pytest.raises(ValueError, match="texts must be a sequence of strings, got set"):
        WordTokenizer.fit({"a", "b"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str, got int"):
        WordTokenizer.fit(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="texts must hold at least one string"):
        WordTokenizer.fit([])
    with pytest.raises(ValueError, match="texts must contain at least one token"):
        WordTokenizer.fit(["", "  \n"])
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="min_count"):
            WordTokenizer.fit(["a"], min_count=bad)  # type: ignore[arg-type]


def test_encode_errors() -> None:
    tok = WordTokenizer.fit(["a b"])
    with pytest.raises(ValueError, match="texts must be a sequence of strings, got a single str"):
        tok.encode("a b")
    with pytest.raises(ValueError, match=r"texts\[0\] must be a str, got bytes"):
        tok.encode([b"a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="texts must be a sequence of strings, got Tensor"):
        tok.encode(torch.tensor([1]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="texts must hold at least one string"):
        tok.encode([])
    for bad in (1, 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_length"):
            tok.encode(["a"], max_length=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="text must be a str"):
        WordTokenizer.tokenize(3)  # type: ignore[arg-type]


def test_decode_errors() -> None:
    tok = WordTokenizer.fit(["a b"])  # V = 6
    with pytest.raises(ValueError, match=r"ids must have shape \(T,\), got \(1, 3\)"):
        tok.decode(torch.tensor([[1, 4, 2]]))
    with pytest.raises(ValueError, match=r"ids must have shape \(T,\), got \(\)"):
        tok.decode(torch.tensor(4))
    with pytest.raises(ValueError, match=r"ids must hold integer ids, got a tensor of dtype torch\.float32"):
        tok.decode(torch.tensor([1.0, 4.0]))
    with pytest.raises(ValueError, match=r"ids must hold integer ids, got a tensor of dtype torch\.bool"):
        tok.decode(torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"ids must hold ids in \[0, 6\).*got 6"):
        tok.decode([1, 6])
    with pytest.raises(ValueError, match=r"ids must hold ids in \[0, 6\).*got -1"):
        tok.decode(torch.tensor([1, -1, 2]))
    with pytest.raises(ValueError, match=r"ids\[1\] must be an integer id, got float"):
        tok.decode([1, 4.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"ids\[0\] must be an integer id, got bool"):
        tok.decode([True])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="ids must be a sequence of ints or a 1-D integer tensor"):
        tok.decode("abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ids must be a sequence of ints or a 1-D integer tensor"):
        tok.decode(5)  # type: ignore[arg-type]


def test_batch_decode_errors() -> None:
    tok = WordTokenizer.fit(["a b"])
    with pytest.raises(ValueError, match=r"ids must have shape \(N, T\), got \(3,\)"):
        tok.batch_decode(torch.tensor([1, 4, 2]))
    with pytest.raises(ValueError, match="ids must be a 2-D integer tensor"):
        tok.batch_decode([[1, 4, 2]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ids must hold integer ids"):
        tok.batch_decode(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"ids must hold ids in \[0, 6\).*got 99"):
        tok.batch_decode(torch.tensor([[1, 4, 2], [1, 99, 2]]))
