"""Tests for alignkit.adapters: fit_adapter (procrustes / ridge / gradient fits), Adapter files, the report.

References are written here in float64 numpy (loops where the quantity is a count, e.g. Recall@1) or
taken from a peer (scipy.linalg.orthogonal_procrustes, numpy.linalg.lstsq); none calls the code under
test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from alignkit.adapters import (
    METHODS,
    OBJECTIVES,
    RIDGE_GRID,
    Adapter,
    FitReport,
    fit_adapter,
    ridge_gcv,
    ridge_kfold,
    split_rows,
)
from alignkit.io import save_embeddings


def _orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _ref_recall_at_1(query: np.ndarray, gallery: np.ndarray) -> float:
    """Loop reference: query i is a hit when gallery i has the strictly highest cosine (ties: misses)."""
    hits = 0
    for i in range(len(query)):
        qn = query[i] / max(np.linalg.norm(query[i]), 1e-300)
        own = None
        best_other = -math.inf
        for j in range(len(gallery)):
            gn = gallery[j] / max(np.linalg.norm(gallery[j]), 1e-300)
            s = float(qn @ gn)
            if j == i:
                own = s
            else:
                best_other = max(best_other, s)
        hits += own > best_other
    return hits / len(query)


def _rotation_pair(n: int = 200, d: int = 12) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d))
    q = _orthogonal(d, 2)
    y = 2.5 * x @ q + rng.standard_normal(d) * 3.0
    return torch.from_numpy(x), torch.from_numpy(y), q


# --------------------------------------------------------------------------------------------------
# Procrustes


def test_procrustes_recovers_a_known_rotation_exactly() -> None:
    x, y, q = _rotation_pair()
    adapter, report = fit_adapter(x, y, method="procrustes")
    weight = adapter.linear.weight.detach().numpy().T  # x ↦ x @ weight: c·R
    np.testing.assert_allclose(weight, 2.5 * q, atol=1e-10)
    assert adapter.info["scale"] == pytest.approx(2.5, abs=1e-12)
    np.testing.assert_allclose(adapter(x).detach().numpy(), y.numpy(), atol=1e-10)
    assert report.recall_at_1_after == 1.0
    _, test = split_rows(len(x), 0.2, 0)
    # native target rows are the queries, the (unmapped) source rows the index
    assert report.recall_at_1_before == pytest.approx(_ref_recall_at_1(y[test].numpy(), x[test].numpy()))
    assert report.recall_at_1_before < 0.5  # a rotation scrambles raw cosine retrieval
    assert report.objective_test == pytest.approx(0.0, abs=1e-20)
    assert report.objective_val is None  # a closed form has no validation rows
    assert (report.n_train, report.n_val, report.n_test, report.evaluated_on) == (160, 0, 40, "held-out")
    assert any("only 40 held-out rows" in w for w in report.warnings)


def test_procrustes_matches_scipy_on_noisy_data() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 8))
    y = 0.7 * x @ _orthogonal(8, 4) + 0.3 * rng.standard_normal((150, 8)) + 1.0
    adapter, _ = fit_adapter(
        torch.from_numpy(x), torch.from_numpy(y), method="procrustes", test_fraction=0.2, seed=5
    )
    train, _ = split_rows(150, 0.2, 5)
    xc = x[train.numpy()] - x[train.numpy()].mean(0)
    yc = y[train.numpy()] - y[train.numpy()].mean(0)
    r_ref, sigma_sum = scipy.linalg.orthogonal_procrustes(xc, yc)
    c_ref = sigma_sum / np.sum(xc**2)  # least-squares isotropic scale given R
    np.testing.assert_allclose(adapter.linear.weight.detach().numpy().T, c_ref * r_ref, atol=1e-10)
    assert adapter.info["scale"] == pytest.approx(c_ref, rel=1e-12)
    np.testing.assert_allclose(adapter.target_mean.numpy(), y[train.numpy()].mean(0), atol=1e-12)


@pytest.mark.parametrize(("d_s", "d_t"), [(6, 10), (10, 6)])
def test_procrustes_is_semi_orthogonal_between_different_widths(d_s: int, d_t: int) -> None:
    rng = np.random.default_rng(6)
    low = rng.standard_normal((120, 6))
    embed = _orthogonal(10, 7)[:6]  # (6, 10), orthonormal rows: an isometric embedding of R^6 in R^10
    wide = low @ embed + 0.5
    x, y = (low, wide) if d_s == 6 else (wide, low)
    adapter, report = fit_adapter(torch.from_numpy(x), torch.from_numpy(y), method="procrustes", scale=False)
    r = adapter.linear.weight.detach().numpy().T  # (d_s, d_t)
    assert r.shape == (d_s, d_t)
    gram = r @ r.T if d_s <= d_t else r.T @ r
    np.testing.assert_allclose(gram, np.eye(min(d_s, d_t)), atol=1e-12)
    np.testing.assert_allclose(adapter(torch.from_numpy(x)).detach().numpy(), y, atol=1e-10)
    assert report.recall_at_1_before is None and report.recall_at_1_after == 1.0
    assert "n/a" in report.format_table()
    assert adapter.info["scale"] == 1.0


def test_procrustes_cosine_objective_ignores_row_norms() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((200, 10))
    q = _orthogonal(10, 9)
    row_scale = np.exp(rng.uniform(-2, 2, size=(200, 1)))  # target rows of wildly different norms
    y = row_scale * (x @ q)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    cos_adapter, cos_report = fit_adapter(xt, yt, objective="cosine", method="procrustes")
    # normalised rows satisfy y/‖y‖ = (x/‖x‖) Q exactly, so the map is exact on them
    unit = y / np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(cos_adapter(xt).detach().numpy(), unit, atol=1e-10)
    assert cos_adapter.normalize_input
    assert cos_report.objective_test == pytest.approx(0.0, abs=1e-12)
    mse_adapter, _ = fit_adapter(xt, yt, objective="mse", method="procrustes")
    mapped = mse_adapter(xt).detach().numpy()
    cos = np.sum(mapped * unit, 1) / np.linalg.norm(mapped, axis=1)
    assert cos.min() < 0.99  # the norms disturb the least-squares fit


# --------------------------------------------------------------------------------------------------
# Linear (ridge)


def test_linear_ridge_equals_numpy_lstsq() -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((90, 7)) * np.arange(1, 8)
    y = x @ rng.standard_normal((7, 5)) + 0.4 * rng.standard_normal((90, 5)) - 2.0
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    # ridge = 0: ordinary least squares with an intercept
    adapter, _ = fit_adapter(xt, yt, method="linear", ridge=0.0, test_fraction=0.0)
    design = np.hstack([x, np.ones((90, 1))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(adapter(xt).detach().numpy(), design @ coef, atol=1e-10)

    # ridge > 0: λ = ridge·tr(XᶜᵀXᶜ)/d, intercept unpenalised — lstsq on the augmented system
    ridge = 0.05
    adapter, report = fit_adapter(xt, yt, method="linear", ridge=ridge, test_fraction=0.0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = ridge * np.sum(xc**2) / 7
    aug_x = np.vstack([xc, math.sqrt(lam) * np.eye(7)])
    aug_y = np.vstack([yc, np.zeros((7, 5))])
    w = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    expected = (x - x.mean(0)) @ w + y.mean(0)
    np.testing.assert_allclose(adapter(xt).detach().numpy(), expected, atol=1e-10)
    assert report.evaluated_on == "train" and report.objective_test is None
    assert report.ridge == ridge and report.ridge_selected_by == "given"
    assert report.objective_train == pytest.approx(np.mean((expected - y) ** 2), rel=1e-10)


def test_held_out_rows_do_not_influence_the_fit() -> None:
    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.standard_normal((80, 6)))
    y = torch.from_numpy(rng.standard_normal((80, 4)))
    train, val = split_rows(80, 0.25, 3)
    assert len(val) == 20 and len(train) == 60
    assert sorted(torch.cat([train, val]).tolist()) == list(range(80))
    corrupted = y.clone()
    corrupted[val] = 1e3 * torch.randn(20, 4, dtype=torch.float64)
    a, ra = fit_adapter(x, y, method="linear", test_fraction=0.25, seed=3)  # ridge chosen by GCV on train
    b, rb = fit_adapter(x, corrupted, method="linear", test_fraction=0.25, seed=3)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert ra.objective_train == rb.objective_train
    assert ra.ridge == rb.ridge and ra.ridge_selected_by == "gcv"
    assert rb.objective_test > 1e4 * ra.objective_test


def test_split_rows_is_seeded_and_bounded() -> None:
    assert torch.equal(split_rows(50, 0.2, 1)[1], split_rows(50, 0.2, 1)[1])
    assert not torch.equal(split_rows(50, 0.2, 1)[1], split_rows(50, 0.2, 2)[1])
    assert [len(v) for v in split_rows(10, 0.01, 0)] == [9, 1]  # at least one held-out row
    assert [len(v) for v in split_rows(2, 0.9, 0)] == [1, 1]  # at least one training row
    assert [len(v) for v in split_rows(5, 0.0, 0)] == [5, 0]


# --------------------------------------------------------------------------------------------------
# Gradient fits


def _product_map(n: int = 1500) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    b1, b2, c = (torch.randn(8, 12, generator=g) / 8**0.5 for _ in range(3))
    y = 0.5 * x @ c + (x @ b1) * (x @ b2) + 0.05 * torch.randn(n, 12, generator=g)
    return x, y


def test_mlp_recovers_a_nonlinear_map_better_than_linear() -> None:
    x, y = _product_map()
    _, linear = fit_adapter(x, y, method="linear", test_fraction=0.2)
    mlp_adapter, mlp = fit_adapter(
        x, y, method="mlp", test_fraction=0.2, epochs=120, lr=1e-2, hidden_dim=64, progress=False
    )
    assert linear.recall_at_1_after < 0.2
    assert mlp.recall_at_1_after > 0.9
    assert mlp.objective_test < 0.2 * linear.objective_test
    assert (mlp.n_train, mlp.n_val, mlp.n_test) == (1080, 120, 300)
    assert mlp_adapter.head is not None and mlp_adapter.hidden_dim == 64


def _anisotropic_noise(n: int = 1600) -> tuple[torch.Tensor, torch.Tensor]:
    """y = xA + noise that is large in half of the target dimensions: a least-squares map predicts all
    dimensions alike, a contrastive one learns to down-weight the noisy ones for retrieval."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    a = torch.randn(16, 16, generator=g) / 4
    noise = torch.cat([torch.full((8,), 3.0), torch.full((8,), 0.2)])
    return x, x @ a + noise * torch.randn(n, 16, generator=g)


