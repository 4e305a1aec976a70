"""Tests for alignkit.embed: reading text files, embedding with a tiny random BERT saved by the test.

The reference embedding is computed here directly with ``transformers`` (tokenise one text at a time,
mean of the last hidden states in float64), never through the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.embed import embed_file, embed_texts, load_text_encoder, read_texts

_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "query", ":", "passage", "a", "the", "digit"]
_WORDS += ["three", "seven", "heavy", "light", "thin", "one", "two", "top", "left", "##s"]
_TEXTS = ["a heavy three", "the digit seven", "", "two thin threes on the top left", "one", "seven"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(_WORDS) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizer(vocab=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(_WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _reference(directory: Path, texts: list[str], pooling: str = "mean") -> np.ndarray:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(directory, local_files_only=True).double().eval()
    rows = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            rows.append((hidden.mean(0) if pooling == "mean" else hidden[0]).numpy())
    return np.stack(rows)


def test_embed_texts_matches_a_direct_transformers_reference(tiny_bert: Path, tmp_path: Path) -> None:
    got = embed_texts(_TEXTS, str(tiny_bert), batch_size=4, cache_dir=tmp_path)
    assert got.shape == (len(_TEXTS), 16) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _reference(tiny_bert, _TEXTS), atol=2e-5)
    cls = embed_texts(_TEXTS, str(tiny_bert), pooling="cls", cache=False)
    np.testing.assert_allclose(cls.numpy(), _reference(tiny_bert, _TEXTS, "cls"), atol=2e-5)
    prefixed = embed_texts(_TEXTS, str(tiny_bert), prefix="query: ", cache=False, normalize=True)
    expected = _reference(tiny_bert, ["query: " + t for t in _TEXTS])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(prefixed.numpy(), expected, atol=2e-5)


def test_embed_file_streams_chunks_and_caches(tiny_bert: Path, tmp_path: Path) -> None:
    source = tmp_path / "items.txt"
    source.write_text("\n".join(_TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    cache = tmp_path / "cache"
    assert embed_file(source, out, str(tiny_bert), chunk_size=4, batch_size=3, cache_dir=cache) == (6, 16)
    written = np.load(out)
    assert written.dtype == np.float32 and written.shape == (6, 16)
    np.testing.assert_allclose(written, _reference(tiny_bert, _TEXTS), atol=2e-5)
    assert len(list((cache / "towers").iterdir())) == 2  # one cache file per chunk of 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    # a second run reads the chunks from the cache (the model's forward is never called)
    tower = load_text_encoder(str(tiny_bert))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache was not used")

    tower.model.forward = boom  # type: ignore[method-assign]
    embed_file(source, tmp_path / "again.npy", tower, chunk_size=4, cache_dir=cache)
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), written)


def test_read_texts_formats(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("first\n\nthird\n", encoding="utf-8")
    assert read_texts(text) == ["first", "", "third"]  # rows stay aligned with lines
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps({"body": "x", "id": 1}) + "\n\n" + json.dumps({"body": "y"}) + "\n")
    assert read_texts(jsonl, column="body") == ["x", "y"]
    plain = tmp_path / "b.jsonl"
    plain.write_text('"p"\n"q"\n')
    assert read_texts(plain) == ["p", "q"]
    table = tmp_path / "a.csv"
    table.write_text('id,text\n1,"hello, world"\n2,bye\n', encoding="utf-8")
    assert read_texts(table) == ["hello, world", "bye"]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["u", "v"], "n": [1, 2]}), parquet)
    assert read_texts(parquet) == ["u", "v"]
    with pytest.raises(ValueError, match="cannot read column 'missing'"):
        read_texts(parquet, column="missing")
    with pytest.raises(ValueError, match="line 1 has no field 'text'"):
        read_texts(jsonl)
    with pytest.raises(ValueError, match="no such file"):
        read_texts(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no items"):
        read_texts(empty)
    with pytest.raises(ValueError, match="no column 'body'"):
        read_texts(table, column="body")


def test_embed_rejects_bad_options(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'cls'"):
        load_text_encoder(str(tiny_bert), pooling="max")
    with pytest.raises(ValueError, match=r"not found on disk|no such|could not load"):
        load_text_encoder(str(tmp_path / "no-model"))
    with pytest.raises(ValueError, match=r"streamed to a \.npy file"):
        embed_file(["a"], tmp_path / "x.pt", str(tiny_bert))
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        embed_texts(["a"], str(tiny_bert), batch_size=0)
