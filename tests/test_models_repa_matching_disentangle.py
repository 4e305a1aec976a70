"""REPARegularizer, ImageTextMatcher and DisentangledContrastive: references by hand, behaviour on
small synthetic problems, masks, gradient isolation and argument checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import alignkit.functional as AF
from alignkit.models.disentangle import DisentangledContrastive
from alignkit.models.matching import ImageTextMatcher, masked_mean
from alignkit.models.repa import REPARegularizer, resample_tokens

# --------------------------------------------------------------------------------------------------
# Helpers and slow references


def _transformer(d: int = 16, layers: int = 3, dtype: torch.dtype = torch.float32) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(dtype)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _cos(a: Tensor, b: Tensor) -> float:
    dot = sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(y) ** 2 for y in b))
    return dot / (na * nb)


def _linear_1d_ref(seq: list[list[float]], size: int) -> list[list[float]]:
    """Linear resampling with half-pixel centres (align_corners=False), one output token at a time."""
    n = len(seq)
    out = []
    for i in range(size):
        src = max((i + 0.5) * n / size - 0.5, 0.0)
        i0 = min(math.floor(src), n - 1)
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        out.append([(1 - lam) * a + lam * b for a, b in zip(seq[i0], seq[i1], strict=True)])
    return out


def _resample_ref(tokens: Tensor, size: int) -> Tensor:
    """(B, T', d) → (B, size, d): bilinear on the row-major square grid when both counts are squares
    (separable: rows then columns), else linear along the sequence. Python loops, float64."""
    batch, have, _ = tokens.shape
    s_in, s_out = math.isqrt(have), math.isqrt(size)
    result = []
    for b in range(batch):
        seq = tokens[b].double().tolist()
        if s_in * s_in == have and s_out * s_out == size:
            grid = [seq[r * s_in : (r + 1) * s_in] for r in range(s_in)]
            rows = [_linear_1d_ref(row, s_out) for row in grid]  # s_in × s_out
            cols = [_linear_1d_ref([rows[r][c] for r in range(s_in)], s_out) for c in range(s_out)]
            result.append([cols[c][r] for r in range(s_out) for c in range(s_out)])
        else:
            result.append(_linear_1d_ref(seq, size))
    return torch.tensor(result, dtype=torch.float64)


def _neg_mean_cos_ref(p: Tensor, y: Tensor) -> float:
    values = [-_cos(p[b, t], y[b, t]) for b in range(p.shape[0]) for t in range(p.shape[1])]
    return sum(values) / len(values)


# --------------------------------------------------------------------------------------------------
# REPARegularizer


def test_repa_loss_matches_hand_computation_on_the_hooked_block() -> None:
    model = _transformer(dtype=torch.float64)
    reg = REPARegularizer(model, "layers.1", target_dim=8, hidden_dim=32, weight=0.5).double()
    assert reg.source_dim == 16  # read from the block's last LayerNorm
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    target = torch.randn(3, 9, 8, dtype=torch.float64)
    model(x)
    loss = reg.loss(target)
    with torch.no_grad():
        h = model.layers[1](model.layers[0](x))
        projected = reg.projector(h)
    torch.testing.assert_close(
        loss, torch.tensor(0.5 * _neg_mean_cos_ref(projected, target), dtype=torch.float64)
    )


def test_repa_regulariser_reduces_its_loss_when_optimised() -> None:
    model = _transformer()
    reg = REPARegularizer(model, "layers.1", target_dim=8, hidden_dim=64, weight=1.0)
    mixing = torch.randn(16, 8)
    opt = torch.optim.Adam([*model.parameters(), *reg.parameters()], lr=3e-3)
    x_fixed = torch.randn(8, 9, 16)
    losses = []
    for step in range(80):
        x = x_fixed if step in (0, 79) else torch.randn(8, 9, 16)
        model(x)
        loss = reg.loss(torch.tanh(x @ mixing))  # a learnable function of the input tokens
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (0, 79):
            losses.append(loss.item())
    assert losses[1] < losses[0] - 0.4, losses
    assert losses[1] < -0.6


@pytest.mark.parametrize("hooked", [0, 1])
def test_repa_gradient_reaches_only_the_blocks_up_to_the_hooked_one(hooked: int) -> None:
    model = _transformer(layers=3)
    reg = REPARegularizer(model, f"layers.{hooked}", target_dim=8, hidden_dim=32)
    x = torch.randn(4, 9, 16)
    out = model(x)
    task = out.square().mean()
    reg_loss = reg.loss(torch.randn(4, 9, 8))
    params = {i: list(model.layers[i].parameters()) for i in range(3)}
    flat = [p for i in range(3) for p in params[i]]
    g_reg = torch.autograd.grad(reg_loss, flat + list(reg.parameters()), allow_unused=True, retain_graph=True)
    g_task = torch.autograd.grad(task, flat, retain_graph=True)
    g_total = torch.autograd.grad(task + reg_loss, flat)
    sizes = [len(params[i]) for i in range(3)]
    offsets = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    for i in range(3):
        own = g_reg[offsets[i] : offsets[i + 1]]
        if i <= hooked:  # up to the hooked block: the regulariser's gradient is there
            assert any(g is not None and float(g.abs().sum()) > 0 for g in own), i
            assert any(
                not torch.allclose(g_total[k], g_task[k]) for k in range(offsets[i], offsets[i + 1])
            ), i
        else:  # after it: nothing, and the total gradient is the task's alone
            assert all(g is None or float(g.abs().sum()) == 0 for g in own), i
            for k in range(offsets[i], offsets[i + 1]):
                torch.testing.assert_close(g_total[k], g_task[k], rtol=0, atol=0)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in g_reg[offsets[3] :])  # projector


@pytest.mark.parametrize(("have", "want"), [(16, 64), (64, 16), (25, 9), (10, 7), (7, 16), (9, 12), (3, 3)])
def test_resample_tokens_against_loops_and_interpolate(have: int, want: int) -> None:
    tokens = torch.randn(2, have, 3, dtype=torch.float64)
    out = resample_tokens(tokens, want)
    assert out.shape == (2, want, 3)
    torch.testing.assert_close(out, _resample_ref(tokens, want))
    # and by hand with F.interpolate
    s_in, s_out = math.isqrt(have), math.isqrt(want)
    if have == want:
        expected = tokens
    elif s_in * s_in == have and s_out * s_out == want:
        grid = tokens.transpose(1, 2).reshape(2, 3, s_in, s_in)
        expected = F.interpolate(grid, size=(s_out, s_out), mode="bilinear", align_corners=False)
        expected = expected.reshape(2, 3, want).transpose(1, 2)
    else:
        expected = F.interpolate(tokens.transpose(1, 2), size=want, mode="linear", align_corners=False)
        expected = expected.transpose(1, 2)
    torch.testing.assert_close(out, expected)


def test_resample_tokens_keeps_the_grid_row_major() -> None:
    rows = torch.arange(4, dtype=torch.float64).repeat_interleave(4)  # token (r, c) holds r
    out = resample_tokens(rows[None, :, None], 64)[0, :, 0].reshape(8, 8)
    torch.testing.assert_close(out, out[:, :1].expand(8, 8))  # constant along each row
    assert bool((out[1:, 0] >= out[:-1, 0]).all()) and float(out[-1, 0] - out[0, 0]) > 2


def test_resample_tokens_half_precision() -> None:
    tokens = torch.randn(2, 16, 4)
    for dtype in (torch.float16, torch.bfloat16):
        out = resample_tokens(tokens.to(dtype), 36)
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        torch.testing.assert_close(out.float(), resample_tokens(tokens, 36), atol=2e-2, rtol=2e-2)


def test_repa_loss_resamples_a_target_with_another_token_count() -> None:
    model = _transformer(dtype=torch.float64)
    reg = REPARegularizer(model, "layers.0", target_dim=6, hidden_dim=16, weight=1.0).double()
    x = torch.randn(2, 16, 16, dtype=torch.float64)  # 4 × 4 tokens
    target = torch.randn(2, 64, 6, dtype=torch.float64)  # 8 × 8 tokens
    model(x)
    loss = reg.loss(target)
    with torch.no_grad():
        projected = reg.projector(model.layers[0](x))
    expected = _neg_mean_cos_ref(projected, _resample_ref(target, 16))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_repa_vavae_form_is_the_weighted_sum_of_mcos_and_mdms() -> None:
    model = _transformer(dtype=torch.float64)
    m1, m2, w1, w2, lam = 1.1, 0.1, 0.7, 1.3, 0.5
    reg = REPARegularizer(
        model,
        "layers.0",
        6,
        hidden_dim=None,
        weight=lam,
        form="vavae",
        margins=(m1, m2),
        vavae_weights=(w1, w2),
    ).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    target = torch.randn(2, 5, 6, dtype=torch.float64)
    model(x)
    loss = reg.loss(target)
    with torch.no_grad():
        p = reg.projector(model.layers[0](x))
    batch, tokens = p.shape[:2]
    mcos_terms = [max(0.0, 1 - m1 - _cos(p[b, t], target[b, t])) for b in range(batch) for t in range(tokens)]
    assert 0 < sum(t > 0 for t in mcos_terms) < len(mcos_terms)  # the margin clips some, not all
    mcos = sum(mcos_terms) / len(mcos_terms)
    mdms = 0.0
    for b in range(batch):
        for i in range(tokens):
            for j in range(tokens):
                diff = _cos(p[b, i], p[b, j]) - _cos(target[b, i], target[b, j])
                mdms += max(0.0, abs(diff) - m2) / (tokens * tokens * batch)
    torch.testing.assert_close(loss, torch.tensor(lam * (w1 * mcos + w2 * mdms), dtype=torch.float64))
    assert reg.projector.num_layers == 1  # hidden_dim=None: VA-VAE's linear projection


def test_repa_drops_prefix_tokens_and_accepts_feature_maps() -> None:
    model = _transformer(dtype=torch.float64)
    reg = REPARegularizer(model, "layers.0", 4, hidden_dim=8, weight=1.0, num_prefix_tokens=1).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)  # CLS + 3 × 3 patches
    target_map = torch.randn(2, 4, 3, 3, dtype=torch.float64)  # (B, C, H, W) frozen feature map
    model(x)
    loss = reg.loss(target_map)
    with torch.no_grad():
        projected = reg.projector(model.layers[0](x)[:, 1:])
    target = target_map.flatten(2).transpose(1, 2)
    torch.testing.assert_close(loss, torch.tensor(_neg_mean_cos_ref(projected, target), dtype=torch.float64))


def test_repa_hooks_a_conv_feature_map() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).double()
    reg = REPARegularizer(net, "0", 5, hidden_dim=16, weight=1.0).double()
    assert reg.source_dim == 8
    img = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    target = torch.randn(2, 16, 5, dtype=torch.float64)
    net(img)
    loss = reg.loss(target)
    with torch.no_grad():
        projected = reg.projector(net[0](img).flatten(2).transpose(1, 2))
    torch.testing.assert_close(loss, torch.tensor(_neg_mean_cos_ref(projected, target), dtype=torch.float64))


def test_repa_forward_convenience_and_target_is_detached() -> None:
    model = _transformer()
    reg = REPARegularizer(model, "layers.1", 8, hidden_dim=16)
    x = torch.randn(2, 9, 16)
    target = torch.randn(2, 9, 8, requires_grad=True)
    out, loss = reg(x, target)
    torch.testing.assert_close(out, model(x))
    expected = reg.loss(target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert target.grad is None  # the frozen features get no gradient


def test_repa_hook_removal_and_context_manager() -> None:
    model = _transformer()
    before = _hook_count(model)
    reg = REPARegularizer(model, "layers.1", 8, hidden_dim=16)
    assert _hook_count(model) == before + 1
    with pytest.raises(ValueError, match="forward"):  # no forward pass yet
        reg.loss(torch.randn(2, 9, 8))
    model(torch.randn(2, 9, 16))
    reg.loss(torch.randn(2, 9, 8))
    with pytest.raises(ValueError, match="forward"):  # the tokens are released after a loss
        reg.loss(torch.randn(2, 9, 8))
    reg.remove()
    reg.remove()  # idempotent
    assert _hook_count(model) == before
    model(torch.randn(2, 9, 16))
    with pytest.raises(ValueError, match="removed"):
        reg.loss(torch.randn(2, 9, 8))
    assert "removed" in repr(reg)
    with REPARegularizer(model, "layers.0", 8, hidden_dim=16) as ctx:
        assert _hook_count(model) == before + 1
        model(torch.randn(2, 9, 16))
        assert torch.isfinite(ctx.loss(torch.randn(2, 9, 8)))
    assert _hook_count(model) == before
    assert list(dict(reg.named_parameters())) == [
        n for n, _ in reg.projector.named_parameters(prefix="projector")
    ]


def test_repa_half_precision() -> None:
    model = _transformer()
    reg = REPARegularizer(model, "layers.1", 8, hidden_dim=16)
    x, target = torch.randn(2, 9, 16), torch.randn(2, 9, 8)
    model(x)
    ref = reg.loss(target)
    for dtype in (torch.bfloat16, torch.float16):
        model_h, reg_h = _transformer().to(dtype), None
        model_h.load_state_dict(model.state_dict())
        model_h.to(dtype)
        reg_h = REPARegularizer(model_h, "layers.1", 8, hidden_dim=16)
        reg_h.load_state_dict(reg.state_dict())
        reg_h.to(dtype)
        if dtype == torch.float16:  # fp16 matmul on CPU may be missing in some builds
            try:
                model_h(x.to(dtype))
            except RuntimeError:
                continue
        else:
            model_h(x.to(dtype))
        out = reg_h.loss(target.to(dtype))
        assert out.dtype == dtype and bool(torch.isfinite(out))
        torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=0)


def test_repa_zero_target_is_finite() -> None:
    model = _transformer()
    reg = REPARegularizer(model, "layers.1", 8, hidden_dim=16, form="vavae")
    model(torch.randn(2, 9, 16))
    loss = reg.loss(torch.zeros(2, 9, 8))
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert all(bool(torch.isfinite(p.grad).all()) for p in reg.parameters() if p.grad is not None)


def test_repa_bad_arguments() -> None:
    model = _transformer()
    with pytest.raises(ValueError, match=r"layer: .*'layer\.1'.*did you mean 'layers\.1'"):
        REPARegularizer(model, "layer.1", 8)
    with pytest.raises(ValueError, match="model"):
        REPARegularizer("not a module", "x", 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_dim"):
        REPARegularizer(model, "layers.1", 0)
    with pytest.raises(ValueError, match="hidden_dim"):
        REPARegularizer(model, "layers.1", 8, hidden_dim=0)
    with pytest.raises(ValueError, match="weight"):
        REPARegularizer(model, "layers.1", 8, weight=-1.0)
    with pytest.raises(ValueError, match="form"):
        REPARegularizer(model, "layers.1", 8, form="irepa")
    with pytest.raises(ValueError, match=r"margins\[0\]"):
        REPARegularizer(model, "layers.1", 8, form="vavae", margins=(2.5, 0.1))
    with pytest.raises(ValueError, match=r"margins\[1\]"):
        REPARegularizer(model, "layers.1", 8, form="vavae", margins=(0.5, -0.1))
    with pytest.raises(ValueError, match="margins"):
        REPARegularizer(model, "layers.1", 8, margins=(0.5,))
    with pytest.raises(ValueError, match="vavae_weights"):
        REPARegularizer(model, "layers.1", 8, form="vavae", vavae_weights=(0.0, 0.0))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        REPARegularizer(model, "layers.1", 8, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="source_dim"):
        REPARegularizer(nn.Sequential(nn.ReLU()), "0", 8)  # no width to read
    wrong = REPARegularizer(model, "layers.1", 8, hidden_dim=8, source_dim=12)
    model(torch.randn(2, 9, 16))
    with pytest.raises(ValueError, match="source_dim=16"):
        wrong.loss(torch.randn(2, 9, 8))
    wrong.remove()
    reg = REPARegularizer(model, "layers.1", 8, hidden_dim=8)
    for target, pattern in [
        (torch.randn(3, 9, 8), r"target must have shape \(B=2"),
        (torch.randn(2, 9, 7), "target_dim=8"),
        (torch.randn(2, 9), "target"),
        (torch.full((2, 9, 8), float("nan")), "non-finite"),
        (torch.randn(2, 7, 3, 3), "target_dim=8"),
    ]:
        model(torch.randn(2, 9, 16))
        with pytest.raises(ValueError, match=pattern):
            reg.loss(target)
    with pytest.raises(ValueError, match="num_tokens"):
        resample_tokens(torch.randn(1, 4, 2), 0)
    with pytest.raises(ValueError, match="tokens"):
        resample_tokens(torch.randn(4, 2), 3)


# --------------------------------------------------------------------------------------------------
# ImageTextMatcher


def _pairs(n: int, gen: torch.Generator, garbage: float = 5.0) -> tuple[Tensor, Tensor, Tensor]:
    """Image tokens and text tokens that are two different linear views of a shared latent c (N, 6),
    with text of 3-6 tokens, padded to 6 with garbage."""
    g = torch.Generator().manual_seed(1)  # the two views are fixed; only the samples vary
    a = torch.randn(5, 6, 12, generator=g) / 6**0.5
    b = torch.randn(6, 6, 10, generator=g) / 6**0.5
    c = torch.randn(n, 6, generator=gen)
    img = torch.einsum("nc,tcd->ntd", c, a) + 0.1 * torch.randn(n, 5, 12, generator=gen)
    txt = torch.einsum("nc,tcd->ntd", c, b) + 0.1 * torch.randn(n, 6, 10, generator=gen)
    lengths = torch.randint(3, 7, (n,), generator=gen)
    pad = torch.arange(6)[None] >= lengths[:, None]
    txt = torch.where(pad[..., None], garbage * torch.randn(n, 6, 10, generator=gen), txt)
    return img, txt, pad


def test_masked_mean_matches_loop() -> None:
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    pad = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = masked_mean(x, pad)
    for b in range(3):
        kept = [x[b, t] for t in range(4) if not pad[b, t]]
        expected = sum(kept) / len(kept) if kept else torch.zeros(2, dtype=torch.float64)
        torch.testing.assert_close(out[b], expected)
    torch.testing.assert_close(masked_mean(x), x.mean(1))


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_matcher_padded_tokens_do_not_change_the_output(pooling: str) -> None:
    matcher = ImageTextMatcher(12, 10, 16, num_heads=4, num_layers=2, pooling=pooling).double()
    img, txt, tpad = _pairs(4, torch.Generator().manual_seed(3))
    img, txt = img.double(), txt.double()
    ipad = torch.zeros(4, 5, dtype=torch.bool)
    ipad[0, 3:] = True
    ipad[2, 1:] = True
    out = matcher(img, txt, ipad, tpad)
    parts = matcher.loss(img, txt, ipad, tpad, output_dict=True)
    img2 = torch.where(ipad[..., None], 100 * torch.randn_like(img), img)
    txt2 = torch.where(tpad[..., None], -100 * torch.randn_like(txt), txt)
    torch.testing.assert_close(matcher(img2, txt2, ipad, tpad), out, rtol=0, atol=1e-12)
    parts2 = matcher.loss(img2, txt2, ipad, tpad, output_dict=True)
    for key in ("loss", "align", "task"):
        torch.testing.assert_close(parts2[key], parts[key], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        matcher.embed_text(txt2, tpad), matcher.embed_text(txt, tpad), rtol=0, atol=1e-12
    )
    # a real token does change it (so the check above can fail)
    txt3 = txt.clone()
    txt3[0, 0] += 1.0
    assert not torch.allclose(matcher(img, txt3, ipad, tpad)[0], out[0])
    # and without the mask, the padding content would leak in
    assert not torch.allclose(matcher(img2, txt2, ipad, None), matcher(img, txt, ipad, None))


def test_matcher_loss_matches_hand_computation() -> None:
    matcher = ImageTextMatcher(
        12, 10, 16, num_heads=4, temperature=0.1, align_weight=0.7, task_weight=1.3
    ).double()
    img, txt, tpad = _pairs(5, torch.Generator().manual_seed(4))
    img, txt = img.double(), txt.double()
    parts = matcher.loss(img, txt, text_padding_mask=tpad, output_dict=True)
    with torch.no_grad():
        ei, et = matcher.embed_image(img), matcher.embed_text(txt, tpad)
        scale = float(matcher.logit_scale())
        n = 5
        sim = [
            [sum(float(ei[i, k]) * float(et[j, k]) for k in range(16)) for j in range(n)] for i in range(n)
        ]
        align = 0.0
        for i in range(n):
            row = [scale * sim[i][j] for j in range(n)]
            col = [scale * sim[j][i] for j in range(n)]
            align += (math.log(sum(math.exp(v) for v in row)) - row[i]) / (2 * n)
            align += (math.log(sum(math.exp(v) for v in col)) - col[i]) / (2 * n)
        hard_text = [max((j for j in range(n) if j != i), key=lambda j: sim[i][j]) for i in range(n)]
        hard_image = [max((i for i in range(n) if i != j), key=lambda i: sim[i][j]) for j in range(n)]
        pos = matcher(img, txt, text_padding_mask=tpad)
        neg_t = matcher(img, txt[hard_text], text_padding_mask=tpad[hard_text])
        neg_i = matcher(img[hard_image], txt, text_padding_mask=tpad)
        terms = [math.log1p(math.exp(-float(v))) for v in pos]  # −log σ(l)
        terms += [math.log1p(math.exp(float(v))) for v in torch.cat([neg_t, neg_i])]  # −log(1 − σ(l))
        task = sum(terms) / len(terms)
    torch.testing.assert_close(parts["align"], torch.tensor(align, dtype=torch.float64))
    torch.testing.assert_close(parts["task"], torch.tensor(task, dtype=torch.float64))
    torch.testing.assert_close(parts["loss"], torch.tensor(0.7 * align + 1.3 * task, dtype=torch.float64))
    torch.testing.assert_close(matcher.loss(img, txt, text_padding_mask=tpad), parts["loss"])


def test_matcher_learns_to_match_above_chance() -> None:
    matcher = ImageTextMatcher(12, 10, 32, num_heads=4, num_layers=1)
    opt = torch.optim.Adam(matcher.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    img_te, txt_te, pad_te = _pairs(256, torch.Generator().manual_seed(99))
    wrong = torch.roll(torch.arange(256), 1)  # every image with another sample's text

    def accuracy() -> float:
        with torch.no_grad():
            pos = matcher(img_te, txt_te, text_padding_mask=pad_te)
            neg = matcher(img_te, txt_te[wrong], text_padding_mask=pad_te[wrong])
        return 0.5 * float((pos > 0).float().mean() + (neg <= 0).float().mean())  # chance: 0.5

    before = accuracy()
    for _ in range(150):
        img, txt, pad = _pairs(32, gen)
        loss = matcher.loss(img, txt, text_padding_mask=pad)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert before < 0.6
    assert after > 0.75, (before, after)
    # the unimodal embeddings are aligned too: image → text retrieval far above chance (1/256)
    with torch.no_grad():
        recall = AF.recall_at_k(matcher.embed_image(img_te), matcher.embed_text(txt_te, pad_te), k=(1, 5))
    assert recall["recall@5"] > 0.2


def test_matcher_batch_sizes_and_half_precision() -> None:
    matcher = ImageTextMatcher(12, 10, 16, num_heads=4)
    img, txt, pad = _pairs(2, torch.Generator().manual_seed(5))
    assert matcher(img[:1], txt[:1], text_padding_mask=pad[:1]).shape == (1,)
    assert torch.isfinite(matcher.loss(img, txt, text_padding_mask=pad))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        matcher.loss(img[:1], txt[:1], text_padding_mask=pad[:1])
    ref = matcher.loss(img, txt, text_padding_mask=pad)
    out_ref = matcher(img, txt, text_padding_mask=pad)
    half = ImageTextMatcher(12, 10, 16, num_heads=4)
    half.load_state_dict(matcher.state_dict())
    half.to(torch.bfloat16)
    loss = half.loss(img.bfloat16(), txt.bfloat16(), text_padding_mask=pad)
    out = half(img.bfloat16(), txt.bfloat16(), text_padding_mask=pad)
    assert loss.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(out).all())
    torch.testing.assert_close(loss.float(), ref, atol=0.1, rtol=0.02)
    torch.testing.assert_close(out.float(), out_ref, atol=0.05, rtol=0.05)
    # zero tokens and fully padded text are finite
    zero = matcher.loss(torch.zeros_like(img), txt, text_padding_mask=torch.ones_like(pad))
    assert bool(torch.isfinite(zero))


def test_matcher_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        ImageTextMatcher(12, 10, 18, num_heads=4)
    with pytest.raises(ValueError, match="pooling"):
        ImageTextMatcher(12, 10, 16, num_heads=4, pooling="max")
    with pytest.raises(ValueError, match="temperature"):
        ImageTextMatcher(12, 10, 16, num_heads=4, temperature=0.0)
    with pytest.raises(ValueError, match="num_layers"):
        ImageTextMatcher(12, 10, 16, num_heads=4, num_layers=0)
    with pytest.raises(ValueError, match="image_dim"):
        ImageTextMatcher(0, 10, 16)
    with pytest.raises(ValueError, match="task_weight"):
        ImageTextMatcher(12, 10, 16, num_heads=4, task_weight=-1.0)
    m = ImageTextMatcher(12, 10, 16, num_heads=4)
    img, txt, pad = _pairs(3, torch.Generator().manual_seed(6))
    with pytest.raises(ValueError, match=r"image_tokens must have shape \(B, T, image_dim=12\)"):
        m(img[..., :11], txt)
    with pytest.raises(ValueError, match="text_dim=10"):
        m(img, txt[..., :9])
    with pytest.raises(ValueError, match="same batch size"):
        m(img, txt[:2])
    with pytest.raises(ValueError, match="text_padding_mask must be a bool"):
        m(img, txt, text_padding_mask=pad.long())
    with pytest.raises(ValueError, match=r"text_padding_mask must have shape \(B, T\) = \(3, 6\)"):
        m(img, txt, text_padding_mask=pad[:, :4])
    with pytest.raises(ValueError, match="image_tokens"):
        m(img[0], txt)
    with pytest.raises(ValueError, match="non-finite"):
        m(img, txt.masked_fill(pad[..., None], float("nan")), text_padding_mask=pad)


# --------------------------------------------------------------------------------------------------
# DisentangledContrastive


def _factor_data(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two factors with 4 values each, mixed with a nuisance through a fixed random nonlinear map to
    24 dimensions; two views share factors and nuisance and differ by noise."""
    g = torch.Generator().manual_seed(1)
    emb1, emb2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    w1, w2 = torch.randn(20, 64, generator=g) / 20**0.5, torch.randn(64, 24, generator=g) / 8
    factors = torch.stack([torch.randint(4, (n,), generator=gen), torch.randint(4, (n,), generator=gen)], 1)
    nuisance = torch.randn(n, 4, generator=gen)

    def view() -> Tensor:
        noise1, noise2 = 0.3 * torch.randn(n, 8, generator=gen), 0.3 * torch.randn(n, 8, generator=gen)
        h = torch.cat([emb1[factors[:, 0]] + noise1, emb2[factors[:, 1]] + noise2, nuisance], 1)
        return torch.tanh(h @ w1) @ w2

    return factors, view(), view(), view()


def _encoder() -> nn.Module:
    return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 32))


