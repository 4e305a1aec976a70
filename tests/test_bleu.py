"""alignkit.metrics.bleu: against a slow loop reference, hand-computed values and nltk."""

from __future__ import annotations

import math
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.data import WordTokenizer
from alignkit.metrics import corpus_bleu, sentence_bleu

# --------------------------------------------------------------------------------------------------
# Slow reference: plain loops over lists, no Counter / dict; p_n combined as a product of powers
# (not in log space), so it shares no code path with the implementation.


def _ngram_list(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    out = []
    for k in range(len(tokens) - n + 1):
        out.append(tuple(tokens[k : k + n]))
    return out


def _occurrences(gram: tuple[str, ...], grams: list[tuple[str, ...]]) -> int:
    count = 0
    for other in grams:
        if other == gram:
            count += 1
    return count


def _closest_length(hyp_len: int, refs: list[list[str]]) -> int:
    best = len(refs[0])
    for ref in refs[1:]:
        gap, best_gap = abs(len(ref) - hyp_len), abs(best - hyp_len)
        if gap < best_gap or (gap == best_gap and len(ref) < best):
            best = len(ref)
    return best


def _ref_bleu(
    hyps: list[list[str]],
    refs: list[list[list[str]]],
    weights: list[float],
    smoothing: bool = False,
) -> float:
    max_n = len(weights)
    matches = [0] * max_n
    totals = [0] * max_n
    c = 0
    r = 0
    for hyp, rs in zip(hyps, refs, strict=True):
        c += len(hyp)
        r += _closest_length(len(hyp), rs)
        for n in range(1, max_n + 1):
            hyp_grams = _ngram_list(hyp, n)
            totals[n - 1] += len(hyp_grams)
            distinct: list[tuple[str, ...]] = []
            for gram in hyp_grams:
                if gram not in distinct:
                    distinct.append(gram)
            for gram in distinct:
                in_hyp = _occurrences(gram, hyp_grams)
                in_refs = 0
                for ref in rs:
                    in_refs = max(in_refs, _occurrences(gram, _ngram_list(ref, n)))
                matches[n - 1] += min(in_hyp, in_refs)
    if c == 0:
        return 0.0
    score = 1.0
    for n in range(1, max_n + 1):
        if weights[n - 1] == 0:
            continue
        m, d = matches[n - 1], totals[n - 1]
        if smoothing and n > 1:
            m, d = m + 1, d + 1
        if m == 0:
            return 0.0
        score *= (m / d) ** weights[n - 1]
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * score


# --------------------------------------------------------------------------------------------------
# Random corpora

_WORDS = ["a", "b", "c", "d"]
_sentence = st.lists(st.sampled_from(_WORDS), min_size=0, max_size=9)
_item = st.tuples(_sentence, st.lists(_sentence, min_size=1, max_size=3))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(_item, min_size=0, max_size=5),
    max_n=st.integers(1, 4),
    smoothing=st.booleans(),
    raw_weights=st.lists(st.integers(0, 3), min_size=4, max_size=4),
    uniform=st.booleans(),
)
def test_matches_loop_reference(
    items: list[tuple[list[str], list[list[str]]]],
    max_n: int,
    smoothing: bool,
    raw_weights: list[int],
    uniform: bool,
) -> None:
    hyps = [h for h, _ in items]
    refs = [rs for _, rs in items]
    raw = raw_weights[:max_n]
    if uniform or sum(raw) == 0:
        weights = None
        ref_weights = [1.0 / max_n] * max_n
    else:
        weights = [w / sum(raw) for w in raw]
        ref_weights = weights
    got = corpus_bleu(hyps, refs, max_n=max_n, weights=weights, smoothing=smoothing)
    want = _ref_bleu(hyps, refs, ref_weights, smoothing)
    assert isinstance(got, float)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_loop_reference_on_larger_random_corpora() -> None:
    rng = random.Random(0)
    nonzero = 0
    for _ in range(40):
        n_items = rng.randint(1, 12)
        hyps = [rng.choices(_WORDS, k=rng.randint(0, 20)) for _ in range(n_items)]
        refs = [[rng.choices(_WORDS, k=rng.randint(0, 20)) for _ in range(rng.randint(1, 4))] for _ in hyps]
        for smoothing in (False, True):
            got = corpus_bleu(hyps, refs, smoothing=smoothing)
            want = _ref_bleu(hyps, refs, [0.25] * 4, smoothing)
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
            nonzero += got > 0
    assert nonzero > 40  # the comparison is not between two zeros


