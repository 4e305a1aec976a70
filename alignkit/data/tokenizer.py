"""A word-level tokenizer fitted on a caption corpus, for small caption decoders trained from scratch.

    from alignkit.data import WordTokenizer, load_digits_captions
    data = load_digits_captions(seed=0)
    tok = WordTokenizer.fit(data.captions)
    ids = tok.encode(data.captions[:4])    # (4, T) int64: BOS tokens… EOS, then PAD on the right
    tok.batch_decode(ids) == data.captions[:4]   # True: decoding restores the captions exactly

Tokens (:meth:`WordTokenizer.tokenize`), after lower-casing:

* words — runs of letters, with inner hyphens kept (``left-leaning`` is one token);
* numbers — runs of decimal digits (``2024`` is one token);
* every other non-space character on its own (``(``, ``)``, ``,``, ``:``, ``.``, ``-``, ``'`` …).

Whitespace only separates tokens. :meth:`WordTokenizer.decode` joins tokens with single spaces,
except none before ``, . : ; ) ! ?`` and none after ``(``, so lower-case text written in that style —
such as every caption of :func:`alignkit.data.load_digits_captions` — survives
``decode(encode([text])[0])`` unchanged.

The vocabulary is the four specials (``PAD = 0``, ``BOS = 1``, ``EOS = 2``, ``UNK = 3``) followed by
the corpus tokens seen at least ``min_count`` times, sorted by decreasing count and then
alphabetically, so a corpus always gives the same ids whatever the order of its texts.
"""

from __future__ import annotations

import numbers
import re
import types
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from alignkit.functional._checks import check_int

__all__ = ["WordTokenizer"]

# A letter is [^\W\d_] (a word character that is neither a digit nor "_"); \d is a decimal digit;
# anything else that is not whitespace is a token of one character.
_TOKEN = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*|\d+|\S")
_NO_SPACE_BEFORE = frozenset({",", ".", ":", ";", ")", "!", "?"})
_NO_SPACE_AFTER = frozenset({"("})
_FORMAT = "alignkit.WordTokenizer"
_VERSION = 1


