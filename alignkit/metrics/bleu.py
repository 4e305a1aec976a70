"""BLEU: clipped n-gram precision with a brevity penalty, for generated captions.

    >>> from alignkit.metrics import corpus_bleu, sentence_bleu
    >>> corpus_bleu(["a thick upright two (2)"], [["a thick upright two (2)", "the digit 2"]])
    1.0

Papineni, Roukos, Ward & Zhu 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation".
For hypotheses ``h_i`` with references ``R_i`` (one or more each)::

    m_n = Σ_i Σ_{g ∈ n-grams(h_i)} min(count(g, h_i), max_{ρ ∈ R_i} count(g, ρ))   (clipped matches)
    d_n = Σ_i max(|h_i| − n + 1, 0)                                        (hypothesis n-grams)
    p_n = m_n / d_n
    c = Σ_i |h_i|,   r = Σ_i |ρ_i*|,   ρ_i* = the reference of R_i closest in length to h_i
                                                (on a tie, the shorter one)
    BP = 1 if c > r else exp(1 − r / c)
    BLEU = BP · exp(Σ_n w_n · log p_n),   w_n = 1 / max_n by default

The sums run over the whole corpus before dividing (corpus-level BLEU, not a mean of sentence
scores). Conventions at the edges:

* ``c = 0`` (no hypothesis tokens, or no hypotheses) → 0.0.
* An order with ``w_n = 0`` takes no part (``weights=(1, 0, 0, 0)`` is BLEU-1).
* Without smoothing, ``m_n = 0`` for an order with ``w_n > 0`` → 0.0 (this includes ``d_n = 0``,
  every hypothesis shorter than n). nltk returns a tiny positive number and a warning there.
* ``smoothing=True`` is Lin & Och 2004's "+1" smoothing ("ORANGE: a Method for Evaluating
  Automatic Evaluation Metrics for Machine Translation", their BLEU+1; nltk's
  ``SmoothingFunction().method2``): ``p_n = (m_n + 1) / (d_n + 1)`` for n ≥ 2, applied once to the
  corpus totals; ``p_1 = m_1 / d_1`` is never smoothed, so ``m_1 = 0`` still gives 0.0 (when
  ``w_1 > 0``). For one sentence this is exactly BLEU+1.
* ``d_n`` counts the n-grams that exist; nltk's ``corpus_bleu`` counts ``max(1, |h_i| − n + 1)``
  per hypothesis, so the two differ when a hypothesis is shorter than n tokens, and agree
  otherwise.

Strings are split by :meth:`alignkit.data.WordTokenizer.tokenize` (lower-cased words with inner
hyphens, digit runs, single punctuation marks), so string BLEU is case-insensitive; pass lists of
tokens to use another tokenization.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Sequence
from typing import Any

from alignkit.data.tokenizer import WordTokenizer
from alignkit.functional._checks import check_int

__all__ = ["corpus_bleu", "sentence_bleu"]


def _as_tokens(sentence: Any, name: str) -> list[str]:
    if isinstance(sentence, str):
        return WordTokenizer.tokenize(sentence)
    if not isinstance(sentence, Sequence):
        raise ValueError(
            f"{name} must be a string or a sequence of str tokens, got {type(sentence).__name__}"
        )
    tokens = list(sentence)
    for j, token in enumerate(tokens):
        if not isinstance(token, str):
            raise ValueError(f"{name}[{j}] must be a str token, got {type(token).__name__}")
    return tokens


def _as_references(references: Any, name: str) -> list[list[str]]:
    if isinstance(references, str) or not isinstance(references, Sequence):
        kind = "a single str" if isinstance(references, str) else type(references).__name__
        raise ValueError(
            f"{name} must be a non-empty list of references (strings or token lists), got {kind}; "
            "wrap a single reference in a list"
        )
    if len(references) == 0:
        raise ValueError(f"{name} must hold at least one reference, got an empty list")
    return [_as_tokens(reference, f"{name}[{j}]") for j, reference in enumerate(references)]


def _check_options(max_n: Any, weights: Any, smoothing: Any) -> tuple[float, ...]:
    check_int(max_n, "max_n", 1)
    if not isinstance(smoothing, bool):
        raise ValueError(f"smoothing must be a bool, got {type(smoothing).__name__}")
    if weights is None:
        return (1.0 / max_n,) * max_n
    if isinstance(weights, str) or not isinstance(weights, Sequence):
        raise ValueError(f"weights must be a sequence of {max_n} floats, got {type(weights).__name__}")
    ok = len(weights) == max_n and all(
        isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
        for w in weights
    )
    if not ok or abs(math.fsum(weights) - 1.0) > 1e-6:
        raise ValueError(
            f"weights must be max_n = {max_n} finite numbers ≥ 0 summing to 1, got {tuple(weights)!r}"
        )
    return tuple(float(w) for w in weights)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1))


def _bleu(
    hypotheses: list[list[str]],
    references: list[list[list[str]]],
    weights: tuple[float, ...],
    smoothing: bool,
) -> float:
    max_n = len(weights)
    matches = [0] * max_n
    totals = [0] * max_n
    c = r = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        c += len(hyp)
        r += min((len(ref) for ref in refs), key=lambda length: (abs(length - len(hyp)), length))
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            if not counts:
                continue
            most: dict[tuple[str, ...], int] = {}
            for ref in refs:
                ref_counts = _ngrams(ref, n)
                for gram in counts:
                    most[gram] = max(most.get(gram, 0), ref_counts[gram])
            matches[n - 1] += sum(min(count, most[gram]) for gram, count in counts.items())
            totals[n - 1] += len(hyp) - n + 1
    if c == 0:
        return 0.0
    terms = []
    for n, w in enumerate(weights, start=1):
        if w == 0:
            continue
        m, d = matches[n - 1], totals[n - 1]
        if smoothing and n > 1:
            m, d = m + 1, d + 1
        if m == 0:
            return 0.0
        terms.append(w * math.log(m / d))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(math.fsum(terms))


def corpus_bleu(
    hypotheses: Sequence[str | Sequence[str]],
    references: Sequence[Sequence[str | Sequence[str]]],
    max_n: int = 4,
    weights: Sequence[float] | None = None,
    smoothing: bool = False,
) -> float:
    """Corpus-level BLEU of N hypotheses against their references (formula: module docstring).

    Args:
        hypotheses: N sentences, each a string or a list of tokens.
        references: N lists; ``references[i]`` holds the one or more references of
            ``hypotheses[i]``, each a string or a list of tokens. A single reference must still be
            wrapped: ``[[ref] for ref in refs]`` (a bare list of tokens would be read as one
            string reference per token).
        max_n: the highest n-gram order, an integer ≥ 1.
        weights: ``max_n`` numbers ≥ 0 summing to 1 (± 1e-6); ``None``: uniform ``1 / max_n``.
        smoothing: Lin & Och 2004's +1 on the orders n ≥ 2 (module docstring).

    Returns:
        BLEU in [0, 1] as a Python float; 0.0 for N = 0.

    Cost: O(Σ_i (|h_i| + Σ_ρ |ρ|) · max_n) time (n-gram counting, references re-counted per
    order), O(max_i (|h_i| + max_ρ |ρ|) · max_n) memory.
    """
    options = _check_options(max_n, weights, smoothing)
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        kind = "a single str" if isinstance(hypotheses, str) else type(hypotheses).__name__
        raise ValueError(f"hypotheses must be a list of sentences (strings or token lists), got {kind}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        kind = "a single str" if isinstance(references, str) else type(references).__name__
        raise ValueError(f"references must be a list of N lists of references, got {kind}")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references must have the same length N (one list of references per "
            f"hypothesis), got {len(hypotheses)} and {len(references)}"
        )
    hyps = [_as_tokens(h, f"hypotheses[{i}]") for i, h in enumerate(hypotheses)]
    refs = [_as_references(rs, f"references[{i}]") for i, rs in enumerate(references)]
    return _bleu(hyps, refs, options, smoothing)


def sentence_bleu(
    hypothesis: str | Sequence[str],
    references: Sequence[str | Sequence[str]],
    max_n: int = 4,
    weights: Sequence[float] | None = None,
    smoothing: bool = False,
) -> float:
    """BLEU of one hypothesis against its references: ``corpus_bleu([hypothesis], [references])``.

    Args:
        hypothesis: a string or a list of tokens.
        references: one or more references, each a string or a list of tokens.
        max_n, weights, smoothing: as in :func:`corpus_bleu`. Without smoothing a hypothesis
            shorter than ``max_n`` tokens, or with no matching ``max_n``-gram, scores 0.0.

    Returns:
        BLEU in [0, 1] as a Python float.

    Cost: O((|h| + Σ_ρ |ρ|) · max_n).
    """
    options = _check_options(max_n, weights, smoothing)
    hyp = _as_tokens(hypothesis, "hypothesis")
    refs = _as_references(references, "references")
    return _bleu([hyp], [refs], options, smoothing)