@pytest.mark.parametrize("independence", ["correlation", "cka"])
def test_disentangled_contrastive_puts_each_factor_in_its_own_subspace(independence: str) -> None:
    model = DisentangledContrastive(_encoder(), 32, {"a": 8, "b": 8}, independence=independence)
    gen = torch.Generator().manual_seed(2)
    f_tr, x_tr, _, _ = _factor_data(400, gen)
    f_te, x_te, _, _ = _factor_data(400, gen)
    untrained = model.probe_report(x_tr, f_tr, x_te, f_te, weight_decay=1e-2)
    assert min(untrained["a"]["b"], untrained["b"]["a"]) > 0.55  # both factors are everywhere at first
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        factors, v1, v2, _ = _factor_data(128, gen)
        loss = model.loss(v1, v2, factors)
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = model.probe_report(x_tr, f_tr, x_te, f_te, weight_decay=1e-2)
    assert set(report) == {"a", "b"} and all(set(row) == {"a", "b"} for row in report.values())
    assert report["a"]["a"] > 0.95 and report["b"]["b"] > 0.95, report
    # chance is 0.25 (4 balanced values); before training both were ≥ 0.6
    assert report["a"]["b"] < 0.45 and report["b"]["a"] < 0.45, report
    assert report["a"]["b"] + report["b"]["a"] < 0.7, report
    assert model.training  # probe_report restores the mode