# --------------------------------------------------------------------------------------------------
# Hand-computed values

HYP = "the cat sat on the mat"
REF = "the cat is on the mat"


def test_hand_computed_example() -> None:
    # hyp: the cat sat on the mat (6 tokens); ref: the cat is on the mat (6 tokens); BP = 1 (c = r = 6).
    # 1-grams: the×2, cat, sat, on, mat vs ref the×2, cat, is, on, mat: clipped 2+1+0+1+1 = 5 → p1 = 5/6
    # 2-grams: the-cat, cat-sat, sat-on, on-the, the-mat; in ref: the-cat, on-the, the-mat → p2 = 3/5
    # 3-grams: the-cat-sat, cat-sat-on, sat-on-the, on-the-mat; in ref: on-the-mat → p3 = 1/4
    # 4-grams: the-cat-sat-on, cat-sat-on-the, sat-on-the-mat; none in ref → p4 = 0/3
    # BLEU-1 = 5/6;  BLEU-2 = sqrt(5/6 · 3/5) = sqrt(1/2)
    # BLEU-3 = (5/6 · 3/5 · 1/4)^(1/3) = (1/8)^(1/3) = 1/2
    # BLEU-4 = 0 (p4 = 0); smoothed BLEU-4: p2 = 4/6, p3 = 2/5, p4 = 1/4 →
    #   (5/6 · 4/6 · 2/5 · 1/4)^(1/4) = (1/18)^(1/4)
    assert sentence_bleu(HYP, [REF], max_n=1) == pytest.approx(5 / 6, rel=1e-14)
    assert sentence_bleu(HYP, [REF], max_n=2) == pytest.approx(math.sqrt(0.5), rel=1e-14)
    assert sentence_bleu(HYP, [REF], max_n=3) == pytest.approx(0.5, rel=1e-14)
    assert sentence_bleu(HYP, [REF]) == 0.0
    assert sentence_bleu(HYP, [REF], smoothing=True) == pytest.approx((1 / 18) ** 0.25, rel=1e-14)
    # smoothing leaves p1 alone: with max_n = 1 it changes nothing
    assert sentence_bleu(HYP, [REF], max_n=1, smoothing=True) == pytest.approx(5 / 6, rel=1e-14)


def test_clipping_against_several_references() -> None:
    # Papineni et al.'s example: "the" ×7 is clipped at 2, the most any one reference holds
    # (not 2 + 1 summed over the references) → p1 = 2/7; closest reference length 7 → BP = 1.
    refs = ["the cat is on the mat", "there is a cat on the mat"]
    assert sentence_bleu("the the the the the the the", refs, max_n=1) == pytest.approx(2 / 7, rel=1e-14)


def test_weights() -> None:
    # weights (1, 0, 0, 0): orders with weight 0 take no part, so p4 = 0 does not zero it → BLEU-1
    assert sentence_bleu(HYP, [REF], weights=(1, 0, 0, 0)) == pytest.approx(5 / 6, rel=1e-14)
    # (0.5, 0.5, 0, 0) is BLEU-2;  (0.25, 0.75) weighs p2 more: (5/6)^0.25 · (3/5)^0.75
    assert sentence_bleu(HYP, [REF], weights=(0.5, 0.5, 0, 0)) == pytest.approx(math.sqrt(0.5), rel=1e-14)
    want = (5 / 6) ** 0.25 * (3 / 5) ** 0.75
    assert sentence_bleu(HYP, [REF], max_n=2, weights=[0.25, 0.75]) == pytest.approx(want, rel=1e-14)


def test_identical_is_one() -> None:
    caption = "a heavy handwritten zero (0), upright, thick strokes, tall and wide"
    assert sentence_bleu(caption, [caption]) == 1.0
    assert corpus_bleu([caption, HYP], [[REF, caption], [HYP]]) == 1.0
    assert corpus_bleu([caption.split()], [[caption.split()]]) == 1.0


