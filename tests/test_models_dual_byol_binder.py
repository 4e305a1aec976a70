"""DualEncoder (CLIP / LiT), CrossModalBYOL and Binder (ImageBind): references written with loops in
float64, and small synthetic training runs showing that each system aligns (not only that it runs)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

import alignkit.functional as AF
from alignkit.losses import CLIPLoss, InfoNCELoss
from alignkit.models import Binder, CrossModalBYOL, DualEncoder
from alignkit.models import binder as binder_module

# ------------------------------------------------------------------------------------------------
# helpers


def _mlp(i: int, o: int, h: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


def _linear_weight(head: nn.Module) -> Tensor:
    (linear,) = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linear.weight


def _set_identity(head: nn.Module) -> None:
    with torch.no_grad():
        w = _linear_weight(head)
        w.copy_(torch.eye(w.shape[0], w.shape[1], dtype=w.dtype))


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 0 else list(v)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(x * y for x, y in zip(u, v, strict=True))


def _ref_symmetric_ce(ea: Tensor, eb: Tensor, scale: float) -> float:
    """½ (row CE + column CE) of the logits scale·ea·ebᵀ with the diagonal as targets, by loops."""
    a, b = ea.double().tolist(), eb.double().tolist()
    n = len(a)
    total = 0.0
    for i in range(n):
        row = [scale * _dot(a[i], b[j]) for j in range(n)]
        col = [scale * _dot(a[j], b[i]) for j in range(n)]
        total += 0.5 * (math.log(sum(math.exp(v) for v in row)) - row[i])
        total += 0.5 * (math.log(sum(math.exp(v) for v in col)) - col[i])
    return total / n


def _ref_byol(p: Tensor, t: Tensor) -> float:
    """mean_i (2 − 2 cos(p_i, t_i)), by loops."""
    ps, ts = p.double().tolist(), t.double().tolist()
    return sum(2 - 2 * _dot(_unit(u), _unit(v)) for u, v in zip(ps, ts, strict=True)) / len(ps)


def _two_views(n: int, k: int = 6, noise: float = 0.1) -> tuple[Tensor, Tensor]:
    """Two noisy nonlinear views (32-d and 24-d) of a shared Gaussian latent (k-d)."""
    g = torch.Generator().manual_seed(1)
    wa = torch.randn(k, 32, generator=g) / k**0.5
    wb1 = torch.randn(k, 16, generator=g) / k**0.5
    wb2 = torch.randn(16, 24, generator=g) / 4
    z = torch.randn(n, k, generator=g)
    a = torch.tanh(1.5 * z @ wa) + noise * torch.randn(n, 32, generator=g)
    b = 3 * torch.sin(z @ wb1) @ wb2 + noise * torch.randn(n, 24, generator=g)
    return a, b


def _three_views(n: int, k: int = 6, noise: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    w = [torch.randn(k, d, generator=g) / k**0.5 for d in (32, 24, 20)]
    z = torch.randn(n, k, generator=g)
    x = torch.tanh(1.5 * z @ w[0]) + noise * torch.randn(n, 32, generator=g)
    a = torch.sin(2 * z @ w[1]) + noise * torch.randn(n, 24, generator=g)
    b = torch.relu(z @ w[2]) ** 1.5 + noise * torch.randn(n, 20, generator=g)
    return x, a, b


class _Tokens(nn.Module):
    """A token tower: (B, T, d_in) → (B, T, d_out) with a Linear per token."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)


# ------------------------------------------------------------------------------------------------
# DualEncoder