def test_disentangled_loss_is_the_contrastive_sum_plus_the_penalty() -> None:
    torch.manual_seed(1)
    x1, x2 = torch.randn(12, 10, dtype=torch.float64), torch.randn(12, 10, dtype=torch.float64)
    factors = torch.randint(3, (12, 3))
    spaces = {"p": 2, "q": 3, "r": 4}
    for independence in ("correlation", "cka"):
        model = DisentangledContrastive(
            None, 10, spaces, temperature=0.2, independence=independence, independence_weight=0.3
        ).double()
        parts = model.loss(x1, x2, factors, output_dict=True)
        z1, z2 = model(x1), model(x2)
        z = torch.cat([z1, z2]).detach()
        contrastive = AF.subspace_contrastive_loss(z1, z2, [2, 3, 4], 0.2, factors)
        bounds = [(0, 2), (2, 5), (5, 9)]
        if independence == "correlation":
            zc = z - z.mean(0)
            std = zc.pow(2).mean(0).sqrt()
            values = []
            for (i, (a0, a1)), (j, (b0, b1)) in itertools.product(enumerate(bounds), repeat=2):
                if i == j:
                    continue
                for a in range(a0, a1):
                    for b in range(b0, b1):
                        values.append(float((zc[:, a] * zc[:, b]).mean() / (std[a] * std[b])) ** 2)
            penalty = sum(values) / len(values)
        else:
            ckas = []
            for (a0, a1), (b0, b1) in itertools.combinations(bounds, 2):
                za, zb = z[:, a0:a1] - z[:, a0:a1].mean(0), z[:, b0:b1] - z[:, b0:b1].mean(0)
                k, lm = za @ za.T, zb @ zb.T
                ckas.append(float((k * lm).sum() / (k.norm() * lm.norm())))
            penalty = sum(ckas) / len(ckas)
        torch.testing.assert_close(parts["independence"], torch.tensor(penalty, dtype=torch.float64))
        torch.testing.assert_close(parts["contrastive"], contrastive)
        torch.testing.assert_close(parts["loss"], contrastive + 0.3 * penalty)
        named = {"r": factors[:, 2], "p": factors[:, 0], "q": factors[:, 1]}
        torch.testing.assert_close(model.loss(x1, x2, named), parts["loss"])
        unsupervised = model.loss(x1, x2, output_dict=True)
        torch.testing.assert_close(
            unsupervised["contrastive"], AF.subspace_contrastive_loss(z1, z2, [2, 3, 4], 0.2)
        )


