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
from safetensors.torch import save_file

from alignkit.adapters import METHODS, OBJECTIVES, Adapter, FitReport, fit_adapter, split_rows
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


def _ref_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, Gram form: HSIC(K, L) = tr(KHLH), K = XXᵀ, L = YYᵀ."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h))

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


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
    assert report.cka_after == pytest.approx(1.0, abs=1e-12)
    _, val = split_rows(len(x), 0.1, 0)
    assert report.recall_at_1_before == pytest.approx(_ref_recall_at_1(x[val].numpy(), y[val].numpy()))
    assert report.recall_at_1_before < 0.5  # a rotation scrambles raw cosine retrieval
    assert report.objective_val == pytest.approx(0.0, abs=1e-20)
    assert (report.n_train, report.n_val, report.evaluated_on) == (180, 20, "validation")


def test_procrustes_matches_scipy_on_noisy_data() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 8))
    y = 0.7 * x @ _orthogonal(8, 4) + 0.3 * rng.standard_normal((150, 8)) + 1.0
    adapter, _ = fit_adapter(torch.from_numpy(x), torch.from_numpy(y), val_fraction=0.2, seed=5)
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
    adapter, report = fit_adapter(torch.from_numpy(x), torch.from_numpy(y), scale=False)
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
    cos_adapter, cos_report = fit_adapter(xt, yt, objective="cosine")
    # normalised rows satisfy y/‖y‖ = (x/‖x‖) Q exactly, so the map is exact on them
    unit = y / np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(cos_adapter(xt).detach().numpy(), unit, atol=1e-10)
    assert cos_adapter.normalize_input
    assert cos_report.objective_val == pytest.approx(0.0, abs=1e-12)
    mse_adapter, _ = fit_adapter(xt, yt, objective="mse")
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
    adapter, _ = fit_adapter(xt, yt, method="linear", ridge=0.0, val_fraction=0.0)
    design = np.hstack([x, np.ones((90, 1))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(adapter(xt).detach().numpy(), design @ coef, atol=1e-10)

    # ridge > 0: λ = ridge·tr(XᶜᵀXᶜ)/d, intercept unpenalised — lstsq on the augmented system
    ridge = 0.05
    adapter, report = fit_adapter(xt, yt, method="linear", ridge=ridge, val_fraction=0.0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = ridge * np.sum(xc**2) / 7
    aug_x = np.vstack([xc, math.sqrt(lam) * np.eye(7)])
    aug_y = np.vstack([yc, np.zeros((7, 5))])
    w = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    expected = (x - x.mean(0)) @ w + y.mean(0)
    np.testing.assert_allclose(adapter(xt).detach().numpy(), expected, atol=1e-10)
    assert report.evaluated_on == "train" and report.objective_val is None
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
    a, ra = fit_adapter(x, y, method="linear", val_fraction=0.25, seed=3)
    b, rb = fit_adapter(x, corrupted, method="linear", val_fraction=0.25, seed=3)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert ra.objective_train == rb.objective_train
    assert rb.objective_val > 1e4 * ra.objective_val


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
    _, linear = fit_adapter(x, y, method="linear", val_fraction=0.2)
    mlp_adapter, mlp = fit_adapter(
        x, y, method="mlp", val_fraction=0.2, epochs=120, lr=1e-2, hidden_dim=64, progress=False
    )
    assert linear.recall_at_1_after < 0.2
    assert mlp.recall_at_1_after > 0.9
    assert mlp.objective_val < 0.2 * linear.objective_val
    assert mlp.cka_after > 0.9 > linear.cka_after
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
    _, mse = fit_adapter(x, y, method="linear", objective="mse", val_fraction=0.25)
    _, report = fit_adapter(
        x, y, method="linear", objective=objective, val_fraction=0.25, epochs=60, lr=1e-2, batch_size=256,
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
    _, linear = fit_adapter(x, y, method="linear", val_fraction=0.2)
    _, mlp = fit_adapter(
        x, y, method="mlp", val_fraction=0.2, epochs=400, lr=3e-2, patience=5, hidden_dim=128, progress=False
    )
    assert mlp.epochs < 400  # early stopping
    assert mlp.best_epoch is not None and mlp.epochs - mlp.best_epoch == 5
    # epoch 0 is the ridge solution (the residual starts at zero): the kept epoch is no worse
    assert mlp.objective_val <= linear.objective_val * (1 + 1e-5)


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


def test_report_metrics_match_references() -> None:
    rng = np.random.default_rng(12)
    x = rng.standard_normal((120, 9))
    y = x @ rng.standard_normal((9, 9)) + 0.8 * rng.standard_normal((120, 9))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    adapter, report = fit_adapter(xt, yt, method="linear", val_fraction=0.25, seed=7)
    _, val = split_rows(120, 0.25, 7)
    xv, yv = x[val.numpy()], y[val.numpy()]
    mapped = adapter(torch.from_numpy(xv)).detach().numpy()
    assert report.recall_at_1_before == pytest.approx(_ref_recall_at_1(xv, yv))
    assert report.recall_at_1_after == pytest.approx(_ref_recall_at_1(mapped, yv))
    assert report.cka_before == pytest.approx(_ref_linear_cka(xv, yv), abs=1e-10)
    assert report.cka_after == pytest.approx(_ref_linear_cka(mapped, yv), abs=1e-10)
    assert report.objective_val == pytest.approx(np.mean((mapped - yv) ** 2), rel=1e-10)
    assert report.recall_at_1_after > report.recall_at_1_before


def test_report_to_dict_is_json_and_table_lists_before_and_after() -> None:
    x, y, _ = _rotation_pair(60, 4)
    _, report = fit_adapter(x, y)
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["method"] == "procrustes" and payload["recall_at_1_after"] == 1.0
    assert set(payload) == set(FitReport.__dataclass_fields__)
    table = report.format_table()
    r1 = next(line for line in table.splitlines() if line.startswith("R@1"))
    assert float(r1.split()[-1]) == 1.0


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
    a64, _ = fit_adapter(x, y)
    a32, _ = fit_adapter(x.float(), y.float())
    assert a64.linear.weight.dtype == torch.float64 and a64(x).dtype == torch.float64
    assert a32.linear.weight.dtype == torch.float32 and a32(x.float()).dtype == torch.float32


@pytest.mark.parametrize(("method", "objective"), [("procrustes", "cosine"), ("linear", "info_nce")])
def test_zero_rows_stay_finite(method: str, objective: str) -> None:
    x, y = _product_map(120)
    x[::7] = 0.0
    y[::5] = 0.0
    adapter, report = fit_adapter(x, y, method=method, objective=objective, epochs=3, progress=False)
    assert bool(torch.isfinite(adapter(torch.zeros(3, 8))).all())
    assert all(math.isfinite(v) for v in (report.cka_after, report.objective_train, report.objective_val))


def test_batches_of_one_and_two_rows() -> None:
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    adapter, report = fit_adapter(x, y, method="linear", objective="clip", epochs=2, progress=False)
    assert (report.n_train, report.n_val) == (1, 1)
    assert bool(torch.isfinite(adapter(x[:1])).all())
    adapter, report = fit_adapter(x[:1], y[:1], val_fraction=0.0)
    assert report.n_train == 1 and bool(torch.isfinite(adapter(x)).all())
    adapter, report = fit_adapter(x, y, method="mlp", val_fraction=0.0, epochs=2, progress=False)
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
    cpu, _ = fit_adapter(x, y)
    gpu, report = fit_adapter(x.cuda(), y.cuda())
    assert gpu.linear.weight.is_cuda and report.recall_at_1_after == 1.0
    torch.testing.assert_close(gpu.linear.weight.cpu(), cpu.linear.weight, atol=1e-9, rtol=0)
    mlp, _ = fit_adapter(x.cuda().float(), y.cuda().float(), method="mlp", epochs=3, progress=False)
    assert mlp(x.cuda().float()).is_cuda