def _check_texts(texts: Any, name: str) -> Sequence[str]:
    """``texts`` must be a list/tuple-like sequence of str (not a single str)."""
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of strings, got a single str; wrap it: [{texts!r:.40}]")
    if not isinstance(texts, Sequence):
        raise ValueError(f"{name} must be a sequence of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    return texts


class WordTokenizer:
    """Word-level tokenizer: a fixed vocabulary of corpus tokens plus PAD, BOS, EOS and UNK.

    Build one with :meth:`fit` on training captions (or :meth:`from_dict` from a saved one);
    ``WordTokenizer(vocab)`` takes a full vocabulary whose first four entries are the specials.

    Args:
        vocab: ``["<pad>", "<bos>", "<eos>", "<unk>", token, ...]``; every other token distinct,
            non-empty and a single token under :meth:`tokenize` (so that :meth:`encode` can produce
            it).

    Attributes:
        PAD, BOS, EOS, UNK: the special ids 0, 1, 2, 3.
        SPECIALS: their strings ``("<pad>", "<bos>", "<eos>", "<unk>")``.

    Cost: :meth:`encode` and :meth:`decode` are O(total characters) time; the vocabulary holds
    O(V) strings.
    """

    PAD: ClassVar[int] = 0
    BOS: ClassVar[int] = 1
    EOS: ClassVar[int] = 2
    UNK: ClassVar[int] = 3
    SPECIALS: ClassVar[tuple[str, str, str, str]] = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(self, vocab: Sequence[str]) -> None:
        self._vocab: list[str] = self._check_vocab(vocab, "vocab")
        self._token_to_id: dict[str, int] = {token: i for i, token in enumerate(self._vocab)}

    # ----------------------------------------------------------------------------------------------
    # Building

    @classmethod
    def fit(cls, texts: Sequence[str], min_count: int = 1) -> WordTokenizer:
        """The tokenizer whose vocabulary is the specials plus every token of ``texts`` seen often enough.

        Tokens seen at least ``min_count`` times (over all of ``texts``, by :meth:`tokenize`) are
        kept, sorted by ``(-count, token)``: the most frequent first, ties alphabetically (Python's
        code-point order), so the ids do not depend on the order of ``texts``.

        Args:
            texts: N ≥ 1 strings holding at least one token between them.
            min_count: an integer ≥ 1; rarer tokens are left out and encode as UNK.

        Returns:
            A :class:`WordTokenizer` with ``4 + #kept tokens`` entries.

        Cost: O(total characters) time, O(distinct tokens) memory.
        """
        _check_texts(texts, "texts")
        if len(texts) == 0:
            raise ValueError("texts must hold at least one string to fit a vocabulary, got an empty sequence")
        check_int(min_count, "min_count", 1)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls.tokenize(text))
        if not counts:
            raise ValueError(
                f"texts must contain at least one token, got {len(texts)} string(s) of whitespace only"
            )
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls([*cls.SPECIALS, *kept])

    @classmethod
    def _check_vocab(cls, vocab: Any, name: str) -> list[str]:
        if isinstance(vocab, str) or not isinstance(vocab, Sequence):
            raise ValueError(f"{name} must be a list of strings, got {type(vocab).__name__}")
        out = list(vocab)
        if tuple(out[: len(cls.SPECIALS)]) != cls.SPECIALS:
            raise ValueError(
                f"{name} must start with the specials {list(cls.SPECIALS)}, got {out[: len(cls.SPECIALS)]!r}"
            )
        seen: set[str] = set(cls.SPECIALS)
        for i, token in enumerate(out[len(cls.SPECIALS) :], start=len(cls.SPECIALS)):
            if not isinstance(token, str):
                raise ValueError(f"{name}[{i}] must be a str, got {type(token).__name__}")
            if token in seen:
                raise ValueError(f"{name}[{i}] = {token!r} is a duplicate; tokens must be distinct")
            if cls.tokenize(token) != [token]:
                raise ValueError(
                    f"{name}[{i}] = {token!r} is not a single lower-case token of WordTokenizer.tokenize "
                    f"(it tokenizes to {cls.tokenize(token)!r}), so encode could never produce it"
                )
            seen.add(token)
        return out

    # ----------------------------------------------------------------------------------------------
    # Vocabulary

    def __len__(self) -> int:
        """The vocabulary size V, specials included."""
        return len(self._vocab)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={len(self)})"

    @property
    def vocab(self) -> list[str]:
        """The V tokens in id order (a copy): the four specials first."""
        return list(self._vocab)

    @property
    def token_to_id(self) -> Mapping[str, int]:
        """Token → id, read-only."""
        return types.MappingProxyType(self._token_to_id)

    # ----------------------------------------------------------------------------------------------
    # Text ↔ tokens ↔ ids

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Split lower-cased ``text`` into words (inner hyphens kept), digit runs and single symbols.

        ``"A left-leaning seven (7), drawn low"`` →
        ``["a", "left-leaning", "seven", "(", "7", ")", ",", "drawn", "low"]``.

        Words are runs of Unicode letters joined by single inner hyphens; numbers are runs of
        decimal digits; every other non-whitespace character (punctuation, "_", a stray "-") is a
        token of its own. Whitespace is dropped.

        Cost: O(len(text)).
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return _TOKEN.findall(text.lower())

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Token ids of ``texts``, one padded row each.

        Row i is ``[BOS, id(t_1), …, id(t_k), EOS, PAD, …]`` for the tokens ``t`` of ``texts[i]``
        (a token outside the vocabulary → UNK), right-padded with PAD to T, the longest row. With
        ``max_length``, a row longer than ``max_length`` keeps BOS, its first ``max_length − 2``
        tokens and EOS, so it still ends in EOS.

        Args:
            texts: N ≥ 1 strings.
            max_length: ``None`` or an integer ≥ 2 (room for BOS and EOS).

        Returns:
            (N, T) int64 (``torch.long``) on the CPU, ``T = min(max_length, 2 + max_i k_i)``.

        Cost: O(total characters) time, O(N·T) memory.
        """
        _check_texts(texts, "texts")
        if len(texts) == 0:
            raise ValueError("texts must hold at least one string, got an empty sequence")
        if max_length is not None:
            check_int(max_length, "max_length", 2, what=" (room for BOS and EOS)")
        unk = self.UNK
        rows: list[list[int]] = []
        for text in texts:
            ids = [self._token_to_id.get(token, unk) for token in self.tokenize(text)]
            if max_length is not None:
                ids = ids[: max_length - 2]
            rows.append([self.BOS, *ids, self.EOS])
        width = max(len(row) for row in rows)
        out = torch.full((len(rows), width), self.PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def _check_ids(self, ids: Any, name: str, ndim: int) -> list[list[int]]:
        """``ids`` as nested Python ints, validated: integer, ``ndim``-D, every id in [0, V)."""
        shape = "(T,)" if ndim == 1 else "(N, T)"
        if isinstance(ids, Tensor):
            if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer ids, got a tensor of dtype {ids.dtype}")
            if ids.ndim != ndim:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
            values = ids.detach().cpu().tolist()
            rows = [values] if ndim == 1 else values
        elif ndim == 1 and isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
            for i, value in enumerate(ids):
                if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                    raise ValueError(f"{name}[{i}] must be an integer id, got {type(value).__name__}")
            rows = [[int(value) for value in ids]]
        else:
            allowed = "a sequence of ints or a 1-D integer tensor" if ndim == 1 else "a 2-D integer tensor"
            raise ValueError(f"{name} must be {allowed} of shape {shape}, got {type(ids).__name__}")
        bad = [value for row in rows for value in row if not 0 <= value < len(self)]
        if bad:
            raise ValueError(
                f"{name} must hold ids in [0, {len(self)}) (the vocabulary size), got {bad[0]} "
                f"({len(bad)} id(s) out of range)"
            )
        return rows

    def _decode_row(self, row: Sequence[int]) -> str:
        start = 1 if row and row[0] == self.BOS else 0
        pieces: list[str] = []
        glue = True  # no space before the first token
        for value in row[start:]:
            if value == self.EOS:
                break
            if value == self.PAD:
                continue
            token = self._vocab[value]
            if not glue and token not in _NO_SPACE_BEFORE:
                pieces.append(" ")
            pieces.append(token)
            glue = token in _NO_SPACE_AFTER
        return "".join(pieces)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of one id sequence: the inverse of :meth:`encode` on text in the tokens' style.

        A leading BOS is dropped, every PAD is skipped and decoding stops at the first EOS (the
        rest is ignored); any other id, BOS and UNK included, prints as its vocabulary string. The
        tokens are joined with one space, except none before ``, . : ; ) ! ?`` and none after
        ``(``. So ``decode(encode([text])[0]) == text`` whenever ``text`` is lower-case, every
        token is in the vocabulary, and its spacing is that style's (no leading, trailing or double
        spaces).

        Args:
            ids: (T,) integers in [0, V): a list of ints or a 1-D integer tensor.

        Returns:
            The text.

        Cost: O(T + output length).
        """
        (row,) = self._check_ids(ids, "ids", ndim=1)
        return self._decode_row(row)

    def batch_decode(self, ids: Tensor) -> list[str]:
        """:meth:`decode` of each row of an (N, T) integer tensor → N strings.

        Cost: O(N·T + output length).
        """
        return [self._decode_row(row) for row in self._check_ids(ids, "ids", ndim=2)]

    # ----------------------------------------------------------------------------------------------
    # Serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description: ``{"format", "version", "vocab"}``; see :meth:`from_dict`."""
        return {"format": _FORMAT, "version": _VERSION, "vocab": list(self._vocab)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WordTokenizer:
        """The tokenizer saved by :meth:`to_dict` (e.g. after ``json.dumps`` / ``json.loads``).

        ``d`` must have exactly the keys ``"format"`` (``"alignkit.WordTokenizer"``), ``"version"``
        (1) and ``"vocab"`` (a list of strings, as in the constructor).

        Cost: O(V) (each token is re-tokenized to check it).
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"d must be a dict from WordTokenizer.to_dict, got {type(d).__name__}")
        expected = {"format", "version", "vocab"}
        if set(d) != expected:
            raise ValueError(f"d must have exactly the keys {sorted(expected)}, got {sorted(map(str, d))}")
        if d["format"] != _FORMAT:
            raise ValueError(f"d['format'] must be {_FORMAT!r}, got {d['format']!r}")
        if d["version"] != _VERSION or isinstance(d["version"], bool):
            raise ValueError(f"d['version'] must be {_VERSION}, got {d['version']!r}")
        return cls(cls._check_vocab(d["vocab"], "d['vocab']"))