@pytest.mark.parametrize("objective", ["clip", "info_nce"])
def test_contrastive_objective_improves_recall(objective: str) -> None:
    x, y = _anisotropic_noise()
    _, mse = fit_adapter(x, y, method="linear", objective="mse", test_fraction=0.25)
    _, report = fit_adapter(
        x, y, method="linear", objective=objective, test_fraction=0.25, epochs=60, lr=1e-2, batch_size=256,
        progress=False,
    )  # fmt: skip
    assert report.recall_at_1_before < 0.05
    assert report.recall_at_1_after > 1.8 * mse.recall_at_1_after
    assert report.recall_at_1_after > 0.2
    assert 0 < report.best_epoch <= report.epochs
    assert report.temperature is not None
    if objective == "info_nce":
        assert report.temperature == 0.07


def test_mlp_keeps_the_best_epoch_and_stops_early() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 6, generator=g), torch.randn(300, 5, generator=g)  # nothing to learn
    options = {"method": "mlp", "val_fraction": 0.2, "hidden_dim": 128, "progress": False}
    _, start = fit_adapter(x, y, epochs=1, lr=1e-12, **options)  # one step that changes nothing
    _, mlp = fit_adapter(x, y, epochs=400, lr=3e-2, patience=5, **options)
    assert mlp.epochs < 400  # early stopping
    assert mlp.best_epoch is not None and mlp.epochs - mlp.best_epoch == 5
    # epoch 0 is the ridge solution (the residual starts at zero): the kept epoch is no worse
    assert mlp.objective_val <= start.objective_val * (1 + 1e-5)
    assert mlp.n_val == 48 and mlp.n_test == 60  # validation comes out of the training rows only
    assert "validation" in mlp.format_table() and "held-out rows" in mlp.format_table()