def test_no_four_gram_overlap_is_zero_unless_smoothed() -> None:
    # hyp: a b c x a b c (7), ref: a b c y a b c (7), BP = 1.
    # p1: a×2 b×2 c×2 match, x does not → 6/7;  p2: ab×2, bc×2 match, cx, xa do not → 4/6
    # p3: abc×2 match, bcx, cxa, xab do not → 2/5;  p4: abcx, bcxa, cxab, xabc: none in ref → 0/4
    # BLEU-3 = (6/7 · 4/6 · 2/5)^(1/3) = (8/35)^(1/3);  BLEU-4 = 0
    # smoothed: (6/7 · 5/7 · 3/6 · 1/5)^(1/4) = (3/49)^(1/4)
    hyp, ref = "a b c x a b c", "a b c y a b c"
    assert sentence_bleu(hyp, [ref], max_n=3) == pytest.approx((8 / 35) ** (1 / 3), rel=1e-14)
    assert sentence_bleu(hyp, [ref]) == 0.0
    assert sentence_bleu(hyp, [ref], smoothing=True) == pytest.approx((3 / 49) ** 0.25, rel=1e-14)
    # a hypothesis shorter than max_n has no 4-grams at all: 0.0 unsmoothed; smoothed p4 = (0+1)/(0+1)
    assert sentence_bleu("a b c", ["a b c"]) == 0.0
    assert sentence_bleu("a b c", ["a b c"], smoothing=True) == 1.0
    # no unigram match: 0.0 even with smoothing (p1 is never smoothed)
    assert sentence_bleu("x y z w", ["a b c d"], smoothing=True) == 0.0


def test_brevity_penalty() -> None:
    # c = 2, r = 6, p1 = p2 = 1 → BLEU-2 = exp(1 − 6/2) = exp(−2)
    assert sentence_bleu("the cat", [HYP], max_n=2) == pytest.approx(math.exp(-2.0), rel=1e-14)
    # a longer hypothesis is not penalised by BP (only by precision): "the cat the cat" vs "the cat"
    # p1 = 2/4, p2 = 1/3, BP = 1
    got = sentence_bleu("the cat the cat", ["the cat"], max_n=2)
    assert got == pytest.approx(math.sqrt(2 / 4 * 1 / 3), rel=1e-14)
    # corpus level: c and r are summed before the penalty: c = 2 + 6 = 8, r = 6 + 6 = 12
    got = corpus_bleu(["the cat", HYP], [[HYP], [HYP]], max_n=1)
    assert got == pytest.approx(math.exp(1 - 12 / 8), rel=1e-14)


def test_closest_reference_length_tie_takes_the_shorter() -> None:
    # hyp has 4 tokens; references of 3 and 5 tokens are equally close → r = 3 → c > r → BP = 1.
    # p1 = 1 (a, b, c in both, d in the second). Had the longer one been taken: exp(1 − 5/4).
    assert sentence_bleu("a b c d", ["a b c d e", "a b c"], max_n=1) == 1.0
    assert sentence_bleu("a b c d", ["a b c", "a b c d e"], max_n=1) == 1.0
    # no tie: references of 2 and 5 tokens → 5 is closer → BP = exp(1 − 5/4)
    got = sentence_bleu("a b c d", ["a b", "a b c d e"], max_n=1)
    assert got == pytest.approx(math.exp(1 - 5 / 4), rel=1e-14)


def test_known_nltk_doc_example() -> None:
    # The corpus in nltk's corpus_bleu docstring (0.5920... there), hard-coded so it runs without nltk;
    # it differs from the mean of the two sentence scores (0.6223...): corpus BLEU sums counts first.
    hyp1 = "It is a guide to action which ensures that the military always obeys the commands of the party"
    ref1a = "It is a guide to action that ensures that the military will forever heed Party commands"
    ref1b = (
        "It is the guiding principle which guarantees the military forces always being under the "
        "command of the Party"
    )
    ref1c = "It is the practical guide for the army always to heed the directions of the party"
    hyp2 = "he read the book because he was interested in world history"
    ref2a = "he was interested in world history because he read the book"
    split = [[r.split() for r in rs] for rs in ([ref1a, ref1b, ref1c], [ref2a])]
    got = corpus_bleu([hyp1.split(), hyp2.split()], split)
    assert got == pytest.approx(0.5920778868801042, rel=1e-12)
    mean = (sentence_bleu(hyp1.split(), split[0]) + sentence_bleu(hyp2.split(), split[1])) / 2
    assert mean == pytest.approx(0.6223247442490669, rel=1e-12)