def test_dual_encoder_forward_matches_clip_reference() -> None:
    tower_a, tower_b = _mlp(10, 8).double(), _mlp(6, 5).double()
    model = DualEncoder(tower_a, tower_b, 8, 5, 4).double()
    a, b = torch.randn(7, 10, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    out = model(a, b)
    assert set(out) >= {"loss", "logit_scale", "emb_a", "emb_b"}
    with torch.no_grad():
        ha = tower_a(a) @ _linear_weight(model.proj_a).T  # CLIP projection: bias-free Linear
        hb = tower_b(b) @ _linear_weight(model.proj_b).T
        ea = torch.stack([r / r.norm() for r in ha])
        eb = torch.stack([r / r.norm() for r in hb])
    torch.testing.assert_close(out["emb_a"], ea)
    torch.testing.assert_close(out["emb_b"], eb)
    assert out["emb_a"].shape == (7, 4) and out["emb_a"].dtype == torch.float64
    scale = float(out["logit_scale"].detach())
    assert scale == pytest.approx(1 / 0.07, rel=1e-6)
    ref = _ref_symmetric_ce(ea, eb, scale)
    assert out["loss"].item() == pytest.approx(ref, rel=1e-9)
    # the temperature is owned by the loss module and learns
    out["loss"].backward()
    assert model.loss.log_scale.grad is not None and model.loss.log_scale.grad.abs() > 0


def test_dual_encoder_frozen_tower_gets_no_gradient_and_stays_in_eval() -> None:
    tower_a = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 8))
    tower_b = _mlp(6, 5)
    model = DualEncoder(tower_a, tower_b, 8, 5, 4, freeze_a=True)
    model.eval()
    model.train()  # LiT: the locked tower must not switch back to train mode
    assert model.training and model.proj_a.training and tower_b.training
    assert not tower_a.training and not any(m.training for m in tower_a.modules())
    assert all(not p.requires_grad for p in tower_a.parameters())
    bn = tower_a[1]
    running = bn.running_mean.clone()
    a, b = torch.randn(16, 10) * 3 + 1, torch.randn(16, 6)
    out = model(a, b)
    out["loss"].backward()
    assert all(p.grad is None for p in tower_a.parameters())
    assert _linear_weight(model.proj_a).grad is not None and _linear_weight(model.proj_a).grad.abs().sum() > 0
    assert all(p.grad is not None for p in tower_b.parameters())
    torch.testing.assert_close(bn.running_mean, running)  # eval-mode BatchNorm: statistics locked
    # eval mode: dropout off, so two passes agree
    torch.testing.assert_close(model.encode_a(a), model.encode_a(a))
    # unlocking restores training
    model.freeze("a", False)
    assert tower_a.training and all(p.requires_grad for p in tower_a.parameters())
    model.zero_grad()
    model(a, b)["loss"].backward()
    assert all(p.grad is not None for p in tower_a.parameters())


def test_dual_encoder_lit_freeze_b() -> None:
    model = DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4, freeze_b=True)
    model(torch.randn(5, 10), torch.randn(5, 6))["loss"].backward()
    assert all(p.grad is None for p in model.tower_b.parameters())
    assert all(p.grad is not None for p in model.tower_a.parameters())
    assert not model.tower_b.training


