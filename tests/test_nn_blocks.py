"""Tests of alignkit.nn's building blocks: heads, EMA targets, cross-attention, sub-space heads, temperature.

References are written here in float64 with explicit loops (per head, per row, per tensor) from the
modules' weights, never by calling the code under test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import alignkit.nn as N
from alignkit.losses.contrastive import LearnableTemperature as LossesLearnableTemperature
from alignkit.nn import (
    AttentionalPooler,
    CoAttention,
    LearnableTemperature,
    MomentumTarget,
    PredictionHead,
    ProjectionHead,
    SubspaceHead,
    cosine_schedule,
    update_momentum,
)

# ----------------------------------------------------------------------------------------------------
# float64 references
# ----------------------------------------------------------------------------------------------------


def ref_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """Row by row: y_i = W x_i + b."""
    w = layer.weight.detach().double()
    bias = None if layer.bias is None else layer.bias.detach().double()
    rows = []
    for i in range(x.shape[0]):
        y = torch.zeros(w.shape[0], dtype=torch.float64)
        for o in range(w.shape[0]):
            y[o] = sum(float(w[o, j]) * float(x[i, j]) for j in range(w.shape[1]))
            if bias is not None:
                y[o] += float(bias[o])
        rows.append(y)
    return torch.stack(rows)


def ref_batch_norm_train(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """Batch statistics (biased variance) per column."""
    x = x.detach()
    weight, bias = bn.weight.detach(), bn.bias.detach()
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        col = [float(v) for v in x[:, c]]
        mean = sum(col) / len(col)
        var = sum((v - mean) ** 2 for v in col) / len(col)
        for r, v in enumerate(col):
            out[r, c] = (v - mean) / math.sqrt(var + bn.eps) * float(weight[c]) + float(bias[c])
    return out


def ref_layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    """Per row of the last axis (any leading shape)."""
    flat = x.detach().reshape(-1, x.shape[-1])
    weight, bias = ln.weight.detach(), ln.bias.detach()
    out = torch.empty_like(flat)
    for r in range(flat.shape[0]):
        row = [float(v) for v in flat[r]]
        mean = sum(row) / len(row)
        var = sum((v - mean) ** 2 for v in row) / len(row)
        for c, v in enumerate(row):
            out[r, c] = (v - mean) / math.sqrt(var + ln.eps) * float(weight[c]) + float(bias[c])
    return out.reshape(x.shape)


def mha_weights(attn: nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
    """(W_q, W_k, W_v, b_q, b_k, b_v, W_o, b_o) of an nn.MultiheadAttention, in float64."""
    e = attn.embed_dim
    if attn.in_proj_weight is not None:
        wq, wk, wv = attn.in_proj_weight.detach().double().split(e, dim=0)
    else:
        wq, wk, wv = (
            w.detach().double() for w in (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)
        )
    bq, bk, bv = attn.in_proj_bias.detach().double().split(e)
    return (
        wq,
        wk,
        wv,
        bq,
        bk,
        bv,
        attn.out_proj.weight.detach().double(),
        attn.out_proj.bias.detach().double(),
    )


def ref_cross_attention(
    query: torch.Tensor, context: torch.Tensor, attn: nn.MultiheadAttention, padding: torch.Tensor | None
) -> torch.Tensor:
    """Multi-head attention for one sample, loops over heads and query rows; padded keys skipped.
    A sample with no key left gives zeros (the documented convention)."""
    wq, wk, wv, bq, bk, bv, wo, bo = mha_weights(attn)
    q = query.double() @ wq.T + bq
    k = context.double() @ wk.T + bk
    v = context.double() @ wv.T + bv
    h = attn.num_heads
    dh = attn.embed_dim // h
    keys = [j for j in range(context.shape[0]) if padding is None or not bool(padding[j])]
    if not keys:
        return torch.zeros(query.shape[0], attn.embed_dim, dtype=torch.float64)
    heads_out = torch.zeros(query.shape[0], attn.embed_dim, dtype=torch.float64)
    for head in range(h):
        cols = slice(head * dh, (head + 1) * dh)
        for i in range(query.shape[0]):
            scores = [float(q[i, cols] @ k[j, cols]) / math.sqrt(dh) for j in keys]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            for w, j in zip(weights, keys, strict=True):
                heads_out[i, cols] += (w / total) * v[j, cols]
    return heads_out @ wo.T + bo


# ----------------------------------------------------------------------------------------------------
# ProjectionHead / PredictionHead
# ----------------------------------------------------------------------------------------------------


def layer_types(head: ProjectionHead) -> list[type]:
    return [type(m) for m in head.layers]


def test_repa_preset_structure() -> None:
    head = ProjectionHead.repa(12, 20, hidden_dim=32)
    assert layer_types(head) == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 32), (32, 32), (32, 20)]
    assert ProjectionHead.repa(4, 8).hidden_dim == 2048  # the paper's width


def test_byol_preset_structure() -> None:
    head = ProjectionHead.byol(64)
    assert layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.layers[0].out_features == 4096 and head.layers[1].num_features == 4096
    assert head.layers[3].out_features == 256  # BYOL: hidden 4096, output 256


def test_linear_preset_is_one_linear() -> None:
    head = ProjectionHead.linear(10, 6)
    assert layer_types(head) == [nn.Linear]
    assert head.layers[0].bias is None  # CLIP's projection has no bias
    assert ProjectionHead.linear(10, 6, bias=True).layers[0].bias is not None


def test_configurable_structure() -> None:
    head = ProjectionHead(
        8, 5, hidden_dim=7, num_layers=3, activation="gelu", norm="layer", last_norm="batch"
    )
    assert layer_types(head) == [
        nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear, nn.BatchNorm1d,
    ]  # fmt: skip
    assert ProjectionHead(8, 5).hidden_dim == 8  # default hidden width: in_dim
    assert all(m.bias is None for m in ProjectionHead(8, 5, bias=False).layers if isinstance(m, nn.Linear))


def test_prediction_head_structure_and_default_width() -> None:
    pred = PredictionHead(16, hidden_dim=40)
    assert isinstance(pred, ProjectionHead)
    assert layer_types(pred) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (pred.layers[0].in_features, pred.layers[0].out_features, pred.layers[3].out_features) == (
        16,
        40,
        16,
    )
    assert PredictionHead(16, hidden_dim=40, out_dim=9).layers[3].out_features == 9
    assert PredictionHead(8).hidden_dim == 4096


def test_byol_head_on_tokens_matches_manual_computation_with_flattened_batch_norm() -> None:
    head = ProjectionHead.byol(5, out_dim=3, hidden_dim=6).double().train()
    with torch.no_grad():  # non-trivial affine parameters of the BatchNorm
        head.layers[1].weight.uniform_(0.5, 1.5)
        head.layers[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 5, dtype=torch.float64)  # (B, T, d): statistics over all 8 tokens
    out = head(x)
    assert out.shape == (2, 4, 3) and out.dtype == torch.float64
    rows = x.reshape(8, 5)
    h = ref_linear(rows, head.layers[0])
    h = ref_batch_norm_train(h, head.layers[1]).clamp_min(0.0)
    expected = ref_linear(h, head.layers[3]).reshape(2, 4, 3)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_repa_head_matches_manual_computation() -> None:
    head = ProjectionHead.repa(4, 3, hidden_dim=6).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    h = ref_linear(x, head.layers[0])
    h = h * torch.sigmoid(h)
    h = ref_linear(h, head.layers[2])
    h = h * torch.sigmoid(h)
    torch.testing.assert_close(head(x), ref_linear(h, head.layers[4]), rtol=1e-10, atol=1e-10)


def test_layer_norm_head_on_tokens_equals_per_row() -> None:
    head = ProjectionHead(6, 4, hidden_dim=8, norm="layer", activation="gelu").eval()
    x = torch.randn(3, 5, 6)
    out = head(x)
    for b in range(3):
        torch.testing.assert_close(out[b], head(x[b]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2])
def test_head_small_batches(batch: int) -> None:
    head = ProjectionHead.byol(6, out_dim=4, hidden_dim=8)
    head.train()
    if batch == 1:  # BatchNorm needs two rows in training; one token sequence of length 2 is enough
        assert head(torch.randn(1, 2, 6)).shape == (1, 2, 4)
        head.eval()
    out = head(torch.randn(batch, 6))
    assert out.shape == (batch, 4) and torch.isfinite(out).all()


def test_head_gradients_reach_every_parameter_and_zero_input_is_finite() -> None:
    head = ProjectionHead(6, 4, hidden_dim=8, num_layers=3, norm="layer", last_norm="layer")
    out = head(torch.zeros(3, 6))
    assert torch.isfinite(out).all()
    head(torch.randn(3, 6)).pow(2).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_half_precision(dtype: torch.dtype) -> None:
    head = ProjectionHead.repa(8, 4, hidden_dim=16)
    x = torch.randn(5, 8)
    ref = head(x)
    out = head.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_dim": 0, "out_dim": 4}, "in_dim"),
        ({"in_dim": 4, "out_dim": -1}, "out_dim"),
        ({"in_dim": 4, "out_dim": 4, "hidden_dim": 0}, "hidden_dim"),
        ({"in_dim": 4, "out_dim": 4, "num_layers": 0}, "num_layers"),
        ({"in_dim": 4, "out_dim": 4, "activation": "tanh"}, "activation"),
        ({"in_dim": 4, "out_dim": 4, "norm": "group"}, "norm"),
        ({"in_dim": 4, "out_dim": 4, "last_norm": "instance"}, "last_norm"),
        ({"in_dim": 4.0, "out_dim": 4}, "in_dim"),
    ],
)
def test_head_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProjectionHead(**kwargs)


def test_head_bad_input_and_prediction_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\).*\(3, 5\)"):
        ProjectionHead(4, 2)(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"x must be a torch\.Tensor"):
        ProjectionHead(4, 2)([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match="dim"):
        PredictionHead(0)
    with pytest.raises(ValueError, match="hidden_dim"):
        PredictionHead(4, hidden_dim=-3)


# ----------------------------------------------------------------------------------------------------
# cosine_schedule / update_momentum / MomentumTarget
# ----------------------------------------------------------------------------------------------------


def test_cosine_schedule_end_points_and_monotone() -> None:
    assert cosine_schedule(0, 100) == pytest.approx(0.996, abs=1e-15)
    assert cosine_schedule(100, 100) == 1.0
    assert cosine_schedule(250, 100) == 1.0  # past the end: stays at end
    assert cosine_schedule(50, 100) == pytest.approx((0.996 + 1.0) / 2, abs=1e-12)  # cos(π/2) = 0
    values = [cosine_schedule(k, 37, start=0.9, end=0.999) for k in range(38)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert values[0] == pytest.approx(0.9) and values[-1] == pytest.approx(0.999)
    # BYOL §3.2 with τ_base = 0.99 at a quarter of training: 1 − 0.01·(cos(π/4) + 1)/2
    assert cosine_schedule(25, 100, start=0.99) == pytest.approx(1 - 0.01 * (math.sqrt(0.5) + 1) / 2)
    decreasing = [cosine_schedule(k, 10, start=1.0, end=0.0) for k in range(11)]
    assert all(a > b for a, b in itertools.pairwise(decreasing))
    assert cosine_schedule(0, 1) == pytest.approx(0.996) and cosine_schedule(1, 1) == 1.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 0), "max_steps"),
        ((-1, 10), "step"),
        ((0, 10, float("nan")), "start"),
        ((0, 10, 0.9, math.inf), "end"),
    ],
)
def test_cosine_schedule_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cosine_schedule(*args)


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_update_momentum_matches_formula_for_params_and_buffers() -> None:
    online, target = small_net().double(), small_net().double()
    for _ in range(3):  # move online's BatchNorm buffers (running stats, num_batches_tracked = 3)
        online(torch.randn(8, 4, dtype=torch.float64))
    target(torch.randn(8, 4, dtype=torch.float64))  # target's num_batches_tracked = 1
    before_t = {k: v.clone() for k, v in target.state_dict().items()}
    before_o = {k: v.clone() for k, v in online.state_dict().items()}
    m = 0.9
    update_momentum(target, online, m)
    after = target.state_dict()
    assert set(after) == set(before_t)
    for key, value in after.items():
        t0, o0 = before_t[key], before_o[key]
        if key.endswith("num_batches_tracked"):
            assert int(value) == int(o0) == 3  # integer buffers are copied
            continue
        flat_t, flat_o, flat_new = t0.flatten(), o0.flatten(), value.flatten()
        for i in range(flat_new.numel()):
            expected = m * float(flat_t[i]) + (1 - m) * float(flat_o[i])
            assert float(flat_new[i]) == pytest.approx(expected, rel=1e-12, abs=1e-12), key
    for key, value in online.state_dict().items():  # online untouched
        assert torch.equal(value, before_o[key]), key
    assert "1.running_mean" in after and "1.running_var" in after


def test_update_momentum_extremes() -> None:
    online, target = small_net(), small_net()
    keep = {k: v.clone() for k, v in target.state_dict().items()}
    update_momentum(target, online, 1.0)
    assert all(torch.equal(v, keep[k]) for k, v in target.state_dict().items())
    update_momentum(target, online, 0.0)
    assert all(torch.equal(v, online.state_dict()[k]) for k, v in target.state_dict().items())


def test_update_momentum_bad_arguments() -> None:
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(small_net(), small_net(), 1.5)
    with pytest.raises(ValueError, match="momentum"):
        update_momentum(small_net(), small_net(), -0.1)
    with pytest.raises(ValueError, match="parameters"):
        update_momentum(nn.Linear(4, 6), small_net(), 0.9)
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*\(3, 5\)"):
        update_momentum(nn.Linear(4, 3), nn.Linear(5, 3), 0.9)
    with pytest.raises(ValueError, match="buffers"):
        with_ln = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6))  # same parameters, no buffers
        update_momentum(with_ln, nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), 0.5)
    with pytest.raises(ValueError, match=r"nn\.Module"):
        update_momentum(small_net(), "net", 0.5)  # type: ignore[arg-type]


def test_momentum_target_is_a_frozen_copy_without_gradient() -> None:
    online = small_net()
    target = MomentumTarget(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())  # the online net is not frozen
    for (_, p), (_, q) in zip(target.module.named_parameters(), online.named_parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()  # a copy, not shared storage

    x = torch.randn(8, 4, requires_grad=True)
    z_target = target(x)
    assert not z_target.requires_grad and z_target.grad_fn is None  # forward ran under no_grad
    loss = (online(x) - z_target).pow(2).sum()
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in online.parameters())

    # changing the online net does not change the target until update()
    with torch.no_grad():
        online[0].weight.add_(1.0)
    assert not torch.equal(target.module[0].weight, online[0].weight)


def test_momentum_target_update_and_follows_train_eval_of_owner() -> None:
    online = small_net()
    owner = nn.Module()
    owner.online = online
    owner.target = MomentumTarget(online)
    with torch.no_grad():
        online[3].bias.fill_(2.0)
    old = owner.target.module[3].bias.clone()
    owner.target.update(online, 0.75)
    for i in range(3):
        assert float(owner.target.module[3].bias[i]) == pytest.approx(0.75 * float(old[i]) + 0.25 * 2.0)
    owner.eval()
    assert not owner.target.module.training and not owner.target.module[1].training
    owner.train()
    assert owner.target.module[1].training  # BYOL: target BatchNorm uses batch statistics in training
    out_train = owner.target(torch.randn(8, 4))
    assert out_train.shape == (8, 3)
    with pytest.raises(ValueError, match="online"):
        MomentumTarget(torch.zeros(3))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# CoAttention
# ----------------------------------------------------------------------------------------------------


def randomise_norms(*norms: nn.LayerNorm) -> None:
    with torch.no_grad():
        for ln in norms:
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("dim_b", [None, 6])
def test_co_attention_matches_manual_computation(dim_b: int | None) -> None:
    block = CoAttention(8, num_heads=2, dim_b=dim_b).double()
    randomise_norms(block.norm_a, block.norm_b)
    db = 8 if dim_b is None else dim_b
    a = torch.randn(2, 3, 8, dtype=torch.float64)
    b = torch.randn(2, 4, db, dtype=torch.float64)
    a_pad = torch.tensor([[False, False, True], [False, False, False]])
    b_pad = torch.tensor([[False, True, False, True], [False, False, False, False]])
    a_out, b_out = block(a, b, a_padding_mask=a_pad, b_padding_mask=b_pad)
    assert a_out.shape == (2, 3, 8) and b_out.shape == (2, 4, db)
    for s in range(2):
        ea = ref_layer_norm(a[s] + ref_cross_attention(a[s], b[s], block.attn_a, b_pad[s]), block.norm_a)
        eb = ref_layer_norm(b[s] + ref_cross_attention(b[s], a[s], block.attn_b, a_pad[s]), block.norm_b)
        torch.testing.assert_close(a_out[s], ea, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(b_out[s], eb, rtol=1e-9, atol=1e-9)
    # without masks every token is a key
    a_out, b_out = block(a, b)
    ea = ref_layer_norm(a[0] + ref_cross_attention(a[0], b[0], block.attn_a, None), block.norm_a)
    torch.testing.assert_close(a_out[0], ea, rtol=1e-9, atol=1e-9)


def test_co_attention_padded_tokens_do_not_leak_into_the_other_side() -> None:
    block = CoAttention(8, num_heads=4, dim_b=12).eval()
    a, b = torch.randn(3, 5, 8), torch.randn(3, 6, 12)
    a_pad = torch.zeros(3, 5, dtype=torch.bool)
    a_pad[0, 3:] = True
    a_pad[2, 1:] = True
    b_pad = torch.zeros(3, 6, dtype=torch.bool)
    b_pad[1, 2:] = True
    a_out, b_out = block(a, b, a_pad, b_pad)
    a2, b2 = a.clone(), b.clone()
    a2[a_pad] = 100.0 * torch.randn(int(a_pad.sum()), 8)
    b2[b_pad] = 100.0 * torch.randn(int(b_pad.sum()), 12)
    a_out2, b_out2 = block(a2, b2, a_pad, b_pad)
    # the other side's outputs are unchanged everywhere; a side's own real tokens are unchanged too
    torch.testing.assert_close(a_out2[~a_pad], a_out[~a_pad], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_out2[~b_pad], b_out[~b_pad], rtol=1e-5, atol=1e-5)
    # without the masks the same change does move the outputs (the check above can fail)
    a_unmasked, _ = block(a, b)
    a_unmasked2, _ = block(a, b2)
    assert not torch.allclose(a_unmasked, a_unmasked2, atol=1e-3)


def test_co_attention_single_unpadded_key_and_all_padded_sample() -> None:
    block = CoAttention(8, num_heads=2).double()
    randomise_norms(block.norm_a)
    a = torch.randn(2, 3, 8, dtype=torch.float64)
    b = torch.randn(2, 4, 8, dtype=torch.float64)
    b_pad = torch.ones(2, 4, dtype=torch.bool)
    b_pad[0, 2] = False  # sample 0: only key 2 is real; sample 1: every key is padding
    a_out, _ = block(a, b, b_padding_mask=b_pad)
    _, _, wv, _, _, bv, wo, bo = mha_weights(block.attn_a)
    # one key gets weight 1 in every head: each query receives out_proj(W_v b_2 + b_v)
    message = (b[0, 2] @ wv.T + bv) @ wo.T + bo
    torch.testing.assert_close(a_out[0], ref_layer_norm(a[0] + message, block.norm_a), rtol=1e-9, atol=1e-9)
    # no key at all: the attention branch is zero, only LN(a) remains — finite, not NaN
    assert torch.isfinite(a_out).all()
    torch.testing.assert_close(a_out[1], ref_layer_norm(a[1], block.norm_a), rtol=1e-9, atol=1e-9)


def test_co_attention_residual_and_layer_norm() -> None:
    block = CoAttention(8, num_heads=2)
    a, b = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    a_out, b_out = block(a, b)
    # default LayerNorm (weight 1, bias 0): every output token has mean 0 and variance 1
    torch.testing.assert_close(a_out.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(b_out.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    with torch.no_grad():  # silence the attention branches: the residual alone goes through LN
        for attn in (block.attn_a, block.attn_b):
            attn.out_proj.weight.zero_()
            attn.out_proj.bias.zero_()
    a_out, b_out = block(a, b)
    torch.testing.assert_close(a_out, torch.nn.functional.layer_norm(a, (8,)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_out, torch.nn.functional.layer_norm(b, (8,)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_co_attention_small_batches_zero_input_and_gradients(batch: int) -> None:
    block = CoAttention(8, num_heads=2, dim_b=4)
    a = torch.zeros(batch, 3, 8, requires_grad=True)
    b = torch.randn(batch, 2, 4, requires_grad=True)
    a_out, b_out = block(a, b)
    assert torch.isfinite(a_out).all() and torch.isfinite(b_out).all()
    (a_out.sum() + b_out.pow(2).sum()).backward()
    assert a.grad is not None and b.grad is not None and bool(b.grad.abs().sum() > 0)
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_co_attention_half_precision(dtype: torch.dtype) -> None:
    block = CoAttention(8, num_heads=2).eval()
    a, b = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    pad = torch.tensor([[False, False, True, True], [False] * 4])
    ref_a, ref_b = block(a, b, b_padding_mask=pad)
    out_a, out_b = block.to(dtype)(a.to(dtype), b.to(dtype), b_padding_mask=pad)
    assert out_a.dtype == dtype and out_b.dtype == dtype
    assert torch.isfinite(out_a).all() and torch.isfinite(out_b).all()
    torch.testing.assert_close(out_a.float(), ref_a, rtol=0.05, atol=0.05)
    torch.testing.assert_close(out_b.float(), ref_b, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 8, "num_heads": 0}, "num_heads"),
        ({"dim": 10, "num_heads": 4}, "dim must be divisible by num_heads"),
        ({"dim": 8, "num_heads": 4, "dim_b": 6}, "dim_b must be divisible by num_heads"),
        ({"dim": 8, "dim_b": -2}, "dim_b"),
        ({"dim": 8, "num_heads": 2, "dropout": 1.0}, "dropout"),
    ],
)
def test_co_attention_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CoAttention(**kwargs)


def test_co_attention_bad_inputs() -> None:
    block = CoAttention(8, num_heads=2, dim_b=4)
    a, b = torch.randn(2, 3, 8), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"a must have shape \(B, T, 8\).*\(2, 3, 4\)"):
        block(torch.randn(2, 3, 4), b)
    with pytest.raises(ValueError, match=r"b must have shape \(B, T, 4\)"):
        block(a, torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"a must have shape"):
        block(torch.randn(3, 8), b)
    with pytest.raises(ValueError, match="same batch size"):
        block(a, torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match=r"b_padding_mask must have shape \(B, T\) = \(2, 5\)"):
        block(a, b, b_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="a_padding_mask must be a bool tensor"):
        block(a, b, a_padding_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="a must be a floating-point"):
        block(torch.zeros(2, 3, 8, dtype=torch.long), b)


# ----------------------------------------------------------------------------------------------------
# AttentionalPooler
# ----------------------------------------------------------------------------------------------------


def test_attentional_pooler_shape_and_manual_computation() -> None:
    pool = AttentionalPooler(8, num_queries=3, num_heads=2, context_dim=6).double()
    randomise_norms(pool.norm_context)
    tokens = torch.randn(2, 5, 6, dtype=torch.float64)
    pad = torch.tensor([[False, False, False, True, True], [False] * 5])
    out = pool(tokens, pad)
    assert out.shape == (2, 3, 8) and out.dtype == torch.float64
    for s in range(2):
        context = ref_layer_norm(tokens[s], pool.norm_context)
        expected = ref_cross_attention(pool.query.detach(), context, pool.attn, pad[s])
        torch.testing.assert_close(out[s], expected, rtol=1e-9, atol=1e-9)


def test_attentional_pooler_mask_honoured() -> None:
    pool = AttentionalPooler(8, num_queries=2, num_heads=4)
    tokens = torch.randn(3, 6, 8)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[0, 4:] = True
    pad[1, 1:] = True
    pad[2, :] = True  # nothing to pool: zeros
    out = pool(tokens, pad)
    changed = tokens.clone()
    changed[pad] = 50.0 * torch.randn(int(pad.sum()), 8)
    torch.testing.assert_close(pool(changed, pad), out, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[2], torch.zeros(2, 8))
    # sample 1 has one real token: its pooled vector only depends on that token
    alone = pool(tokens[1:2, :1])
    torch.testing.assert_close(out[1], alone[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pool(changed), pool(tokens), atol=1e-3)  # without a mask it would change


def test_attentional_pooler_gradients_and_bad_arguments() -> None:
    pool = AttentionalPooler(8, num_queries=1, num_heads=2, context_dim=4)
    tokens = torch.randn(1, 3, 4, requires_grad=True)
    pool(tokens).sum().backward()
    assert pool.query.grad is not None and tokens.grad is not None
    for kwargs, match in [
        ({"dim": 0}, "dim"),
        ({"dim": 8, "num_queries": 0}, "num_queries"),
        ({"dim": 8, "num_heads": 3}, "dim must be divisible by num_heads"),
        ({"dim": 8, "context_dim": 0}, "context_dim"),
    ]:
        with pytest.raises(ValueError, match=match):
            AttentionalPooler(**kwargs)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T, 4\)"):
        pool(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="padding_mask must have shape"):
        pool(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------
# SubspaceHead
# ----------------------------------------------------------------------------------------------------


def test_subspace_head_widths_order_and_manual_forward() -> None:
    head = SubspaceHead(5, {"style": 3, "content": 2, "pose": 4}).double()
    assert head.names == ["style", "content", "pose"]
    assert head.widths == [3, 2, 4] and head.out_dim == 9
    x = torch.randn(4, 5, dtype=torch.float64)
    z = head(x)
    assert z.shape == (4, 9)
    expected = torch.cat([ref_linear(x, head.branches[n]) for n in ["style", "content", "pose"]], dim=1)
    torch.testing.assert_close(z, expected, rtol=1e-10, atol=1e-10)


def test_subspace_head_split() -> None:
    head = SubspaceHead(6, {"a": 2, "b": 3})
    z = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)  # works on (B, T, Σd) too
    parts = head.split(z)
    assert list(parts) == ["a", "b"]
    assert torch.equal(parts["a"], z[..., 0:2]) and torch.equal(parts["b"], z[..., 2:5])
    x = torch.randn(4, 6)
    parts = head.split(head(x))
    torch.testing.assert_close(parts["b"], head.branches["b"](x))


def test_subspace_head_hidden_branches_and_gradient_isolation() -> None:
    head = SubspaceHead(6, {"a": 2, "b": 3}, hidden_dim=7)
    assert [type(m) for m in head.branches["a"]] == [nn.Linear, nn.ReLU, nn.Linear]
    assert head.branches["a"][0].out_features == 7 and head.branches["b"][2].out_features == 3
    head.split(head(torch.randn(4, 6)))["a"].pow(2).sum().backward()
    assert all(p.grad is not None for p in head.branches["a"].parameters())
    # cat's backward hands branch "b" a zero gradient: nothing of sub-space "a"'s loss reaches it
    assert all(p.grad is None or not p.grad.any() for p in head.branches["b"].parameters())
    assert all(p.grad is not None and p.grad.any() for p in head.branches["a"].parameters())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, {"a": 2}), "in_dim"),
        ((4, {}), "subspaces"),
        ((4, {"a": 0}), r"subspaces\['a'\]"),
        ((4, {"a": 2.5}), r"subspaces\['a'\]"),
        ((4, {"a.b": 2}), "subspaces names"),
        ((4, {"": 2}), "subspaces names"),
        ((4, {"a": 2}, 0), "hidden_dim"),
    ],
)
def test_subspace_head_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SubspaceHead(*args)


def test_subspace_head_bad_inputs() -> None:
    head = SubspaceHead(4, {"a": 2, "b": 1})
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\)"):
        head(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 3\).*\(3, 4\)"):
        head.split(torch.randn(3, 4))


# ----------------------------------------------------------------------------------------------------
# LearnableTemperature (re-exported)
# ----------------------------------------------------------------------------------------------------


def test_learnable_temperature_reexport_clamp_and_gradient() -> None:
    assert LearnableTemperature is LossesLearnableTemperature and "LearnableTemperature" in N.__all__
    temp = LearnableTemperature(0.07)
    scale = temp()
    assert float(scale.detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    scale.backward()  # d exp(s)/ds = exp(s): below the clamp the gradient reaches the parameter
    assert temp.log_scale.grad is not None
    assert float(temp.log_scale.grad) == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        temp.log_scale.fill_(math.log(1000.0))  # pushed past the clamp by an optimiser
    assert float(temp().detach()) == pytest.approx(100.0, rel=1e-6)
    assert float(temp.log_scale.detach()) == pytest.approx(math.log(100.0), rel=1e-6)  # clamped in place
    assert not LearnableTemperature(0.1, learnable=False).log_scale.requires_grad
    with pytest.raises(ValueError, match="init_temperature"):
        LearnableTemperature(0.0)
    with pytest.raises(ValueError, match="init_temperature"):
        LearnableTemperature(0.001)  # 1/0.001 > max_scale = 100


def test_public_names_exported() -> None:
    for name in [
        "ProjectionHead", "PredictionHead", "MomentumTarget", "cosine_schedule", "update_momentum",
        "CoAttention", "AttentionalPooler", "SubspaceHead", "FeatureExtractor",
    ]:  # fmt: skip
        assert name in N.__all__ and hasattr(N, name), name