def test_strings_use_the_word_tokenizer() -> None:
    hyps = ["A Left-leaning SEVEN (7), drawn low.", "the digit 3: upright"]
    refs = [["a left-leaning seven (7) drawn high", "seven"], ["the digit 3: thin, upright"]]
    as_tokens = corpus_bleu(
        [WordTokenizer.tokenize(h) for h in hyps],
        [[WordTokenizer.tokenize(r) for r in rs] for rs in refs],
        max_n=2,
    )
    got = corpus_bleu(hyps, refs, max_n=2)
    assert got == as_tokens
    assert 0.0 < got < 1.0
    # 10 tokens: a left-leaning seven ( 7 ) , drawn low . — "left-leaning" is one token and case is
    # ignored, so only ",", "low" and "." are unmatched; closest reference 8 tokens → BP = 1
    assert sentence_bleu(hyps[0], refs[0], max_n=1) == pytest.approx(7 / 10, rel=1e-14)


def test_sentence_is_corpus_of_one() -> None:
    rng = random.Random(1)
    for _ in range(20):
        hyp = rng.choices(_WORDS, k=rng.randint(0, 10))
        refs = [rng.choices(_WORDS, k=rng.randint(0, 10)) for _ in range(rng.randint(1, 3))]
        for smoothing in (False, True):
            assert sentence_bleu(hyp, refs, smoothing=smoothing) == corpus_bleu(
                [hyp], [refs], smoothing=smoothing
            )


def test_empty_cases_are_zero() -> None:
    assert corpus_bleu([], []) == 0.0
    assert corpus_bleu([""], [["a b"]], smoothing=True) == 0.0  # c = 0
    assert corpus_bleu([[], []], [[["a"]], [[]]]) == 0.0
    assert sentence_bleu("a b", [""]) == 0.0  # an empty reference matches nothing
    # an empty hypothesis among others only adds its reference length to r:
    # c = 2, r = 2 + 3 → BP = exp(1 − 5/2), p1 = p2 = 1
    assert corpus_bleu(["a b", ""], [["a b"], ["a b c"]], max_n=2) == pytest.approx(
        math.exp(1 - 5 / 2), rel=1e-14
    )


# --------------------------------------------------------------------------------------------------
# nltk oracle. Conventions that differ from nltk.translate.bleu_score.corpus_bleu:
# * nltk counts max(1, |h| − n + 1) n-grams per hypothesis (never 0); we count |h| − n + 1 ≥ 0, the
#   n-grams that exist. The two agree when every hypothesis has ≥ max_n tokens (used below) and
#   differ otherwise (test_short_hypothesis_convention_differs_from_nltk).
# * a zero precision (with weight > 0): we return exactly 0.0; nltk warns and uses
#   sys.float_info.min for p_n, returning a tiny positive number (< 1e-12 for max_n ≤ 4).
# * nltk's argument order is (references, hypotheses); ours is (hypotheses, references).


def _random_corpus(rng: random.Random, max_n: int) -> tuple[list[list[str]], list[list[list[str]]]]:
    words = _WORDS[: rng.randint(2, 4)]
    hyps = [rng.choices(words, k=rng.randint(max_n, 15)) for _ in range(rng.randint(1, 8))]
    refs = []
    for hyp in hyps:
        rs = []
        for _ in range(rng.randint(1, 4)):
            ref = [w if rng.random() < 0.7 else rng.choice(words) for w in hyp]  # a noisy copy
            ref = ref[: rng.randint(0, len(ref) + 2)] + rng.choices(words, k=rng.randint(0, 3))
            rs.append(ref)
        refs.append(rs)
    return hyps, refs