def test_dual_encoder_learns_and_retrieves_held_out_pairs() -> None:
    a, b = _two_views(1200)
    a_tr, b_tr, a_te, b_te = a[:1000], b[:1000], a[1000:], b[1000:]
    model = DualEncoder(_mlp(32, 32), _mlp(24, 32), 32, 32, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            loss = float(model(a_te, b_te)["loss"])
            r1 = AF.recall_at_k(model.encode_a(a_te), model.encode_b(b_te), k=1)["recall@1"]
        model.train()
        return loss, r1

    loss0, r1_0 = evaluate()
    for _ in range(150):
        idx = torch.randint(0, 1000, (128,))
        loss = model(a_tr[idx], b_tr[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, r1_1 = evaluate()
    chance = 1 / 200
    assert r1_0 < 5 * chance  # untrained towers: about chance
    assert loss1 < 0.3 * loss0
    assert r1_1 > 60 * chance  # 200 held-out pairs: R@1 well above 0.005


def test_dual_encoder_token_towers_mean_pool_with_mask() -> None:
    tower_a, tower_b = _Tokens(5, 6).double(), _Tokens(3, 4).double()
    model = DualEncoder(tower_a, tower_b, 6, 4, 3, projection="mlp").double()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    emb = model.encode_a(x, mask)
    with torch.no_grad():
        tokens = tower_a(x)
        rows = []
        for i in range(3):
            keep = [tokens[i, t] for t in range(4) if mask[i, t]]
            rows.append(sum(keep) / len(keep))
        ref = model.proj_a(torch.stack(rows))
        ref = ref / ref.norm(dim=1, keepdim=True)
    torch.testing.assert_close(emb, ref)
    x2 = x.clone()
    x2[0, 2:] = 100.0  # padded tokens do not matter
    torch.testing.assert_close(model.encode_a(x2, mask), emb)
    # unmasked: plain mean over tokens
    with torch.no_grad():
        plain = model.proj_a(tower_a(x).mean(1))
    torch.testing.assert_close(model.encode_a(x), plain / plain.norm(dim=1, keepdim=True))
    out = model(x, torch.randn(3, 2, 3, dtype=torch.float64), mask_a=mask)
    assert torch.isfinite(out["loss"])


def _identity_dual(dim: int = 2) -> DualEncoder:
    model = DualEncoder(nn.Identity(), nn.Identity(), dim, dim, dim)
    _set_identity(model.proj_a)
    _set_identity(model.proj_b)
    return model.eval()


def test_zero_shot_classifier_hand_made_case() -> None:
    model = _identity_dual()
    # class 0: two templates, one with a large norm; each is normalised before averaging, so the class
    # direction is (1, 1)/√2, not the raw mean (5, 0.5). Class 1: the single template (1, 0).
    prompts = torch.tensor([[[10.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    w = model.zero_shot_classifier(prompts)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(w, torch.tensor([[s, s], [1.0, 0.0]]))
    # raw inputs per class through tower b give the same classifier
    w_raw = model.zero_shot_classifier([torch.tensor([[10.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0]])])
    torch.testing.assert_close(w_raw, w)
    # cos to class 0 vs class 1: (0.2, 1) → 0.83 vs 0.20; (1, 0.1) → 0.77 vs 0.995; (0, 1) → 0.71 vs 0
    x = torch.tensor([[0.2, 1.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.3]])
    logits = model.classify(x)
    assert logits.argmax(1).tolist() == [0, 1, 0, 1]
    # (1, 0.3): with the raw template mean (5, 0.5) as class 0's direction, cos would be 0.98 > 0.958
    # (class 1's), i.e. class 0; averaging the normalised templates gives 0.88 < 0.958: class 1.
    xn = x / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(logits, (xn @ w.T) * (1 / 0.07))


def test_zero_shot_classifier_is_argmax_of_similarity_to_class_means() -> None:
    model = DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4).eval()
    num_classes, templates = 5, 3
    prompts = [torch.randn(templates, 6) for _ in range(num_classes)]
    images = torch.randn(20, 10)
    model.zero_shot_classifier(prompts)
    pred = model.classify(images).argmax(1).tolist()
    with torch.no_grad():
        means = []
        for c in range(num_classes):
            e = model.proj_b(model.tower_b(prompts[c])).tolist()
            acc = [0.0] * 4
            for row in e:
                for j, v in enumerate(_unit(row)):
                    acc[j] += v / templates
            means.append(_unit(acc))
        q = model.proj_a(model.tower_a(images)).tolist()
    ref = []
    for row in q:
        sims = [_dot(_unit(row), m) for m in means]
        ref.append(max(range(num_classes), key=lambda c: sims[c]))
    assert pred == ref
    torch.testing.assert_close(model.class_weights, torch.tensor(means), rtol=1e-5, atol=1e-6)


def test_dual_encoder_custom_loss_and_small_batches() -> None:
    model = DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4, loss=InfoNCELoss(temperature=0.2, symmetric=True))
    out = model(torch.randn(6, 10), torch.randn(6, 6))
    assert float(out["logit_scale"].detach()) == pytest.approx(5.0)
    ref = _ref_symmetric_ce(out["emb_a"].detach(), out["emb_b"].detach(), 5.0)
    assert out["loss"].item() == pytest.approx(ref, rel=1e-5)
    siglip = DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4, loss=CLIPLoss(sigmoid=True))
    for n in (1, 2):
        for m in (model, siglip):
            o = m(torch.randn(n, 10), torch.randn(n, 6))
            assert torch.isfinite(o["loss"]) and o["emb_a"].shape == (n, 4)


def test_dual_encoder_zero_tower_output_is_finite() -> None:
    class Zero(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.zeros(x.shape[0], 8)

    model = DualEncoder(Zero(), _mlp(6, 5), 8, 5, 4)
    out = model(torch.randn(4, 3), torch.randn(4, 6))
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["emb_a"]).all()
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dual_encoder_bfloat16() -> None:
    model = DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4)
    a, b = torch.randn(6, 10), torch.randn(6, 6)
    ref = model(a, b)["loss"]
    half = model.to(torch.bfloat16)
    out = half(a.bfloat16(), b.bfloat16())
    assert out["emb_a"].dtype == torch.bfloat16 and torch.isfinite(out["loss"])
    assert out["loss"].item() == pytest.approx(ref.item(), rel=0.05, abs=0.05)


def test_dual_encoder_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tower_a"):
        DualEncoder("not a module", _mlp(6, 5), 8, 5, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="projection"):
        DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4, projection="conv")
    with pytest.raises(ValueError, match="embed_dim"):
        DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 0)
    with pytest.raises(ValueError, match="init_temperature"):
        DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4, init_temperature=-1.0)
    model = DualEncoder(_mlp(10, 8), _mlp(6, 5), 9, 5, 4)  # dim_a does not match tower a
    with pytest.raises(ValueError, match=r"tower_a output.*9 features.*\(3, 8\)"):
        model(torch.randn(3, 10), torch.randn(3, 6))
    model = DualEncoder(_mlp(10, 8), _mlp(6, 5), 8, 5, 4)
    with pytest.raises(ValueError, match="same number of rows"):
        model(torch.randn(3, 10), torch.randn(4, 6))
    with pytest.raises(ValueError, match="modality"):
        model.encode("c", torch.randn(3, 10))
    with pytest.raises(ValueError, match="tower"):
        model.freeze("c")
    with pytest.raises(ValueError, match="zero_shot_classifier"):
        model.classify(torch.randn(3, 10))
    with pytest.raises(ValueError, match=r"prompts.*embed_dim"):
        model.zero_shot_classifier(torch.randn(3, 5))
    with pytest.raises(ValueError, match="prompts"):
        model.zero_shot_classifier([])
    with pytest.raises(ValueError, match="mask"):
        model.encode_a(torch.randn(3, 10), mask=torch.ones(3, 2))
    tok = DualEncoder(_Tokens(5, 6), _mlp(6, 5), 6, 5, 4)
    with pytest.raises(ValueError, match="mask"):
        tok.encode_a(torch.randn(3, 4, 5), mask=torch.ones(3, 5))