def test_gradient_fit_is_deterministic_by_seed_and_leaves_the_global_rng_alone() -> None:
    x, y = _product_map(200)
    state = torch.random.get_rng_state()
    a, ra = fit_adapter(x, y, method="mlp", objective="cosine", seed=3, epochs=5, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, rb = fit_adapter(x, y, method="mlp", objective="cosine", seed=3, epochs=5, progress=False)
    c, _ = fit_adapter(x, y, method="mlp", objective="cosine", seed=4, epochs=5, progress=False)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert ra.recall_at_1_after == rb.recall_at_1_after
    assert not torch.equal(a.linear.weight, c.linear.weight)


def _ref_rank_metrics(query: np.ndarray, gallery: np.ndarray) -> tuple[float, float]:
    """Loop reference: (R@10, MRR) of query i looking for gallery i by cosine (ties count against)."""
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    ranks = []
    for i in range(len(query)):
        scores = [float(qn[i] @ gn[j]) for j in range(len(gallery))]
        ranks.append(sum(s >= scores[i] for s in scores))
    return float(np.mean([r <= 10 for r in ranks])), float(np.mean([1 / r for r in ranks]))


def test_report_metrics_match_references() -> None:
    rng = np.random.default_rng(12)
    x = rng.standard_normal((400, 9))
    offset = 3.0 * rng.standard_normal(9)  # a shared target direction: the two query directions differ
    y = x @ rng.standard_normal((9, 9)) + 1.5 * rng.standard_normal((400, 9)) + offset
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    adapter, report = fit_adapter(xt, yt, method="linear", test_fraction=0.25, seed=7)
    _, test = split_rows(400, 0.25, 7)
    xv, yv = x[test.numpy()], y[test.numpy()]
    mapped = adapter(torch.from_numpy(xv)).detach().numpy()
    native_as_query = _ref_recall_at_1(yv, mapped)
    mapped_as_query = _ref_recall_at_1(mapped, yv)
    assert abs(native_as_query - mapped_as_query) > 0.02  # the data tells the two directions apart
    assert report.recall_at_1_after == pytest.approx(native_as_query)
    assert report.recall_at_1_before == pytest.approx(_ref_recall_at_1(yv, xv))
    r10, mrr = _ref_rank_metrics(yv, mapped)
    assert report.retrieval["after"]["recall@10"] == pytest.approx(r10)
    assert report.retrieval["after"]["mrr"] == pytest.approx(mrr)
    assert report.objective_test == pytest.approx(np.mean((mapped - yv) ** 2), rel=1e-10)
    assert report.recall_at_1_after > report.recall_at_1_before
    lo, hi = report.recall_at_1_interval
    assert lo < report.recall_at_1_after < hi and report.n_test == 100


def test_report_to_dict_is_json_and_table_lists_before_and_after() -> None:
    x, y, _ = _rotation_pair(60, 4)
    _, report = fit_adapter(x, y, method="procrustes")
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["method"] == "procrustes" and payload["recall_at_1_after"] == 1.0
    assert set(payload) == set(FitReport.__dataclass_fields__)
    assert set(payload["retrieval"]) == {"keep_old", "before", "after", "native"}
    table = report.format_table()
    r1 = next(line for line in table.splitlines() if line.startswith("R@1 "))
    assert r1.split()[1:] == ["1.000", f"{report.recall_at_1_before:.3f}", "1.000", "1.000"]
    assert "hub share" in table and "overlap with native" in table


# --------------------------------------------------------------------------------------------------
# Adapter module, files, validation


@pytest.mark.parametrize(
    ("method", "objective"), [("procrustes", "mse"), ("linear", "mse"), ("linear", "clip"), ("mlp", "cosine")]
)
def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, method: str, objective: str) -> None:
    x, y = _product_map(100)
    adapter, _ = fit_adapter(x, y, method=method, objective=objective, epochs=3, progress=False)
    path = tmp_path / "adapter.safetensors"
    adapter.save(path)
    adapter.save(path)  # overwriting is atomic too
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]  # no temporary files left
    loaded = Adapter.load(path)
    assert loaded.config == adapter.config
    assert loaded.config["info"]["objective"] == objective
    probe = torch.randn(17, 8)
    assert torch.equal(loaded(probe), adapter(probe))
    assert not loaded.training