def test_disentangled_probe_report_with_named_factors_and_batch_of_two() -> None:
    model = DisentangledContrastive(None, 6, {"u": 3, "v": 3})
    x = torch.randn(40, 6)
    labels = {"colour": torch.arange(40) % 2, "size": (torch.arange(40) // 2) % 2}
    report = model.probe_report(
        x[:20], {k: v[:20] for k, v in labels.items()}, x[20:], {k: v[20:] for k, v in labels.items()}
    )
    assert list(report) == ["colour", "size"] and all(list(r) == ["u", "v"] for r in report.values())
    assert all(0.0 <= acc <= 1.0 for r in report.values() for acc in r.values())
    loss = model.loss(x[:2], x[2:4], torch.tensor([[0, 1], [1, 0]]))
    assert loss.shape == () and bool(torch.isfinite(loss))
    zero = model.loss(torch.zeros(4, 6), torch.zeros(4, 6), torch.tensor([[0, 1], [1, 0], [0, 0], [1, 1]]))
    assert bool(torch.isfinite(zero))
    with pytest.raises(ValueError, match="at least 2 samples"):
        model.loss(x[:1], x[1:2])


def test_disentangled_half_precision() -> None:
    model = DisentangledContrastive(None, 6, {"u": 3, "v": 3}, independence="cka")
    x1, x2, f = torch.randn(16, 6), torch.randn(16, 6), torch.randint(2, (16, 2))
    ref = model.loss(x1, x2, f)
    model_h = DisentangledContrastive(None, 6, {"u": 3, "v": 3}, independence="cka")
    model_h.load_state_dict(model.state_dict())
    model_h.to(torch.bfloat16)
    out = model_h.loss(x1.bfloat16(), x2.bfloat16(), f)
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out))
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.03)


