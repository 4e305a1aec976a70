"""``alignkit search`` and ``alignkit embed`` through ``alignkit.cli.main`` (one-line errors, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignkit.cli import main


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture
def arrays(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    index = rng.standard_normal((80, 6)).astype(np.float32)
    ids = rng.integers(0, 80, size=30)
    queries = (index[ids] + 0.6 * rng.standard_normal((30, 6))).astype(np.float32)
    paths = {name: tmp_path / f"{name}.npy" for name in ("index", "queries", "ids", "other")}
    np.save(paths["index"], index)
    np.save(paths["queries"], queries)
    np.save(paths["ids"], ids)
    np.save(paths["other"], rng.standard_normal((80, 6)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("\n".join(str(i) for i in ids) + "\n")
    return paths


def test_search_json_matches_brute_force(
    arrays: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "neighbours.npy"
    argv = ["search", str(arrays["queries"]), str(arrays["index"]), "--ids", str(arrays["ids"])]
    assert main([*argv, "--overlap", str(arrays["other"]), "-o", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    q, g, ids = np.load(arrays["queries"]), np.load(arrays["index"]), np.load(arrays["ids"])
    scores = _unit(q.astype(np.float64)) @ _unit(g.astype(np.float64)).T
    ranks = np.array([(scores[i] >= scores[i, ids[i]]).sum() for i in range(30)])
    assert payload["recall@1"] == pytest.approx(np.mean(ranks == 1))
    assert payload["recall@10"] == pytest.approx(np.mean(ranks <= 10))
    assert payload["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert 0 <= payload["overlap@10"] <= 1 and payload["neighbours"] == str(out)
    neighbours = np.load(out)
    assert neighbours.shape == (30, 10)
    np.testing.assert_array_equal(neighbours[:, 0], scores.argmax(1))
    # the text form of --ids gives the same numbers; the table names the measures
    assert main([*argv[:3], "--ids", str(tmp_path / "ids.txt")]) == 0
    text = capsys.readouterr().out
    assert "hub_share" in text and f"{payload['mrr']:.4f}" in text


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["search", "{queries}"], "needs a query file and an index file"),
        (["search", "{queries}", "{index}", "--ids", "{missing}"], "no such file"),
        (["search", "{queries}", "{index}", "--k", "0"], "--k must be an integer ≥ 1"),
        (["search", "{queries}", "{index}", "-o", "{tmp}/n.txt"], r"written as \.npy"),
        (["search", "{queries}", "{index}", "--ids", "{index}"], "must hold 30 integers"),
    ],
)
def test_search_errors_are_one_line(
    arrays: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    names = {k: str(v) for k, v in arrays.items()}
    names |= {"missing": str(tmp_path / "no.npy"), "tmp": str(tmp_path)}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alignkit search: error: ")
    assert __import__("re").search(match, err)


def test_embed_command_with_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "passage", ":"]
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    transformers.BertModel(config).save_pretrained(model_dir)
    transformers.BertTokenizer(vocab=str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"body": t}) + "\n" for t in ["a b", "c", "b c a"]))
    out = tmp_path / "x.npy"
    argv = ["embed", str(texts), "-o", str(out), "--model", str(model_dir), "--column", "body"]
    assert main([*argv, "--prefix", "passage: ", "--normalize", "--json", "--no-cache"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert (payload["rows"], payload["dim"]) == (3, 8)
    # progress: a line on stderr outside a terminal (after transformers' own loading bars), none with -q
    assert captured.err.splitlines()[-1].startswith("embed: items 3/3 (")
    quiet = ["embed", str(texts), "-o", str(tmp_path / "q.npy"), "--model", str(model_dir)]
    assert main([*quiet, "--column", "body", "--json", "--no-cache", "-q"]) == 0
    assert "embed: items" not in capsys.readouterr().err
    x = np.load(out)
    assert x.shape == (3, 8) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert main([*argv, "--pooling", "max"]) == 2
    assert "pooling must be 'mean' or 'cls'" in capsys.readouterr().err
    assert main(["embed", str(texts), "-o", str(tmp_path / "x.pt"), "--model", str(model_dir)]) == 2
    assert "written as .npy" in capsys.readouterr().err
