"""Tests for alignkit.search (query set against an index) and alignkit.functional.hubs.

References are float64 numpy loops over the full score matrix (brute force); none calls the code
under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import alignkit.functional as AF
from alignkit.search import csls_radii, evaluate_migration, format_migration_table, search


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)


def _brute(queries: np.ndarray, index: np.ndarray, csls_k: int = 0) -> np.ndarray:
    """(N, M) float64 ranking scores: cosine, or CSLS 2cos − r_Q(g) − r_G(q) from explicit loops."""
    q, g = _unit(queries), _unit(index)
    cos = q @ g.T
    if not csls_k:
        return cos
    r_index = np.array([np.sort(cos[:, j])[::-1][:csls_k].mean() for j in range(g.shape[0])])
    r_query = np.array([np.sort(cos[i])[::-1][:csls_k].mean() for i in range(q.shape[0])])
    return 2 * cos - r_index[None, :] - r_query[:, None]


def _ref_metrics(scores: np.ndarray, ids: np.ndarray, k: int) -> dict[str, float]:
    n, m = scores.shape
    ranks = np.array([int(np.sum(scores[i] >= scores[i, ids[i]])) for i in range(n)])
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    counts = np.zeros(m)
    for row in topk:
        for j in row:
            counts[j] += 1
    top1 = np.bincount(topk[:, 0], minlength=m)
    mu, sd = counts.mean(), counts.std()
    return {
        "recall@1": float(np.mean(ranks <= 1)),
        f"recall@{k}": float(np.mean(ranks <= k)),
        "mrr": float(np.mean(1.0 / ranks)),
        "hub_share": top1.max() / n,
        "k_skew": float(np.mean((counts - mu) ** 3) / sd**3) if sd > 0 else 0.0,
        "antihub_share": float(np.mean(counts == 0)),
    }


@pytest.mark.parametrize("csls_k", [0, 5])
def test_search_matches_brute_force_with_an_index_of_another_size(csls_k: int) -> None:
    rng = np.random.default_rng(0)
    index = rng.standard_normal((90, 16)) + 0.8  # a shared mean direction: hubs appear
    ids = rng.integers(0, 90, size=60)
    queries = index[ids] + 0.9 * rng.standard_normal((60, 16))
    result = search(
        torch.from_numpy(queries), torch.from_numpy(index), ids=torch.from_numpy(ids), k=10, csls_k=csls_k,
        chunk_size=7,
    )  # fmt: skip
    scores = _brute(queries, index, csls_k)
    ref = _ref_metrics(scores, ids, 10)
    for key, value in ref.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-9), key
    top = np.sort(scores, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(result.scores.numpy(), top, atol=1e-9)
    picked = np.take_along_axis(scores, result.indices.numpy(), 1)
    np.testing.assert_allclose(picked, top, atol=1e-9)
    assert result.metrics["n_queries"] == 60 and result.metrics["n_index"] == 90


def test_csls_reduces_hubness_and_radii_match_the_loop() -> None:
    rng = np.random.default_rng(1)
    hub = rng.standard_normal(32)
    index = rng.standard_normal((200, 32))
    index[:3] += 3 * hub  # three rows near the common direction of the queries
    queries = rng.standard_normal((200, 32)) + 0.7 * hub
    plain = search(torch.from_numpy(queries), torch.from_numpy(index))
    corrected = search(torch.from_numpy(queries), torch.from_numpy(index), csls_k=10)
    assert plain.metrics["hub_share"] > 0.2
    assert corrected.metrics["hub_share"] < plain.metrics["hub_share"] / 2
    radii = csls_radii(torch.from_numpy(index), torch.from_numpy(queries), k=10).numpy()
    cos = _unit(index) @ _unit(queries).T
    np.testing.assert_allclose(radii, np.sort(cos, 1)[:, ::-1][:, :10].mean(1), atol=1e-12)


def test_overlap_with_another_index_of_the_same_items() -> None:
    rng = np.random.default_rng(2)
    index = rng.standard_normal((50, 8))
    queries = rng.standard_normal((20, 8))
    q, x = torch.from_numpy(queries), torch.from_numpy(index)
    same = search(q, x, overlap_index=x * 3.0)  # cosine: scaling changes nothing
    assert same.metrics["overlap@10"] == 1.0
    other = rng.standard_normal((50, 8))
    mixed = search(q, x, overlap_index=torch.from_numpy(other))
    top_a = np.argsort(-(_unit(queries) @ _unit(index).T), 1)[:, :10]
    top_b = np.argsort(-(_unit(queries) @ _unit(other).T), 1)[:, :10]
    expected = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_a, top_b, strict=True)])
    assert mixed.metrics["overlap@10"] == pytest.approx(expected)
    assert "recall@1" not in mixed.metrics  # N ≠ M and no ids: nothing to recall
    wide = search(q, x, overlap_index=torch.from_numpy(rng.standard_normal((50, 3))),
                  overlap_queries=torch.from_numpy(rng.standard_normal((20, 3))))  # fmt: skip
    assert 0.0 <= wide.metrics["overlap@10"] <= 1.0


def test_hubness_and_overlap_functions_against_loops() -> None:
    idx = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 1, 4], [5, 1, 0]])
    stats = AF.hubness(idx, num_items=7)
    counts = np.array([4, 3, 2, 1, 1, 1, 0], dtype=float)
    mu, sd = counts.mean(), counts.std()
    assert stats["hub_share"] == 3 / 4
    assert stats["k_skew"] == pytest.approx(np.mean((counts - mu) ** 3) / sd**3)
    assert stats["k_occurrence_max"] == 1.0 and stats["antihub_share"] == pytest.approx(1 / 7)
    assert torch.equal(AF.k_occurrence(idx, 7), torch.tensor([4, 3, 2, 1, 1, 1, 0]))
    even = AF.hubness(torch.arange(6).view(6, 1), num_items=6)
    assert even["k_skew"] == 0.0 and even["hub_share"] == pytest.approx(1 / 6)
    a = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 1, 2]])
    b = torch.tensor([[3, 2, 9], [7, 8, 9], [1, 2, 2]])
    per_row = AF.topk_overlap(a, b, reduction="none")
    assert per_row.tolist() == pytest.approx([2 / 3, 0.0, 2 / 3])
    assert float(AF.topk_overlap(a, b)) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="indices must lie in"):
        AF.hubness(idx, num_items=5)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        AF.topk_overlap(a, b[:, :2])
    with pytest.raises(ValueError, match="must hold integer"):
        AF.hubness(idx.float(), 7)


def test_search_rejects_bad_input() -> None:
    q, x = torch.randn(5, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match="same width"):
        search(q, torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 7\]"):
        search(q, x, ids=[0, 1, 2, 3, 8])
    with pytest.raises(ValueError, match=r"ids must have shape \(5,\)"):
        search(q, x, ids=[0, 1])
    with pytest.raises(ValueError, match="overlap_index must hold the same 8 items"):
        search(q, x, overlap_index=torch.randn(7, 4))
    with pytest.raises(ValueError, match="csls_k must be an integer"):
        search(q, x, csls_k=-1)


def test_evaluate_migration_columns_and_table() -> None:
    rng = np.random.default_rng(3)
    new = rng.standard_normal((120, 10))
    old = new @ np.linalg.qr(rng.standard_normal((10, 10)))[0]  # a rotated copy: raw search fails
    cols = evaluate_migration(torch.from_numpy(old), torch.from_numpy(new), torch.from_numpy(new.copy()))
    assert cols["after"]["recall@1"] == 1.0 and cols["after"]["overlap@10"] == 1.0
    assert cols["native"]["recall@1"] == 1.0
    assert cols["before"]["recall@1"] < 0.3
    assert cols["keep_old"]["recall@1"] == 1.0  # old queries on the old index: self-retrieval
    assert cols["keep_old"]["overlap@10"] == 1.0  # a rotation keeps every neighbourhood
    narrow = evaluate_migration(torch.from_numpy(old[:, :4]), torch.from_numpy(new), torch.from_numpy(new))
    assert narrow["before"] is None
    table = format_migration_table(narrow)
    assert "n/a" in table and "hub share" in table and math.isfinite(narrow["after"]["mrr"])