def test_disentangled_bad_arguments() -> None:
    with pytest.raises(ValueError, match="subspaces"):
        DisentangledContrastive(None, 6, {"only": 6})
    with pytest.raises(ValueError, match="independence"):
        DisentangledContrastive(None, 6, {"u": 3, "v": 3}, independence="hsic")
    with pytest.raises(ValueError, match="independence_weight"):
        DisentangledContrastive(None, 6, {"u": 3, "v": 3}, independence_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        DisentangledContrastive(None, 6, {"u": 3, "v": 3}, temperature=0.0)
    with pytest.raises(ValueError, match="encoder"):
        DisentangledContrastive("mlp", 6, {"u": 3, "v": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_dim"):
        DisentangledContrastive(None, 0, {"u": 3, "v": 3})
    model = DisentangledContrastive(nn.Linear(5, 7), 6, {"u": 3, "v": 3})
    with pytest.raises(ValueError, match=r"encoder's output must have shape \(N, in_dim=6\)"):
        model.loss(torch.randn(4, 5), torch.randn(4, 5))
    model = DisentangledContrastive(None, 6, {"u": 3, "v": 3})
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"factors must have shape \(N, k\) = \(4, 2\)"):
        model.loss(x, x, torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.loss(x, x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sub-space names"):
        model.loss(x, x, {"u": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"x must have shape \(N, in_dim=6\)"):
        model.loss(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\)"):
        model.loss(torch.randn(4, 2, 6), torch.randn(4, 2, 6))
    with pytest.raises(ValueError, match="x1 and x2"):
        model.loss(torch.randn(4, 6), torch.randn(5, 6))
    with pytest.raises(ValueError, match="factors_train and factors_test"):
        model.probe_report(x, {"a": torch.arange(4) % 2}, x, {"b": torch.arange(4) % 2})