# ------------------------------------------------------------------------------------------------
# CrossModalBYOL


def _byol(**kw: object) -> CrossModalBYOL:
    return CrossModalBYOL(_mlp(10, 8), _mlp(6, 5), 8, 5, proj_dim=4, hidden_dim=16, **kw)  # type: ignore[arg-type]


def test_byol_cross_modal_loss_and_no_gradient_into_targets() -> None:
    model = _byol()
    a, b = torch.randn(12, 10), torch.randn(12, 6)
    out = model(a, b)
    # by hand: a's prediction regresses b's target and b's prediction regresses a's target
    with torch.no_grad():
        p_a = model.predictor_a(model.online_a.projector(model.online_a.encoder(a)))
        p_b = model.predictor_b(model.online_b.projector(model.online_b.encoder(b)))
        t_a = model.target_a.module.projector(model.target_a.module.encoder(a))
        t_b = model.target_b.module.projector(model.target_b.module.encoder(b))
    assert out["loss_ab"].item() == pytest.approx(_ref_byol(p_a, t_b), rel=1e-5)
    assert out["loss_ba"].item() == pytest.approx(_ref_byol(p_b, t_a), rel=1e-5)
    assert out["loss"].item() == pytest.approx(_ref_byol(p_a, t_b) + _ref_byol(p_b, t_a), rel=1e-5)
    out["loss"].backward()
    for target in (model.target_a, model.target_b):
        assert all(not p.requires_grad and p.grad is None for p in target.parameters())
    for part in (model.online_a, model.online_b, model.predictor_a, model.predictor_b):
        assert all(p.grad is not None for p in part.parameters())
    assert model.encoder_a is model.online_a.encoder


