"""Contrastive objectives: loop references (float64), pytorch-metric-learning oracles, tiled == plain,
gradcheck of the tiled autograd Functions, the modules (learnable temperature / bias, registry).

Convention checks against pytorch-metric-learning (PML), established by the tests below:

* ``SelfSupervisedLoss(NTXentLoss(τ), symmetric=False)(q, k)`` scores query ``i`` against every key
  with key ``i`` positive: exactly ``info_nce(q, k, τ, symmetric=False)``.
* ``SelfSupervisedLoss(NTXentLoss(τ))`` with its default ``symmetric=True`` concatenates ``[q; k]`` into
  2N embeddings labelled ``i`` and runs NT-Xent on them, so every anchor also has the other *queries*
  (same side) as negatives (SimCLR's 2N-2 negatives). That is **not** ``info_nce(symmetric=True)``
  (CLIP form: query→key and key→query only); it equals ``supcon_loss(stack([q, k], 1), labels=None)``.
  ``info_nce(symmetric=True)`` equals the mean of PML's ``symmetric=False`` loss on (q, k) and on (k, q).
* ``SupConLoss(τ)`` (PML) equals ``supcon_loss(variant="out")`` on the flattened views, including the
  exclusion of anchors without positives (PML's AvgNonZeroReducer).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

import alignkit.functional as AF
from alignkit import losses
from alignkit.functional import contrastive as C

D64 = torch.float64


def _rand(*shape: int, dtype: torch.dtype = D64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# slow, obviously-correct references (python loops, float64)
# ----------------------------------------------------------------------------------------------
def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y / (x.norm() * y.norm()))


def ref_info_nce(q, k, tau, negatives=None, symmetric=False, normalize=True, offset=0):
    """Per-query losses."""
    sim = (lambda x, y: _cos(x, y)) if normalize else (lambda x, y: float(x @ y))
    keys = list(k) + (list(negatives) if negatives is not None else [])
    n = q.shape[0]
    out = []
    for i in range(n):
        logits = [sim(q[i], key) / tau for key in keys]
        row = -logits[i + offset] + math.log(sum(math.exp(v) for v in logits))
        if symmetric:
            col_logits = [sim(q[a], k[i + offset]) / tau for a in range(n)]
            col = -col_logits[i] + math.log(sum(math.exp(v) for v in col_logits))
            row = 0.5 * (row + col)
        out.append(row)
    return torch.tensor(out, dtype=D64)


def ref_clip_softmax(a, b, scale):
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(a[i] @ b[j]) for j in range(n)]
        col = [scale * float(a[j] @ b[i]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def ref_siglip(a, b, scale, bias, offset=0):
    n, m = a.shape[0], b.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(m):
            z = 1.0 if j == i + offset else -1.0
            logit = scale * float(a[i] @ b[j]) + bias
            total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return total / n


def ref_supcon(features, labels, tau, variant):
    """Returns (per-anchor list with None for anchors without positives) over the flattened views."""
    if features.dim() == 2:
        features = features[:, None]
    n, v, _ = features.shape
    labels = torch.arange(n) if labels is None else labels
    rows = [(features[s, w], int(labels[s])) for s in range(n) for w in range(v)]
    out = []
    for i, (fi, yi) in enumerate(rows):
        others = [a for a in range(len(rows)) if a != i]
        positives = [p for p in others if rows[p][1] == yi]
        if not positives:
            out.append(None)
            continue
        denom = sum(math.exp(_cos(fi, rows[a][0]) / tau) for a in others)
        probs = [math.exp(_cos(fi, rows[p][0]) / tau) / denom for p in positives]
        if variant == "out":
            out.append(-sum(math.log(p) for p in probs) / len(probs))
        else:
            out.append(-math.log(sum(probs) / len(probs)))
    return out


def _mean_valid(per):
    vals = [x for x in per if x is not None]
    return sum(vals) / len(vals)


# ----------------------------------------------------------------------------------------------
# info_nce
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_info_nce_matches_loop(symmetric, with_negatives, chunk_size):
    q, k = _rand(7, 5), _rand(7, 5)
    neg = _rand(4, 5) if with_negatives else None
    ref = ref_info_nce(q, k, 0.3, neg, symmetric)
    got = AF.info_nce(q, k, 0.3, negatives=neg, symmetric=symmetric, chunk_size=chunk_size, reduction="none")
    torch.testing.assert_close(got, ref)
    mean = AF.info_nce(q, k, 0.3, negatives=neg, symmetric=symmetric, chunk_size=chunk_size)
    total = AF.info_nce(q, k, 0.3, negatives=neg, symmetric=symmetric, chunk_size=chunk_size, reduction="sum")
    torch.testing.assert_close(mean, ref.mean())
    torch.testing.assert_close(total, ref.sum())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_info_nce_target_offset_matches_loop(symmetric, chunk_size):
    q, k, neg = _rand(4, 6), _rand(11, 6), _rand(2, 6)
    for offset in (0, 3, 7):
        ref = ref_info_nce(q, k, 0.5, neg, symmetric, offset=offset)
        got = AF.info_nce(
            q, k, 0.5, neg, symmetric, chunk_size=chunk_size, reduction="none", target_offset=offset
        )
        torch.testing.assert_close(got, ref)


def test_info_nce_unnormalized_matches_loop():
    q, k = _rand(6, 4), _rand(6, 4)
    ref = ref_info_nce(q, k, 2.0, normalize=False)
    torch.testing.assert_close(AF.info_nce(q, k, 2.0, normalize=False, reduction="none"), ref)
    torch.testing.assert_close(AF.info_nce(q, k, 2.0, normalize=False, chunk_size=2, reduction="none"), ref)


def test_info_nce_pml_ntxent_one_direction():
    q, k = _rand(10, 8), _rand(10, 8)
    pml = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(temperature=0.2), symmetric=False)
    torch.testing.assert_close(AF.info_nce(q, k, 0.2), pml(q, k))
    torch.testing.assert_close(AF.info_nce(q, k, 0.2, chunk_size=3), pml(q, k))
    # symmetric (CLIP form) = mean of PML's one-direction loss both ways
    both = 0.5 * (pml(q, k) + pml(k, q))
    torch.testing.assert_close(AF.info_nce(q, k, 0.2, symmetric=True), both)


def test_pml_symmetric_ntxent_is_simclr_not_clip_form():
    q, k = _rand(10, 8), _rand(10, 8)
    pml = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(temperature=0.2))  # symmetric=True
    simclr = AF.supcon_loss(torch.stack([q, k], 1), None, temperature=0.2)
    torch.testing.assert_close(simclr, pml(q, k))
    assert not torch.allclose(AF.info_nce(q, k, 0.2, symmetric=True), pml(q, k))


def _ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR eq. 1 with loops: 2N anchors, positive = the other view, denominator = the other 2N-1."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    out = []
    for i in range(n2):
        p = (i + n2 // 2) % n2
        denom = sum(math.exp(_cos(z[i], z[a]) / tau) for a in range(n2) if a != i)
        out.append(-math.log(math.exp(_cos(z[i], z[p]) / tau) / denom))
    return torch.tensor(out, dtype=D64)


def test_nt_xent_matches_loop_and_pml_over_2n_views():
    z1, z2 = _rand(7, 5), _rand(7, 5)
    ref = _ref_nt_xent(z1, z2, 0.3)
    torch.testing.assert_close(AF.nt_xent_loss(z1, z2, 0.3, reduction="none"), ref)
    torch.testing.assert_close(AF.nt_xent_loss(z1, z2, 0.3), ref.mean())
    torch.testing.assert_close(AF.nt_xent_loss(z1, z2, 0.3, reduction="sum"), ref.sum())
    torch.testing.assert_close(AF.nt_xent_loss(z1, z2, 0.3, chunk_size=3), ref.mean())
    # peer: PML's NT-Xent on the 2N concatenated views (SelfSupervisedLoss's default symmetric=True)
    pml = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(temperature=0.3))
    torch.testing.assert_close(AF.nt_xent_loss(z1, z2, 0.3), pml(z1, z2))
    labels = torch.arange(7).repeat(2)
    torch.testing.assert_close(
        AF.nt_xent_loss(z1, z2, 0.3), pml_losses.NTXentLoss(temperature=0.3)(torch.cat([z1, z2]), labels)
    )
    # and it is not the one-way or CLIP-form InfoNCE (no same-view negatives there)
    assert not torch.allclose(AF.info_nce(z1, z2, 0.3), pml(z1, z2))


def test_ntxent_module_is_simclr():
    z1, z2 = torch.randn(9, 6), torch.randn(9, 6)
    m = losses.build("ntxent", temperature=0.5)
    pml = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(temperature=0.5))
    torch.testing.assert_close(m(z1, z2), pml(z1, z2))
    assert "temperature=0.5" in repr(m)
    with pytest.raises(ValueError, match="view1 and view2"):
        m(z1, torch.randn(8, 6))
    with pytest.raises(ValueError, match="view2"):
        AF.nt_xent_loss(z1, torch.randn(9))
    with pytest.raises(ValueError, match="temperature"):
        losses.NTXentLoss(temperature=0.0)


def test_nt_xent_half_precision_and_single_pair():
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    got = AF.nt_xent_loss(z1.to(torch.bfloat16), z2.to(torch.bfloat16), 0.5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), AF.nt_xent_loss(z1, z2, 0.5), atol=0.05, rtol=0.02)
    one = AF.nt_xent_loss(torch.randn(1, 3), torch.randn(1, 3))  # two rows, each the other's positive
    assert one.item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_zero_vectors_are_finite():
    q, k = _rand(5, 4), _rand(5, 4)
    q[0] = 0
    k[2] = 0
    q.requires_grad_()
    loss = AF.info_nce(q, k, chunk_size=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_info_nce_half_precision(dtype):
    q, k = torch.randn(16, 8), torch.randn(16, 8)
    ref = AF.info_nce(q, k, 0.1, symmetric=True)
    for chunk in (None, 5):
        got = AF.info_nce(q.to(dtype), k.to(dtype), 0.1, symmetric=True, chunk_size=chunk)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), ref, atol=0.05, rtol=0.02)


def test_autocast_region_still_computes_in_float32():
    q, k = torch.randn(12, 8), torch.randn(12, 8)
    for chunk in (None, 5):
        want = AF.info_nce(q, k, 0.1, symmetric=True, chunk_size=chunk)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = AF.info_nce(q, k, 0.1, symmetric=True, chunk_size=chunk)
            sig = AF.clip_loss(F.normalize(q, dim=1), F.normalize(k, dim=1), 10.0, -10.0, chunk_size=chunk)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(
            sig, AF.clip_loss(F.normalize(q, dim=1), F.normalize(k, dim=1), 10.0, -10.0, chunk_size=chunk)
        )


def test_info_nce_validation():
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="key"):
        AF.info_nce(q, torch.randn(4, 5))
    with pytest.raises(ValueError, match="key"):
        AF.info_nce(q, torch.randn(3, 3))
    with pytest.raises(ValueError, match="negatives"):
        AF.info_nce(q, k, negatives=torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        AF.info_nce(q, k, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        AF.info_nce(q, k, chunk_size=0)
    with pytest.raises(ValueError, match="reduction"):
        AF.info_nce(q, k, reduction="max")
    with pytest.raises(ValueError, match="target_offset"):
        AF.info_nce(q, k, target_offset=-1)
    with pytest.raises(ValueError, match="target_offset"):
        AF.info_nce(q, torch.randn(6, 3), target_offset=3)
    with pytest.raises(ValueError, match="query"):
        AF.info_nce(torch.randn(4), k)
    with pytest.raises(ValueError, match="non-finite"):
        AF.info_nce(q, torch.full((4, 3), float("nan")))


# ----------------------------------------------------------------------------------------------
# clip_loss
# ----------------------------------------------------------------------------------------------
def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(_rand(*shape), dim=-1)


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 8])
def test_clip_softmax_matches_loop(chunk_size):
    a, b = _unit(8, 5), _unit(8, 5)
    ref = ref_clip_softmax(a, b, 7.5)
    torch.testing.assert_close(AF.clip_loss(a, b, 7.5, chunk_size=chunk_size), torch.tensor(ref, dtype=D64))
    scale = torch.tensor(7.5, dtype=D64)
    torch.testing.assert_close(AF.clip_loss(a, b, scale, chunk_size=chunk_size), torch.tensor(ref, dtype=D64))


def test_clip_does_not_renormalise():
    a, b = _unit(6, 4), _unit(6, 4)
    assert not torch.allclose(AF.clip_loss(2 * a, b, 5.0), AF.clip_loss(a, b, 5.0))


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 8])
def test_clip_sigmoid_matches_loop(chunk_size):
    a, b = _unit(8, 5), _unit(8, 5)
    ref = ref_siglip(a, b, 10.0, -3.0)
    got = AF.clip_loss(a, b, 10.0, logit_bias=-3.0, chunk_size=chunk_size)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=D64))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_clip_sigmoid_target_offset_matches_loop(chunk_size):
    a, b = _unit(3, 4), _unit(9, 4)
    for offset in (0, 3, 6):
        ref = ref_siglip(a, b, 4.0, -1.0, offset)
        got = AF.clip_loss(a, b, 4.0, -1.0, chunk_size=chunk_size, target_offset=offset)
        torch.testing.assert_close(got, torch.tensor(ref, dtype=D64))


def test_clip_softmax_target_offset_is_info_nce_form():
    a, b = _unit(3, 4), _unit(9, 4)
    want = AF.info_nce(a, b, temperature=0.25, symmetric=True, normalize=False, target_offset=3)
    for chunk in (None, 2):
        torch.testing.assert_close(AF.clip_loss(a, b, 4.0, chunk_size=chunk, target_offset=3), want)


def test_clip_sigmoid_extreme_logits_are_exact():
    # scale 100: softplus(−z·L) is evaluated without the softplus(L) − L cancellation
    a = _unit(4, 3)
    got = AF.clip_loss(a, a, 100.0, logit_bias=0.0, chunk_size=2)
    torch.testing.assert_close(got, torch.tensor(ref_siglip(a, a, 100.0, 0.0), dtype=D64))


def test_clip_validation():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="logit_scale"):
        AF.clip_loss(a, a, torch.ones(2))
    with pytest.raises(ValueError, match="logit_scale"):
        AF.clip_loss(a, a, float("inf"))
    with pytest.raises(ValueError, match="logit_bias"):
        AF.clip_loss(a, a, 1.0, logit_bias="x")
    with pytest.raises(ValueError, match="b"):
        AF.clip_loss(a, torch.randn(4, 2), 1.0)
    with pytest.raises(ValueError, match="target_offset"):
        AF.clip_loss(a, a, 1.0, target_offset=1)


# ----------------------------------------------------------------------------------------------
# tiled == plain (values and gradients, logit_scale / bias included)
# ----------------------------------------------------------------------------------------------
def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 16, 64])
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_tiled_equals_plain(chunk_size, symmetric):
    q, k, neg = _rand(13, 6), _rand(16, 6), _rand(5, 6)
    w = _rand(13)

    def fn(chunk):
        return lambda q, k, neg: (
            AF.info_nce(q, k, 0.2, neg, symmetric, chunk_size=chunk, reduction="none", target_offset=2) * w
        ).sum()

    v0, g0 = _grads(fn(None), q, k, neg)
    v1, g1 = _grads(fn(chunk_size), q, k, neg)
    torch.testing.assert_close(v1, v0)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 10, 32])
@pytest.mark.parametrize("bias", [None, -2.0])
def test_clip_tiled_equals_plain_with_scale_grad(chunk_size, bias):
    a, b = _unit(10, 4), _unit(10, 4)
    scale = torch.tensor(6.0, dtype=D64)
    bias_t = None if bias is None else torch.tensor(bias, dtype=D64)
    extra = (scale,) if bias_t is None else (scale, bias_t)

    def fn(chunk):
        def f(a, b, s, *bb):
            return AF.clip_loss(a, b, s, bb[0] if bb else None, chunk_size=chunk)

        return f

    v0, g0 = _grads(fn(None), a, b, *extra)
    v1, g1 = _grads(fn(chunk_size), a, b, *extra)
    torch.testing.assert_close(v1, v0)
    assert len(g1) == len(extra) + 2
    for x, y in zip(g1, g0, strict=True):
        torch.testing.assert_close(x, y)
    assert g1[2].abs() > 0  # the temperature is learned through the tiled path


def test_default_path_tiles_above_threshold(monkeypatch):
    q, k = _rand(9, 4), _rand(9, 4)
    plain = AF.info_nce(q, k, symmetric=True)
    calls = []
    original = C._TiledSoftmaxCE.apply
    monkeypatch.setattr(C._TiledSoftmaxCE, "apply", lambda *args: calls.append(args[4]) or original(*args))
    AF.info_nce(q, k, symmetric=True)
    assert calls == []  # small: plain
    monkeypatch.setitem(C._PLAIN_MAX_BYTES, "cpu", 0)
    monkeypatch.setitem(C._TILE_BYTES, "cpu", 4 * 9 * 8)  # blocks of 4 keys × 9 float64 rows
    monkeypatch.setattr(C, "_MIN_BLOCK", 1)
    tiled = AF.info_nce(q, k, symmetric=True)
    assert calls == [4]
    torch.testing.assert_close(tiled, plain)


def test_tiled_accepts_non_contiguous_inputs():
    q, k = _rand(4, 6).T, _rand(4, 6).T  # (6, 4) column-major views
    assert not q.is_contiguous() and not k.is_contiguous()

    def fn(chunk):
        return lambda q, k: AF.info_nce(q, k, 0.3, symmetric=True, chunk_size=chunk)

    v0, g0 = _grads(fn(None), q.contiguous(), k.contiguous())
    v1, g1 = _grads(fn(4), q, k)  # clone() keeps the strides
    torch.testing.assert_close(v1, v0)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b)


def test_tiled_saves_only_inputs_and_row_statistics():
    """Memory: the tiled Function keeps q, k, the scale and O(n) log-sum-exps for backward."""
    n, m, d = 64, 80, 8
    q = _rand(n, d).requires_grad_()
    k = _rand(m, d).requires_grad_()
    scale = torch.tensor(3.0, dtype=D64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = C._softmax_ce(q, k, scale, 0, True, chunk_size=16).mean()
    assert sum(saved) <= (n + m) * d + 2 * n + 1
    loss.backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        C._sigmoid_rows(q, k, scale, torch.tensor(0.5, dtype=D64), 0, chunk_size=16).mean()
    assert sum(saved) <= (n + m) * d + 2


# ----------------------------------------------------------------------------------------------
# gradcheck of the autograd Functions
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [1, 2, 3, 5, 11])
@pytest.mark.parametrize(
    ("n", "m", "offset", "symmetric"), [(7, 7, 0, True), (4, 11, 3, True), (5, 9, 4, False)]
)
def test_gradcheck_tiled_softmax(block, n, m, offset, symmetric):
    q = _rand(n, 3).requires_grad_()
    k = _rand(m, 3).requires_grad_()
    s = torch.tensor(1.3, dtype=D64, requires_grad=True)
    fn = lambda q, k, s: C._TiledSoftmaxCE.apply(q, k, s, offset, block, symmetric)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, s))


@pytest.mark.parametrize("block", [1, 2, 3, 5, 11])
@pytest.mark.parametrize(("n", "m", "offset"), [(7, 7, 0), (4, 11, 3)])
def test_gradcheck_tiled_sigmoid(block, n, m, offset):
    q = _rand(n, 3).requires_grad_()
    k = _rand(m, 3).requires_grad_()
    s = torch.tensor(1.3, dtype=D64, requires_grad=True)
    b = torch.tensor(-0.4, dtype=D64, requires_grad=True)
    fn = lambda q, k, s, b: C._TiledSigmoid.apply(q, k, s, b, offset, block)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, s, b))


def test_gradcheck_public_tiled():
    q, k, neg = (_rand(5, 3).requires_grad_() for _ in range(3))
    s = torch.tensor(2.0, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, n: AF.info_nce(q, k, 0.5, n, symmetric=True, chunk_size=2, reduction="none"), (q, k, neg)
    )
    assert torch.autograd.gradcheck(lambda a, b, s: AF.clip_loss(a, b, s, -1.0 * s, chunk_size=3), (q, k, s))


# ----------------------------------------------------------------------------------------------
# supcon
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize(
    ("shape", "labels"),
    [
        ((8, 5), torch.tensor([0, 1, 0, 2, 1, 0, 3, 2])),  # 3 has no positive: excluded
        ((5, 3, 4), torch.tensor([0, 1, 0, 2, 1])),
        ((5, 2, 4), None),  # SimCLR
        ((4, 3, 4), None),
    ],
)
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_supcon_matches_loop(variant, shape, labels, chunk_size):
    f = _rand(*shape)
    per = ref_supcon(f, labels, 0.3, variant)
    got = AF.supcon_loss(f, labels, 0.3, variant, chunk_size=chunk_size)
    torch.testing.assert_close(got, torch.tensor(_mean_valid(per), dtype=D64))
    none = AF.supcon_loss(f, labels, 0.3, variant, reduction="none", chunk_size=chunk_size)
    assert none.shape == shape[:-1]
    want = torch.tensor([0.0 if x is None else x for x in per], dtype=D64).reshape(shape[:-1])
    torch.testing.assert_close(none, want)
    total = AF.supcon_loss(f, labels, 0.3, variant, reduction="sum", chunk_size=chunk_size)
    torch.testing.assert_close(total, want.sum())


def test_supcon_in_le_out():
    f, y = _rand(12, 2, 6), torch.randint(0, 3, (12,))
    assert AF.supcon_loss(f, y, variant="in") <= AF.supcon_loss(f, y, variant="out")


@pytest.mark.parametrize("views", [1, 2, 3])
def test_supcon_pml_oracle(views):
    f = _rand(10, views, 6)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 2, 4])
    pml = pml_losses.SupConLoss(temperature=0.2)
    want = pml(f.reshape(10 * views, 6), y.repeat_interleave(views))
    torch.testing.assert_close(AF.supcon_loss(f if views > 1 else f[:, 0], y, 0.2), want)


def test_supcon_blocked_grads_equal_plain():
    f, y = _rand(9, 2, 5), torch.randint(0, 3, (9,))
    for variant in ("out", "in"):
        v0, g0 = _grads(lambda f, variant=variant: AF.supcon_loss(f, y, 0.2, variant), f)
        v1, g1 = _grads(lambda f, variant=variant: AF.supcon_loss(f, y, 0.2, variant, chunk_size=4), f)
        torch.testing.assert_close(v1, v0)
        torch.testing.assert_close(g1[0], g0[0])


def test_supcon_tiled_log_sum_exp_far_below_the_shift_float32():
    """The tiled forward shifts logits by the largest possible one (‖a‖·‖c‖/τ); an anchor whose logits
    all lie ~200 below it (its sum underflows in float32) is recomputed exactly, not reported as inf."""
    g = torch.Generator().manual_seed(0)
    f = 0.3 * torch.randn(6, 8, generator=g, dtype=D64)
    f[:, 0] = -1.0
    f[0] = 0.0
    f[0, 0] = 1.0  # anchor 0 has cosine < −0.5 with every other row, its positive (row 2) included
    f = torch.nn.functional.normalize(f, dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    per = ref_supcon(f, labels, 0.01, "out")
    want = torch.tensor([0.0 if x is None else x for x in per], dtype=D64)
    got = AF.supcon_loss(f.float(), labels, 0.01, "out", reduction="none", chunk_size=2)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_tiled_on_two_worker_threads_equals_plain(variant):
    """With two threads the tiled kernel's blocks run on two worker threads (one torch thread each,
    separate ∂/∂C accumulators): loss and gradients equal the plain form, the thread setting is
    restored, and gradcheck holds in float64."""
    f, y = _rand(11, 2, 5), torch.randint(0, 3, (11,))
    v0, g0 = _grads(lambda f: AF.supcon_loss(f, y, 0.2, variant), f)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        v1, g1 = _grads(lambda f: AF.supcon_loss(f, y, 0.2, variant, chunk_size=3), f)
        assert torch.get_num_threads() == 2
        x = _rand(7, 2, 4).requires_grad_()
        labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])
        assert torch.autograd.gradcheck(
            lambda x: AF.supcon_loss(x, labels, 0.5, variant, reduction="none", chunk_size=2), (x,)
        )
    finally:
        torch.set_num_threads(saved)
    torch.testing.assert_close(v1, v0)
    torch.testing.assert_close(g1[0], g0[0])


def test_supcon_no_positive_is_zero_with_warning():
    f = _rand(6, 4).requires_grad_()
    with pytest.warns(UserWarning, match="positive"):
        loss = AF.supcon_loss(f, torch.arange(6))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))
    with pytest.warns(UserWarning, match="positive"):
        loss = AF.supcon_loss(f, None, variant="in")  # one view, no labels
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_supcon_grads_finite_with_excluded_anchors():
    f = _rand(6, 4).requires_grad_()
    for variant in ("out", "in"):
        AF.supcon_loss(f, torch.tensor([0, 0, 1, 2, 3, 4]), variant=variant).backward()
        assert torch.isfinite(f.grad).all()
        f.grad = None


def test_supcon_validation():
    f = torch.randn(4, 3)
    with pytest.raises(ValueError, match="labels"):
        AF.supcon_loss(f, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="labels"):
        AF.supcon_loss(f, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="variant"):
        AF.supcon_loss(f, torch.tensor([0, 1, 0, 1]), variant="mid")
    with pytest.raises(ValueError, match="features"):
        AF.supcon_loss(torch.randn(4), torch.tensor([0, 1, 0, 1]))


# ----------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------
def test_registry_names():
    assert isinstance(losses.build("info_nce"), losses.InfoNCELoss)
    assert type(losses.build("NTXent", temperature=0.5)) is losses.NTXentLoss
    assert type(losses.build("nt_xent")) is losses.NTXentLoss
    assert isinstance(losses.build("infonce"), losses.InfoNCELoss)
    assert type(losses.build("clip")) is losses.CLIPLoss
    assert isinstance(losses.build("supcon"), losses.SupConLoss)
    siglip = losses.build("siglip")
    assert isinstance(siglip, losses.CLIPLoss) and siglip.sigmoid
    torch.testing.assert_close(siglip.logit_scale, torch.tensor(10.0))
    torch.testing.assert_close(siglip.logit_bias.detach(), torch.tensor(-10.0))


def test_info_nce_module_matches_functional():
    q, k, neg = torch.randn(6, 4), torch.randn(6, 4), torch.randn(3, 4)
    m = losses.InfoNCELoss(temperature=0.2, symmetric=True, chunk_size=4)
    torch.testing.assert_close(m(q, k, neg), AF.info_nce(q, k, 0.2, neg, symmetric=True))


def test_clip_module_normalises_and_learns_temperature():
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    crit = losses.CLIPLoss()
    torch.testing.assert_close(crit.logit_scale, torch.tensor(1 / 0.07))
    loss = crit(a, b)
    torch.testing.assert_close(loss, AF.clip_loss(F.normalize(a, dim=1), F.normalize(b, dim=1), 1 / 0.07))
    loss.backward()
    assert crit.log_scale.grad is not None and crit.log_scale.grad.abs() > 0
    assert crit.logit_bias is None


def test_clip_module_clamps_scale_at_100_and_still_gets_gradient():
    crit = losses.CLIPLoss(chunk_size=3)
    with torch.no_grad():
        crit.log_scale.fill_(10.0)
    out = crit(torch.randn(8, 5), torch.randn(8, 5).requires_grad_())
    torch.testing.assert_close(crit.log_scale.detach(), torch.tensor(math.log(100.0)))
    torch.testing.assert_close(crit.logit_scale, torch.tensor(100.0))
    out.backward()
    assert crit.log_scale.grad is not None and crit.log_scale.grad.abs() > 0


def test_clip_module_output_dict_and_siglip_bias_grad():
    crit = losses.CLIPLoss(sigmoid=True, output_dict=True, chunk_size=2)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    out = crit(a, b)
    assert set(out) == {"loss", "logit_scale", "logit_bias"}
    want = AF.clip_loss(F.normalize(a, dim=1), F.normalize(b, dim=1), 10.0, -10.0)
    torch.testing.assert_close(out["loss"], want)
    out["loss"].backward()
    assert crit.log_scale.grad.abs() > 0 and crit.logit_bias.grad.abs() > 0


def test_clip_module_frozen_temperature():
    crit = losses.CLIPLoss(init_temperature=0.05, learn_temperature=False)
    assert not crit.log_scale.requires_grad
    a = torch.randn(4, 3, requires_grad=True)
    crit(a, torch.randn(4, 3)).backward()
    assert crit.log_scale.grad is None and a.grad is not None


def test_supcon_module_matches_functional():
    f, y = torch.randn(6, 2, 4), torch.tensor([0, 1, 0, 1, 2, 2])
    torch.testing.assert_close(
        losses.SupConLoss(0.2, "in")(f, y), AF.supcon_loss(f, y, temperature=0.2, variant="in")
    )


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_tiled_kernel_gradcheck_float64(variant):
    """The row-blocked kernel's closed-form backward against finite differences (float64), for the
    whole batch and for a rank's slice of anchors against all rows (distributed local loss)."""
    from alignkit.functional.contrastive import _supcon_rows

    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1])  # label 3 has no positive
    f = torch.randn(9, 2, 4, dtype=D64, requires_grad=True)
    torch.autograd.gradcheck(lambda f: AF.supcon_loss(f, y, 0.3, variant, chunk_size=4), (f,))
    torch.autograd.gradcheck(
        lambda f: AF.supcon_loss(f, y, 0.3, variant, reduction="none", chunk_size=5), (f,)
    )
    flat_labels = y.repeat_interleave(2)

    def local(f):
        flat = torch.nn.functional.normalize(f.reshape(18, 4), dim=1)
        return _supcon_rows(flat[6:12], flat_labels[6:12], flat, flat_labels, 6, 0.3, variant, chunk_size=4)

    def local_plain(f):
        flat = torch.nn.functional.normalize(f.reshape(18, 4), dim=1)
        return _supcon_rows(flat[6:12], flat_labels[6:12], flat, flat_labels, 6, 0.3, variant)

    torch.autograd.gradcheck(local, (f,))
    v0, g0 = _grads(lambda f: local_plain(f).sum(), f)
    v1, g1 = _grads(lambda f: local(f).sum(), f)
    torch.testing.assert_close(v1, v0)
    torch.testing.assert_close(g1[0], g0[0])