def test_nltk_oracle() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    rng = random.Random(0)
    compared = zeros = 0
    for _ in range(300):
        max_n = rng.randint(1, 4)
        hyps, refs = _random_corpus(rng, max_n)
        weights = (1.0 / max_n,) * max_n
        got = corpus_bleu(hyps, refs, max_n=max_n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nltk warns on a zero precision
            want = nltk_bleu.corpus_bleu(refs, hyps, weights=weights)
        if got == 0.0:
            assert 0.0 <= want < 1e-12  # nltk's sys.float_info.min convention
            zeros += 1
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
            compared += 1
    assert compared > 200  # mostly non-trivial comparisons


def test_nltk_oracle_smoothed() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    method2 = nltk_bleu.SmoothingFunction().method2  # Lin & Och 2004: +1 for n ≥ 2
    rng = random.Random(1)
    for _ in range(200):
        max_n = rng.randint(1, 4)
        hyps, refs = _random_corpus(rng, max_n)
        weights = (1.0 / max_n,) * max_n
        got = corpus_bleu(hyps, refs, max_n=max_n, smoothing=True)
        want = nltk_bleu.corpus_bleu(refs, hyps, weights=weights, smoothing_function=method2)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_nltk_oracle_weights() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    rng = random.Random(2)
    for _ in range(100):
        hyps, refs = _random_corpus(rng, 4)
        raw = [rng.randint(1, 5) for _ in range(4)]
        weights = tuple(w / sum(raw) for w in raw)
        got = corpus_bleu(hyps, refs, weights=weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = nltk_bleu.corpus_bleu(refs, hyps, weights=weights)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_short_hypothesis_convention_differs_from_nltk() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    hyps = [["a", "b", "c"], ["a"]]
    refs = [[["a", "b", "c"]], [["a"]]]
    # ours: 2-grams: 2 of 2 match (the 1-token hypothesis has none) → p1 = p2 = 1 → BLEU-2 = 1
    assert corpus_bleu(hyps, refs, max_n=2) == 1.0
    # nltk counts one 2-gram for the 1-token hypothesis: p2 = 2/3
    want = nltk_bleu.corpus_bleu(refs, hyps, weights=(0.5, 0.5))
    assert want == pytest.approx(math.sqrt(2 / 3), rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_n": 0}, "max_n"),
        ({"max_n": 1.5}, "max_n"),
        ({"max_n": True}, "max_n"),
        ({"weights": (0.5, 0.5)}, "weights"),  # wrong length for max_n = 4
        ({"weights": (0.5, 0.5, 0.5, -0.5)}, "weights"),
        ({"weights": (0.25, 0.25, 0.25, 0.2)}, "weights"),  # sums to 0.95
        ({"weights": (float("nan"), 0.5, 0.25, 0.25)}, "weights"),
        ({"weights": "1234"}, "weights"),
        ({"weights": (True, False, False, False)}, "weights"),
        ({"smoothing": 1}, "smoothing"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        corpus_bleu([HYP], [[REF]], **kwargs)
    with pytest.raises(ValueError, match=match):
        sentence_bleu(HYP, [REF], **kwargs)


def test_bad_corpus() -> None:
    with pytest.raises(ValueError, match="hypotheses and references must have the same length"):
        corpus_bleu([HYP, HYP], [[REF]])
    with pytest.raises(ValueError, match=r"references\[1\] must hold at least one reference"):
        corpus_bleu([HYP, HYP], [[REF], []])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list.*single str"):
        corpus_bleu([HYP], [REF])  # references not wrapped in a list per hypothesis
    with pytest.raises(ValueError, match="hypotheses must be a list"):
        corpus_bleu(HYP, [[REF]])
    with pytest.raises(ValueError, match="references must be a list"):
        corpus_bleu([HYP], REF)
    with pytest.raises(ValueError, match=r"hypotheses\[0\] must be a string or a sequence"):
        corpus_bleu([3], [[REF]])
    with pytest.raises(ValueError, match=r"hypotheses\[0\]\[1\] must be a str token"):
        corpus_bleu([["a", 1]], [[REF]])
    with pytest.raises(ValueError, match=r"references\[0\]\[1\]\[0\] must be a str token"):
        corpus_bleu([HYP], [[REF, [None]]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list.*int"):
        corpus_bleu([HYP], [5])


def test_bad_sentence() -> None:
    with pytest.raises(ValueError, match="references must hold at least one reference"):
        sentence_bleu(HYP, [])
    with pytest.raises(ValueError, match=r"references must be a non-empty list.*single str"):
        sentence_bleu(HYP, REF)
    with pytest.raises(ValueError, match="hypothesis must be a string or a sequence"):
        sentence_bleu(None, [REF])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"hypothesis\[0\] must be a str token"):
        sentence_bleu([1, 2], [REF])  # type: ignore[list-item]