def test_byol_step_is_the_ema_formula() -> None:
    model = _byol(tau_base=0.9)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(torch.randn(12, 10), torch.randn(12, 6))["loss"].backward()
    opt.step()  # online ≠ target now
    online = {k: v.clone() for k, v in model.online_a.state_dict().items()}
    target = {k: v.clone() for k, v in model.target_a.module.state_dict().items()}
    assert any(not torch.equal(online[k], target[k]) for k in online if online[k].is_floating_point())
    k_step, k_max = 3, 10
    tau = model.step(k_step, k_max)
    expected_tau = 1 - (1 - 0.9) * (math.cos(math.pi * k_step / k_max) + 1) / 2
    assert tau == pytest.approx(expected_tau) and model.momentum == pytest.approx(expected_tau)
    new = model.target_a.module.state_dict()
    for key, t_old in target.items():
        if t_old.is_floating_point():  # parameters and BatchNorm running statistics
            torch.testing.assert_close(new[key], expected_tau * t_old + (1 - expected_tau) * online[key])
        else:  # num_batches_tracked
            assert torch.equal(new[key], online[key])
    # at the end of the schedule τ = 1: the target no longer moves
    frozen = {k: v.clone() for k, v in model.target_b.module.state_dict().items()}
    assert model.step(k_max, k_max) == 1.0
    for key, value in model.target_b.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, frozen[key])