def test_load_rejects_files_that_are_not_adapters(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(ValueError, match=r"not a readable \.safetensors"):
        Adapter.load(garbage)
    embeddings = tmp_path / "embeddings.safetensors"
    save_embeddings(embeddings, torch.randn(4, 3))
    with pytest.raises(ValueError, match="not an alignkit adapter"):
        Adapter.load(embeddings)
    with pytest.raises(ValueError, match="no such adapter file"):
        Adapter.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        Adapter.load(tmp_path / "adapter.npy")

    good = Adapter("linear", 3, 2)
    tensors = {k: v.contiguous() for k, v in good.state_dict().items()}
    config = good.config
    bad_json = tmp_path / "bad_json.safetensors"
    save_file(tensors, str(bad_json), metadata={"alignkit_adapter": "{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        Adapter.load(bad_json)
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={"alignkit_adapter": json.dumps({**config, "version": 99})})
    with pytest.raises(ValueError, match="version 99"):
        Adapter.load(newer)
    wrong_shape = tmp_path / "wrong_shape.safetensors"
    save_file(
        {**tensors, "linear.weight": torch.zeros(2, 4)},
        str(wrong_shape),
        metadata={"alignkit_adapter": json.dumps(config)},
    )
    with pytest.raises(ValueError, match=r"'linear.weight' has shape \(2, 4\)"):
        Adapter.load(wrong_shape)
    missing = tmp_path / "missing_tensor.safetensors"
    save_file(
        {k: v for k, v in tensors.items() if k != "linear.bias"},
        str(missing),
        metadata={"alignkit_adapter": json.dumps(config)},
    )
    with pytest.raises(ValueError, match="missing"):
        Adapter.load(missing)
    bad_method = tmp_path / "bad_method.safetensors"
    save_file(tensors, str(bad_method), metadata={"alignkit_adapter": json.dumps({**config, "method": "x"})})
    with pytest.raises(ValueError, match="method must be one of"):
        Adapter.load(bad_method)


def test_save_refuses_a_missing_directory_and_wrong_extension(tmp_path: Path) -> None:
    adapter = Adapter("linear", 3, 2)
    with pytest.raises(ValueError, match="does not exist"):
        adapter.save(tmp_path / "nope" / "a.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        adapter.save(tmp_path / "a.pt")


def test_forward_validates_its_input() -> None:
    adapter = Adapter("linear", 4, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4\).*got \(2, 5\)"):
        adapter(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\)"):
        adapter(torch.randn(4))
    with pytest.raises(ValueError, match="x has 1 non-finite"):
        adapter(torch.tensor([[0.0, 1.0, float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="x must be a floating-point"):
        adapter(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="method must be one of"):
        Adapter("pca", 4, 3)
    with pytest.raises(ValueError, match="num_layers must be an integer ≥ 2"):
        Adapter("mlp", 4, 3, num_layers=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(dtype: torch.dtype) -> None:
    x, y = _product_map(200)
    adapter, _ = fit_adapter(x, y, method="mlp", objective="cosine", epochs=3, progress=False)
    half = x[:10].to(dtype)
    out = adapter(half)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    reference = adapter(half.float())
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.02)
    _, report = fit_adapter(x.to(dtype), y.to(dtype), method="linear")
    assert math.isfinite(report.objective_train)


def test_float64_input_gives_a_float64_adapter_and_float32_a_float32_one() -> None:
    x, y, _ = _rotation_pair(40, 3)
    a64, _ = fit_adapter(x, y, method="procrustes")
    a32, _ = fit_adapter(x.float(), y.float(), method="procrustes")
    assert a64.linear.weight.dtype == torch.float64 and a64(x).dtype == torch.float64
    assert a32.linear.weight.dtype == torch.float32 and a32(x.float()).dtype == torch.float32


@pytest.mark.parametrize(("method", "objective"), [("procrustes", "cosine"), ("linear", "info_nce")])
def test_zero_rows_stay_finite(method: str, objective: str) -> None:
    x, y = _product_map(120)
    x[::7] = 0.0
    y[::5] = 0.0
    adapter, report = fit_adapter(x, y, method=method, objective=objective, epochs=3, progress=False)
    assert bool(torch.isfinite(adapter(torch.zeros(3, 8))).all())
    values = (report.recall_at_1_after, report.objective_train, report.objective_test)
    assert all(math.isfinite(v) for v in values)


def test_batches_of_one_and_two_rows() -> None:
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    adapter, report = fit_adapter(x, y, method="linear", objective="clip", epochs=2, progress=False)
    assert (report.n_train, report.n_val, report.n_test) == (1, 0, 1)
    assert bool(torch.isfinite(adapter(x[:1])).all())
    adapter, report = fit_adapter(x[:1], y[:1], test_fraction=0.0, method="procrustes")
    assert report.n_train == 1 and bool(torch.isfinite(adapter(x)).all())
    adapter, report = fit_adapter(
        x, y, method="mlp", test_fraction=0.0, val_fraction=0.0, epochs=2, progress=False
    )
    assert report.evaluated_on == "train" and adapter(x).shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "pca"}, "method must be one of"),
        ({"objective": "triplet"}, "objective must be one of"),
        (
            {"method": "procrustes", "objective": "clip"},
            "objective must be one of .* for method='procrustes'",
        ),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \[0, 1\)"),
        ({"ridge": "fast"}, "ridge must be a finite number >= 0 or 'auto'"),
        ({"restore_mean": 1}, "restore_mean must be a bool"),
        ({"refine_iters": -1}, "refine_iters must be an integer ≥ 0"),
        ({"unpaired_source": torch.randn(5, 3)}, "needs both unpaired_source and unpaired_target"),
        (
            {"method": "mlp", "unpaired_source": torch.randn(5, 3), "unpaired_target": torch.randn(5, 3)},
            "refinement .* needs a closed-form fit",
        ),
        ({"epochs": 0}, "epochs must be an integer ≥ 1"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"seed": -1}, "seed must be an integer ≥ 0"),
        ({"temperature": 0.001, "method": "linear", "objective": "clip"}, "temperature must be ≥ 0.01"),
        ({"ridge": -1.0}, "ridge must be a finite number >= 0"),
        ({"batch_size": 0}, "batch_size must be an integer ≥ 1"),
        ({"patience": 0}, "patience must be an integer ≥ 1"),
        ({"scale": 1}, "scale must be a bool"),
    ],
)
def test_fit_rejects_bad_hyper_parameters(kwargs: dict, match: str) -> None:
    x, y = torch.randn(10, 3), torch.randn(10, 3)
    with pytest.raises(ValueError, match=match):
        fit_adapter(x, y, **kwargs)


def test_fit_rejects_bad_tensors() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"source and target must have the same number of rows.*\(10, 3\)"):
        fit_adapter(x, torch.randn(9, 3))
    with pytest.raises(ValueError, match=r"target must have shape \(N, d\), got \(10,\)"):
        fit_adapter(x, torch.randn(10))
    bad = torch.randn(10, 3)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="source has 1 non-finite"):
        fit_adapter(bad, x)
    with pytest.raises(ValueError, match=r"source must be a torch\.Tensor"):
        fit_adapter(np.zeros((10, 3)), x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 rows"):
        fit_adapter(x[:1], x[:1])


def test_public_names() -> None:
    assert METHODS == ("procrustes", "linear", "mlp")
    assert OBJECTIVES == ("mse", "cosine", "clip", "info_nce")
    assert "mlp" in repr(Adapter("mlp", 3, 2, hidden_dim=5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_matches_cpu() -> None:
    x, y, _ = _rotation_pair(100, 6)
    cpu, _ = fit_adapter(x, y, method="procrustes")
    gpu, report = fit_adapter(x.cuda(), y.cuda(), method="procrustes")
    assert gpu.linear.weight.is_cuda and report.recall_at_1_after == 1.0
    torch.testing.assert_close(gpu.linear.weight.cpu(), cpu.linear.weight, atol=1e-9, rtol=0)
    mlp, _ = fit_adapter(x.cuda().float(), y.cuda().float(), method="mlp", epochs=3, progress=False)
    assert mlp(x.cuda().float()).is_cuda


# --------------------------------------------------------------------------------------------------
# Migration: the report's direction, mean restoration, ridge by GCV, refinement with unpaired rows


def test_report_direction_native_queries_see_a_hub_that_mapped_queries_miss() -> None:
    """Mapped rows = native rows + noise, plus one row at the target's mean direction. Mapped rows as
    queries find their own native row; native rows as queries (how an index is used) all hit the hub."""
    from alignkit.search import evaluate_migration

    rng = np.random.default_rng(20)
    n, d = 200, 64
    mu = rng.standard_normal(d)
    mu /= np.linalg.norm(mu)
    native = mu + 0.3 * rng.standard_normal((n, d)) / math.sqrt(d)
    mapped = native + 0.45 * rng.standard_normal((n, d)) / math.sqrt(d)
    mapped[0] = mu
    mapped_as_query = _ref_recall_at_1(mapped, native)
    native_as_query = _ref_recall_at_1(native, mapped)
    assert mapped_as_query > 0.8 and native_as_query < 0.1  # the two directions disagree
    old = rng.standard_normal((n, d))
    cols = evaluate_migration(torch.from_numpy(old), torch.from_numpy(native), torch.from_numpy(mapped))
    assert cols["after"]["recall@1"] == pytest.approx(native_as_query)
    assert cols["after"]["hub_share"] > 0.9  # row 0 wins almost every query


def _anisotropic_target(n: int = 1500, d: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit target rows sharing a strong mean direction (mean cosine ≈ 0.6), as sentence encoders do."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    mu = 3.0 * torch.randn(d, generator=g) / d**0.5
    a = torch.randn(d, d, generator=g) / d**0.5
    y = F.normalize(mu + 0.5 * x @ a + 0.1 * torch.randn(n, d, generator=g), dim=1)
    return x, y


def test_mean_restoration_on_an_anisotropic_target() -> None:
    x, y = _anisotropic_target()
    _, test = split_rows(len(x), 0.2, 0)

    def mean_cos(rows: torch.Tensor) -> float:
        unit = F.normalize(rows, dim=1)
        return float((unit @ unit.T).mean())

    native = mean_cos(y[test])
    assert native > 0.5
    options = {"method": "linear", "objective": "info_nce", "epochs": 30, "lr": 1e-2, "batch_size": 256}
    lost, lost_report = fit_adapter(x, y, restore_mean=False, progress=False, **options)
    kept, kept_report = fit_adapter(x, y, progress=False, **options)
    assert mean_cos(lost.transform(x[test])) < native - 0.3  # the contrastive fit lost the mean direction
    assert mean_cos(kept.transform(x[test])) == pytest.approx(native, abs=0.03)
    assert kept_report.mean_restored and not lost_report.mean_restored
    # the correction is exact on the training rows: same mean and same RMS spread as the target
    train, _ = split_rows(len(x), 0.2, 0)
    fit_rows = train[split_rows(len(train), 0.1, 1)[0]]
    out = kept.transform(x[fit_rows]).double()
    target = y[fit_rows].double()
    torch.testing.assert_close(out.mean(0), target.mean(0), atol=1e-5, rtol=0)
    spread = (out - out.mean(0)).square().mean().sqrt()
    assert float(spread) == pytest.approx(float((target - target.mean(0)).square().mean().sqrt()), rel=1e-4)


def _ref_gcv(x: np.ndarray, y: np.ndarray, rel: float) -> float:
    """GCV from the explicit (n, n) hat matrix of ridge with an unpenalised intercept (float64)."""
    n, d = x.shape
    xc = x - x.mean(0)
    lam = rel * np.sum(xc**2) / d
    hat = np.ones((n, n)) / n + xc @ np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T)
    resid = (np.eye(n) - hat) @ y
    return float(np.sum(resid**2) / (n * (1 - np.trace(hat) / n) ** 2))


def test_ridge_auto_chooses_a_sensible_value_when_n_is_close_to_d() -> None:
    rng = np.random.default_rng(21)
    n, d, d_t = 60, 48, 20
    w = rng.standard_normal((d, d_t)) / math.sqrt(d)

    def draw(rows: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((rows, d))
        return x, x @ w + 0.5 * rng.standard_normal((rows, d_t))

    x, y = draw(n)
    x_new, y_new = draw(4000)
    best, scores = ridge_gcv(torch.from_numpy(x), torch.from_numpy(y))
    for i in (0, 10, 20, 30):
        assert float(scores[i]) == pytest.approx(_ref_gcv(x, y, RIDGE_GRID[i]), rel=1e-8)

    def test_error(ridge: float) -> float:
        adapter, _ = fit_adapter(torch.from_numpy(x), torch.from_numpy(y), method="linear", ridge=ridge,
                                 test_fraction=0.0)  # fmt: skip
        return float(np.mean((adapter(torch.from_numpy(x_new)).detach().numpy() - y_new) ** 2))

    errors = {rel: test_error(rel) for rel in RIDGE_GRID[::4]}
    oracle = min(errors.values())
    assert 1e-3 < best < 10  # neither plain least squares nor everything shrunk away
    assert test_error(best) < 1.15 * oracle
    assert test_error(1e-4) > 2 * test_error(best)  # the old default collapses at n ≈ d
    _, report = fit_adapter(torch.from_numpy(x), torch.from_numpy(y), method="linear", test_fraction=0.0)
    assert report.ridge == best and report.ridge_selected_by == "gcv"


def _ref_kfold(x: np.ndarray, y: np.ndarray, rel: float, folds: int, seed: int) -> float:
    """K-fold error by refitting ridge (intercept unpenalised) on each part's complement with numpy."""
    n, d = x.shape
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    total = 0.0
    for part in np.array_split(order, folds):
        fit = np.setdiff1d(np.arange(n), part)
        mx, my = x[fit].mean(0), y[fit].mean(0)
        xc = x[fit] - mx
        lam = rel * np.sum(xc**2) / d
        w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ (y[fit] - my))
        total += float(np.sum(((x[part] - mx) @ w + my - y[part]) ** 2))
    return total / (n * y.shape[1])


def _bayes_ridge_data(
    n: int, d: int, d_t: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Y = XW + ε with X, W, ε Gaussian: the best ridge is known, λ* = σ²/τ² = noise²·d (posterior
    mean), i.e. relative ridge λ*/(tr(XᶜᵀXᶜ)/d) ≈ noise²·d/n. Returns (x, y, x_new, y_new, rel*)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, d_t)) / math.sqrt(d)

    def draw(rows: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((rows, d))
        return x, x @ w + noise * rng.standard_normal((rows, d_t))

    (x, y), (x_new, y_new) = draw(n), draw(4000)
    xc = x - x.mean(0)
    return x, y, x_new, y_new, noise**2 * d / (np.sum(xc**2) / d)


def test_ridge_kfold_equals_refitting_on_every_fold() -> None:
    x, y, *_ = _bayes_ridge_data(50, 12, 5, 1.0, 30)
    best, scores = ridge_kfold(torch.from_numpy(x), torch.from_numpy(y), folds=4, seed=7)
    for i in (4, 12, 20, 28, 32):
        assert float(scores[i]) == pytest.approx(_ref_kfold(x, y, RIDGE_GRID[i], 4, 7), rel=1e-9)
    assert best == RIDGE_GRID[int(scores.argmin())]
    # ridge = 0 is the minimum-norm least-squares fit; here d < n so it equals the normal equations
    zero, _ = ridge_kfold(torch.from_numpy(x), torch.from_numpy(y), folds=4, seed=7, grid=(0.0,))
    assert zero == 0.0
    _, at_zero = ridge_kfold(torch.from_numpy(x), torch.from_numpy(y), folds=4, seed=7, grid=(0.0, 1.0))
    assert float(at_zero[0]) == pytest.approx(_ref_kfold(x, y, 0.0, 4, 7), rel=1e-9)
    # more folds than rows: leave-one-out; one row: nothing to cross-validate
    _, loo = ridge_kfold(torch.from_numpy(x[:6]), torch.from_numpy(y[:6]), folds=10, grid=(0.5,))
    assert float(loo[0]) == pytest.approx(_ref_kfold(x[:6], y[:6], 0.5, 6, 0), rel=1e-9)
    single, inf = ridge_kfold(torch.from_numpy(x[:1]), torch.from_numpy(y[:1]))
    assert single == max(RIDGE_GRID) and bool(torch.isinf(inf).all())


def test_ridge_kfold_chooses_the_known_large_ridge_when_n_is_close_to_d() -> None:
    """n = 60 rows, d = 48: the Bayes-optimal relative ridge is ≈ 0.8 (shrink hard); least squares
    (1e-4, the old default) over-fits. K-fold must land near the known value and predict as well."""
    x, y, x_new, y_new, best_rel = _bayes_ridge_data(60, 48, 40, 1.0, 31)
    assert 0.5 < best_rel < 1.2
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def test_error(ridge: float) -> float:
        adapter, _ = fit_adapter(xt, yt, method="linear", ridge=ridge, test_fraction=0.0, progress=False)
        return float(np.mean((adapter(torch.from_numpy(x_new)).detach().numpy() - y_new) ** 2))

    chosen, _ = ridge_kfold(xt, yt, folds=5)
    assert best_rel / 4 < chosen < best_rel * 4  # within about half a decade of the known optimum
    assert test_error(chosen) < 1.05 * test_error(best_rel)
    assert test_error(1e-4) > 3 * test_error(chosen)
    _, report = fit_adapter(xt, yt, ridge_cv="kfold", test_fraction=0.0, progress=False)
    assert (report.ridge, report.ridge_selected_by) == (chosen, "5-fold")
    assert f"ridge {chosen:.3g} by 5-fold CV" in report.format_table()


def test_ridge_kfold_agrees_with_gcv_on_an_easy_case() -> None:
    """n = 2000 ≫ d = 20, known relative optimum ≈ 0.01: both selections land within a few grid steps
    of each other and of it, and predict equally well."""
    x, y, x_new, y_new, best_rel = _bayes_ridge_data(2000, 20, 10, 1.0, 32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    by_kfold, _ = ridge_kfold(xt, yt, folds=5)
    by_gcv, _ = ridge_gcv(xt, yt)
    assert abs(math.log10(by_kfold / by_gcv)) <= 0.75  # at most 3 quarter-decade steps apart
    assert abs(math.log10(by_kfold / best_rel)) <= 1.0

    def test_error(cv: str) -> float:
        adapter, _ = fit_adapter(xt, yt, ridge_cv=cv, test_fraction=0.0, progress=False)
        return float(np.mean((adapter(torch.from_numpy(x_new)).detach().numpy() - y_new) ** 2))

    assert test_error("kfold:10") == pytest.approx(test_error("gcv"), rel=0.01)


@pytest.mark.parametrize("value", ["loo", "kfold:1", "kfold:x", "kfold5", 5])
def test_ridge_cv_rejects_bad_values(value: object) -> None:
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="ridge_cv must be 'gcv', 'kfold' or 'kfold:K'"):
        fit_adapter(x, x, ridge_cv=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="folds"):
        ridge_kfold(x, x, folds=1)


def test_refinement_with_unpaired_rows_improves_a_few_pair_fit() -> None:
    """16 pairs in 32 dimensions under-determine the rotation; 984 unpaired rows of each side (shuffled,
    so no pairing survives) let mutual-nearest-neighbour rounds recover it."""
    rng = np.random.default_rng(22)
    n, d, pairs = 1200, 32, 16
    y = rng.standard_normal((n, d))
    x = y @ _orthogonal(d, 23) + 0.3 * rng.standard_normal((n, d))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    held = torch.arange(1000, n)
    unpaired_source = xt[pairs:1000][torch.from_numpy(rng.permutation(1000 - pairs))]
    unpaired_target = yt[pairs:1000][torch.from_numpy(rng.permutation(1000 - pairs))]
    plain, _ = fit_adapter(xt[:pairs], yt[:pairs], test_fraction=0.0, method="procrustes")
    unpaired = {"unpaired_source": unpaired_source, "unpaired_target": unpaired_target}
    refined, report = fit_adapter(xt[:pairs], yt[:pairs], method="procrustes", test_fraction=0.0, **unpaired)
    assert len(report.refined_pairs) == 3 and report.refined_pairs[-1] > 900
    before = _ref_recall_at_1(y[held.numpy()], plain.transform(xt[held]).numpy())
    after = _ref_recall_at_1(y[held.numpy()], refined.transform(xt[held]).numpy())
    assert before < 0.6 and after > 0.95


def test_report_can_score_with_csls() -> None:
    x, y = _anisotropic_target(600)
    from alignkit.search import search

    y = y + 0.3 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))  # not perfectly mappable
    _, plain = fit_adapter(x, y, objective="cosine", method="procrustes")
    adapter, corrected = fit_adapter(x, y, objective="cosine", csls_k=10, method="procrustes")
    assert corrected.csls_k == 10 and "CSLS k=10" in corrected.format_table()
    assert corrected.retrieval["native"] == plain.retrieval["native"]  # native search stays plain cosine
    _, test = split_rows(len(x), 0.2, 0)
    expected = search(y[test], adapter.transform(x[test]), csls_k=10, overlap_index=y[test]).metrics
    assert corrected.retrieval["after"] == expected
    assert corrected.retrieval["after"]["k_skew"] != plain.retrieval["after"]["k_skew"]