def test_byol_does_not_collapse_and_aligns_modalities() -> None:
    a, b = _two_views(1200)
    a_tr, b_tr, a_te, b_te = a[:1000], b[:1000], a[1000:], b[1000:]
    d = 16
    model = CrossModalBYOL(_mlp(32, 32), _mlp(24, 32), 32, 32, proj_dim=d, hidden_dim=64, tau_base=0.99)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    steps = 200
    for step in range(steps):
        idx = torch.randint(0, 1000, (128,))
        loss = model(a_tr[idx], b_tr[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.step(step, steps)
    model.eval()
    with torch.no_grad():
        e_a, e_b = model.encode_a(a_te), model.encode_b(b_te)
        p_a, p_b = model.encode_a(a_te, predict=True), model.encode_b(b_te, predict=True)
    # no collapse: the unit embeddings still spread (a collapsed model has std ≈ 0 in every dimension;
    # uniform on the sphere has 1/√d); Σ_j var_j = 1 − ‖mean‖²
    bound = 0.5 / math.sqrt(d)
    for e in (e_a, e_b):
        std = e.std(0)
        assert std.mean() > bound and std.min() > 0.5 * bound
    # aligned: a's prediction retrieves its b partner among 200 held-out pairs, and vice versa
    chance = 1 / 200
    assert AF.recall_at_k(p_a, e_b, k=1)["recall@1"] > 40 * chance
    assert AF.recall_at_k(p_b, e_a, k=1)["recall@1"] > 40 * chance


def test_byol_per_modality_is_the_sum_of_single_modality_terms() -> None:
    model = _byol(per_modality=True)
    a1, a2 = torch.randn(10, 10), torch.randn(10, 10)
    b1, b2 = torch.randn(10, 6), torch.randn(10, 6)
    out = model(a1, b1, a2, b2)
    with torch.no_grad():

        def online(m: str, x: Tensor) -> Tensor:
            branch = model.online_a if m == "a" else model.online_b
            pred = model.predictor_a if m == "a" else model.predictor_b
            return pred(branch.projector(branch.encoder(x)))

        def target(m: str, x: Tensor) -> Tensor:
            t = (model.target_a if m == "a" else model.target_b).module
            return t.projector(t.encoder(x))

        ref_a = _ref_byol(online("a", a1), target("a", a2)) + _ref_byol(online("a", a2), target("a", a1))
        ref_b = _ref_byol(online("b", b1), target("b", b2)) + _ref_byol(online("b", b2), target("b", b1))
    assert out["loss_a"].item() == pytest.approx(ref_a, rel=1e-5)
    assert out["loss_b"].item() == pytest.approx(ref_b, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ref_a + ref_b, rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in model.target_a.parameters())
    with pytest.raises(ValueError, match="b2"):
        model(a1, b1, a2)
    cross = _byol()
    with pytest.raises(ValueError, match="a2"):
        cross(a1, b1, a2, b2)


def test_byol_tokens_batch_of_two_and_bad_arguments() -> None:
    model = CrossModalBYOL(_Tokens(5, 6), _mlp(6, 5), 6, 5, proj_dim=4, hidden_dim=8)
    out = model(torch.randn(2, 3, 5), torch.randn(2, 6), mask_a=torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert torch.isfinite(out["loss"]) and out["emb_a"].shape == (2, 4)
    torch.testing.assert_close(out["emb_a"].norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="tau_base"):
        _byol(tau_base=1.5)
    with pytest.raises(ValueError, match="proj_dim"):
        CrossModalBYOL(_mlp(10, 8), _mlp(6, 5), 8, 5, proj_dim=0)
    with pytest.raises(ValueError, match="encoder_b"):
        CrossModalBYOL(_mlp(10, 8), None, 8, 5)  # type: ignore[arg-type]
    m = _byol()
    with pytest.raises(ValueError, match="same number of rows"):
        m(torch.randn(4, 10), torch.randn(5, 6))
    with pytest.raises(ValueError, match=r"encoder_a output.*8 features"):
        CrossModalBYOL(_mlp(10, 7), _mlp(6, 5), 8, 5, proj_dim=4, hidden_dim=8)(
            torch.randn(4, 10), torch.randn(4, 6)
        )
    with pytest.raises(ValueError, match="modality"):
        m.encode("c", torch.randn(4, 10))
    with pytest.raises(ValueError, match="max_steps"):
        m.step(0, 0)


# ------------------------------------------------------------------------------------------------
# Binder


def _binder(**kw: object) -> Binder:
    encoders = {"x": _mlp(32, 32), "a": _mlp(24, 32), "b": _mlp(20, 32)}
    return Binder("x", encoders, {"x": 32, "a": 32, "b": 32}, 16, **kw)  # type: ignore[arg-type]


def test_binder_emergent_alignment_between_non_anchor_modalities() -> None:
    x, a, b = _three_views(1200)
    model = _binder(temperature=0.1)
    held = slice(1000, 1200)
    chance = 1 / 200
    model.eval()
    before = model.recall("a", a[held], "b", b[held], k=1)["recall@1"]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        # (anchor, a) pairs come from samples 0–499, (anchor, b) pairs from 500–999: a and b are never
        # seen together, not even as parts of one triple
        if step % 2 == 0:
            idx = torch.randint(0, 500, (128,))
            batch = {"x": x[idx], "a": a[idx]}
        else:
            idx = torch.randint(500, 1000, (128,))
            batch = {"x": x[idx], "b": b[idx]}
        out = model(batch)
        assert set(out["pair_losses"]) == set(batch) - {"x"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    after_ab = model.recall("a", a[held], "b", b[held], k=1)["recall@1"]
    after_ba = model.recall("b", b[held], "a", a[held], k=1)["recall@1"]
    assert before < 5 * chance
    assert after_ab >= 5 * chance and after_ba >= 5 * chance
    # and by a comfortable margin on this data
    assert min(after_ab, after_ba) > 20 * chance


def test_binder_loss_is_the_sum_of_anchor_pair_infonce() -> None:
    model = _binder(temperature=0.2).double()
    x, a, b = _three_views(9)
    out = model({"x": x.double(), "a": a.double(), "b": b.double()})
    e = out["embeddings"]
    assert set(e) == {"x", "a", "b"}
    for name in ("x", "a", "b"):
        torch.testing.assert_close(e[name], model.embed(name, {"x": x, "a": a, "b": b}[name].double()))
    ref_a = _ref_symmetric_ce(e["x"].detach(), e["a"].detach(), 5.0)
    ref_b = _ref_symmetric_ce(e["x"].detach(), e["b"].detach(), 5.0)
    assert out["pair_losses"]["a"].item() == pytest.approx(ref_a, rel=1e-9)
    assert out["pair_losses"]["b"].item() == pytest.approx(ref_b, rel=1e-9)
    # no (a, b) term
    assert out["loss"].item() == pytest.approx(ref_a + ref_b, rel=1e-9)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_binder_retrieve_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _binder().eval()
    _, a, b = _three_views(30)
    with torch.no_grad():
        q, g = model.embed("a", a[:7]), model.embed("b", b)
    sims = (q @ g.T).tolist()
    ref_idx = [sorted(range(30), key=lambda j: -row[j])[:4] for row in sims]
    monkeypatch.setattr(binder_module, "_RETRIEVE_BLOCK_ENTRIES", 60)  # 2 queries per block
    scores, idx = model.retrieve("a", a[:7], "b", b, k=4)
    assert idx.tolist() == ref_idx
    for i in range(7):
        assert scores[i].tolist() == pytest.approx([sims[i][j] for j in ref_idx[i]], abs=1e-6)
    # precomputed embeddings (modality None) give the same answer
    _, idx2 = model.retrieve(None, q, None, g, k=4)
    assert idx2.tolist() == ref_idx


def test_binder_compose_is_normalised_sum_of_normalised_embeddings() -> None:
    model = _binder().eval()
    x, a, b = _three_views(6)
    with torch.no_grad():
        comp = model.compose({"a": a, "b": b})
        ea, eb = model.embed("a", a).tolist(), model.embed("b", b).tolist()
    ref = [
        _unit([u + v for u, v in zip(_unit(ra), _unit(rb), strict=True)])
        for ra, rb in zip(ea, eb, strict=True)
    ]
    torch.testing.assert_close(comp, torch.tensor(ref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(comp.norm(dim=1), torch.ones(6))
    # retrieving with the composed query in a third modality works on embeddings
    scores, idx = model.retrieve(None, comp, "x", x, k=2)
    assert scores.shape == idx.shape == (6, 2) and bool((scores[:, 0] >= scores[:, 1]).all())
    # opposite embeddings sum to zero: the result stays finite (zero vector)
    model2 = Binder("x", {"x": nn.Identity(), "a": nn.Identity()}, {"x": 2, "a": 2}, 2)
    _set_identity(model2.heads["x"])
    _set_identity(model2.heads["a"])
    z = model2.compose({"x": torch.tensor([[1.0, 0.0]]), "a": torch.tensor([[-2.0, 0.0]])})
    assert torch.isfinite(z).all() and z.abs().sum().item() == 0.0


def test_binder_frozen_encoder() -> None:
    model = _binder(frozen=("x",))
    model.train()
    assert not model.encoders["x"].training and model.encoders["a"].training
    _, a, _ = _three_views(8)
    x = torch.randn(8, 32)
    model({"x": x, "a": a})["loss"].backward()
    assert all(p.grad is None for p in model.encoders["x"].parameters())
    assert all(p.grad is None for p in model.heads["x"].parameters())  # the anchor is fixed, head too
    assert all(p.grad is not None for p in model.heads["a"].parameters())


def _bind(model: Binder, anchor: Tensor, other: Tensor, name: str, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, anchor.shape[0], (128,), generator=g)
        loss = model({"x": anchor[idx], name: other[idx]})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_binder_fixed_anchor_sequential_binding() -> None:
    """Bind "a" (text) to the anchor, fix the anchor, then bind "b" (audio): text→anchor R@1 is kept."""
    torch.manual_seed(0)
    x, a, b = _three_views(1200)
    held = slice(1000, 1200)
    model = _binder(temperature=0.1)
    _bind(model, x[:500], a[:500], "a", 120, seed=1)  # stage 1: anchor and text train together
    r1_text = model.recall("a", a[held], "x", x[held], k=1)["recall@1"]
    assert r1_text > 0.3  # chance 1/200
    anchor_state = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[1] == "x"}

    drifting = copy.deepcopy(model)
    drifting.freeze("a")  # the old behaviour: anchor encoder locked, its head still trained
    for p in drifting.encoders["x"].parameters():
        p.requires_grad_(False)
    _bind(drifting, x[500:1000], b[500:1000], "b", 120, seed=2)
    drifted = drifting.recall("a", a[held], "x", x[held], k=1)["recall@1"]

    assert model.freeze("x") is model and model.anchor_fixed and "x" in model.frozen
    assert all(not p.requires_grad for p in model.heads["x"].parameters())
    assert all(p.requires_grad for p in model.heads["a"].parameters())
    _bind(model, x[500:1000], b[500:1000], "b", 120, seed=2)  # stage 2: audio only, anchor fixed
    for k, v in anchor_state.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert model.recall("a", a[held], "x", x[held], k=1)["recall@1"] == r1_text
    assert model.recall("b", b[held], "x", x[held], k=1)["recall@1"] > 0.2  # audio bound too
    assert drifted < r1_text - 0.1  # without fixing the head the anchor space drifts
    # emergent text ↔ audio through the fixed anchor
    assert model.recall("a", a[held], "b", b[held], k=1)["recall@1"] > 10 / 200


def test_binder_frozen_anchor_fixes_head_at_construction() -> None:
    model = _binder(frozen=("x", "a"))
    assert model.anchor_fixed
    model.train()
    assert not model.heads["x"].training and model.heads["a"].training
    x, a = torch.randn(8, 32), torch.randn(8, 24)
    model({"x": x, "a": a})["loss"].backward()
    assert all(p.grad is None for p in model.heads["x"].parameters())
    assert all(p.grad is not None for p in model.heads["a"].parameters())  # non-anchor head trains
    with pytest.raises(ValueError, match="modalities"):
        model.freeze("q")


def test_binder_bad_arguments() -> None:
    enc = {"x": _mlp(32, 32), "a": _mlp(24, 32)}
    with pytest.raises(ValueError, match="anchor 'y'"):
        Binder("y", enc, {"x": 32, "a": 32}, 16)
    with pytest.raises(ValueError, match=r"dims.*missing \['a'\]"):
        Binder("x", enc, {"x": 32}, 16)
    with pytest.raises(ValueError, match=r"dims.*unknown \['c'\]"):
        Binder("x", enc, {"x": 32, "a": 32, "c": 4}, 16)
    with pytest.raises(ValueError, match="encoders"):
        Binder("x", {"x": _mlp(32, 32)}, {"x": 32}, 16)
    with pytest.raises(ValueError, match="temperature"):
        Binder("x", enc, {"x": 32, "a": 32}, 16, temperature=0.0)
    with pytest.raises(ValueError, match="frozen"):
        Binder("x", enc, {"x": 32, "a": 32}, 16, frozen=("q",))
    model = Binder("x", enc, {"x": 32, "a": 30}, 16)  # width of a does not match its encoder
    with pytest.raises(ValueError, match=r"encoders\['a'\] output.*30 features"):
        model.embed("a", torch.randn(3, 24))
    model = _binder()
    x, a, b = torch.randn(4, 32), torch.randn(4, 24), torch.randn(4, 20)
    with pytest.raises(ValueError, match=r"batch keys.*'audio'"):
        model({"x": x, "audio": a})
    with pytest.raises(ValueError, match="anchor modality 'x'"):
        model({"a": a, "b": b})
    with pytest.raises(ValueError, match="besides the anchor"):
        model({"x": x})
    with pytest.raises(ValueError, match="same number of rows"):
        model({"x": x, "a": torch.randn(5, 24)})
    with pytest.raises(ValueError, match="modality"):
        model.embed("audio", a)
    with pytest.raises(ValueError, match="query_mod"):
        model.retrieve("audio", a, "b", b)
    with pytest.raises(ValueError, match="gallery_mod"):
        model.retrieve("a", a, "audio", b)
    with pytest.raises(ValueError, match="k must"):
        model.retrieve("a", a, "b", b, k=5)
    with pytest.raises(ValueError, match=r"gallery_x.*embed_dim"):
        model.retrieve("a", a, None, torch.randn(4, 3))
    with pytest.raises(ValueError, match="inputs keys"):
        model.compose({"audio": a})
    with pytest.raises(ValueError, match="same number of rows"):
        model.compose({"a": a, "b": torch.randn(3, 20)})
