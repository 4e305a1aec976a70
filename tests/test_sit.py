"""SiT, flow matching, the sampler, REPA on SiT, FD / precision-recall and the generation judge."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import alignkit.functional as AF
from alignkit.metrics.generation import GenerationJudge, random_shift
from alignkit.models import REPARegularizer, SiT, flow_matching_loss, sample_flow
from alignkit.models.generative import DigitVAE, PatchEncoder, augment_digits, train_vae


def _fd_reference(x: np.ndarray, y: np.ndarray) -> float:
    """FID's formula as pytorch-fid writes it: scipy.linalg.sqrtm of the (non-symmetric) product."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,m,d", [(40, 30, 5), (12, 50, 3), (200, 150, 8)])
def test_frechet_distance_matches_scipy_sqrtm(n: int, m: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    y = rng.normal(size=(m, d)) * 1.5 + 0.3
    ours = AF.frechet_distance(torch.from_numpy(x), torch.from_numpy(y))
    assert ours.dtype == torch.float64
    assert float(ours) == pytest.approx(_fd_reference(x, y), rel=1e-8, abs=1e-9)
    # float32 input is computed in float64 too
    single = AF.frechet_distance(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert float(single) == pytest.approx(_fd_reference(x, y), rel=1e-5)


def test_frechet_distance_properties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g, dtype=torch.float64)
    assert float(AF.frechet_distance(x, x)) == pytest.approx(0.0, abs=1e-9)
    y = torch.randn(80, 6, generator=g, dtype=torch.float64) + 2
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    rotated = AF.frechet_distance(x @ q, y @ q)
    assert float(rotated) == pytest.approx(float(AF.frechet_distance(x, y)), rel=1e-9)
    # rank-deficient covariances (fewer rows than columns) stay finite and non-negative
    assert float(AF.frechet_distance(x[:3], y[:4])) >= -1e-9
    with pytest.raises(ValueError, match="x"):
        AF.frechet_distance(x[:1], y)
    with pytest.raises(ValueError, match="width"):
        AF.frechet_distance(x, y[:, :3])


def _pr_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(z: np.ndarray) -> np.ndarray:
        out = []
        for i in range(len(z)):
            d = sorted(float(np.linalg.norm(z[i] - z[j])) for j in range(len(z)) if j != i)
            out.append(d[k - 1])
        return np.array(out)

    def coverage(points: np.ndarray, centres: np.ndarray, rad: np.ndarray) -> float:
        hits = 0
        for p in points:
            hits += any(np.linalg.norm(p - c) <= r for c, r in zip(centres, rad, strict=True))
        return hits / len(points)

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_manifold_precision_recall_matches_loop(k: int) -> None:
    rng = np.random.default_rng(k)
    real = rng.normal(size=(40, 3))
    fake = rng.normal(size=(30, 3)) * 0.7 + 1.5
    p, r = AF.manifold_precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, chunk_size=7)
    ref_p, ref_r = _pr_reference(real, fake, k)
    assert float(p) == pytest.approx(ref_p) and float(r) == pytest.approx(ref_r)
    assert 0 < ref_p < 1 and 0 < ref_r < 1  # the case is not degenerate
    same = AF.manifold_precision_recall(torch.from_numpy(real), torch.from_numpy(real), k=k)
    assert [float(v) for v in same] == [1.0, 1.0]
    far = AF.manifold_precision_recall(torch.from_numpy(real), torch.from_numpy(real + 100.0), k=k)
    assert [float(v) for v in far] == [0.0, 0.0]
    with pytest.raises(ValueError, match="k"):
        AF.manifold_precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=0)


def test_linear_interpolant_and_flow_matching_loss() -> None:
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0.0, 1.0, 0.25, 0.5])
    x_t, v = AF.linear_interpolant(x, eps, t)
    torch.testing.assert_close(x_t[0], x[0])
    torch.testing.assert_close(x_t[1], eps[1])
    torch.testing.assert_close(x_t[2], 0.75 * x[2] + 0.25 * eps[2])
    torch.testing.assert_close(v, eps - x)
    # finite-difference check that v is dx_t/dt
    h = 1e-3
    x_h, _ = AF.linear_interpolant(x.double(), eps.double(), t.double() + h)
    x_0, _ = AF.linear_interpolant(x.double(), eps.double(), t.double())
    torch.testing.assert_close((x_h - x_0) / h, eps.double() - x.double(), atol=1e-8, rtol=1e-8)
    with pytest.raises(ValueError, match="t must"):
        AF.linear_interpolant(x, eps, t[:2])

    model = SiT(depth=2, width=32, num_heads=2, class_dropout=0.0)
    y = torch.tensor([1, 2, 3, 4])
    loss = flow_matching_loss(model, x, y, t=t, noise=eps)
    expected = ((model(x_t, t, y) - v) ** 2).mean()
    torch.testing.assert_close(loss, expected)


def test_sit_shapes_init_and_bad_input() -> None:
    model = SiT(input_size=8, patch_size=2, width=32, depth=3, num_heads=4)
    assert model.num_tokens == 16 and model.null_class == 10 and SiT.block_name(2) == "blocks.1"
    x = torch.randn(5, 1, 8, 8)
    out = model(x, torch.rand(5), torch.randint(0, 11, (5,)))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero + zero final layer: v = 0 at initialisation
    latent = SiT(input_size=4, patch_size=1, in_channels=4, width=32, depth=1, num_heads=2)
    assert latent(torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([0, 1])).shape == (2, 4, 4, 4)
    with pytest.raises(ValueError, match="x must"):
        model(torch.randn(5, 8, 8), torch.rand(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="y must"):
        model(x, torch.rand(5), torch.full((5,), 11))
    with pytest.raises(ValueError, match="patch_size"):
        SiT(input_size=8, patch_size=3)


def _trained_ish(seed: int = 0, depth: int = 2, class_dropout: float = 0.1) -> SiT:
    torch.manual_seed(seed)
    model = SiT(width=32, depth=depth, num_heads=2, class_dropout=class_dropout)
    with torch.no_grad():  # non-zero gates and output so that the sampler moves
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_sampler_is_deterministic_for_a_seed() -> None:
    model = _trained_ish()
    labels = torch.arange(6)
    a = sample_flow(model, labels, steps=4, method="heun", cfg_scale=2.0, seed=3)
    b = sample_flow(model, labels, steps=4, method="heun", cfg_scale=2.0, seed=3)
    c = sample_flow(model, labels, steps=4, method="heun", cfg_scale=2.0, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert model.training  # the mode is restored


def test_sampler_euler_heun_and_guidance() -> None:
    model = _trained_ish()
    labels = torch.tensor([0, 5])
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # one Euler step by hand: x_0 = x_1 − v(x_1, 1)
    model.eval()
    with torch.no_grad():
        by_hand = noise - model(noise, torch.ones(2), labels)
    torch.testing.assert_close(sample_flow(model, labels, steps=1, method="euler", noise=noise), by_hand)
    with torch.no_grad():
        v1 = model(noise, torch.ones(2), labels)
        v0 = model(noise - v1, torch.zeros(2), labels)
    heun = sample_flow(model, labels, steps=1, method="heun", noise=noise)
    torch.testing.assert_close(heun, noise - 0.5 * (v1 + v0))
    # guidance scale 1 is plain conditional sampling; scale 0 is the null class
    plain = sample_flow(model, labels, steps=3, method="euler", noise=noise)
    guided = sample_flow(model, labels, steps=3, method="euler", cfg_scale=1.0, noise=noise)
    torch.testing.assert_close(guided, plain)
    null = sample_flow(model, torch.full((2,), 10), steps=3, method="euler", noise=noise)
    zero = sample_flow(model, labels, steps=3, method="euler", cfg_scale=0.0, noise=noise)
    torch.testing.assert_close(zero, null)
    with pytest.raises(ValueError, match="method"):
        sample_flow(model, labels, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        sample_flow(model, labels, steps=0)


def test_repa_gradient_reaches_only_blocks_up_to_the_hooked_depth() -> None:
    model = _trained_ish(depth=4, class_dropout=0.0)  # non-zero adaLN gates: every path carries gradient
    depth = 2
    reg = REPARegularizer(model, SiT.block_name(depth), target_dim=24, hidden_dim=48, source_dim=32)
    x = torch.randn(3, 1, 8, 8)
    model(x, torch.rand(3), torch.tensor([0, 1, 2]))
    target = torch.randn(3, 4, 24)  # 2×2 target tokens: resampled to the model's 4×4
    reg.loss(target).backward()

    def touched(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())

    for i, block in enumerate(model.blocks):
        assert touched(block) == (i < depth), i
    assert touched(model.patch_embed) and touched(model.time_embed) and touched(model.label_embed)
    assert not touched(model.final) and not touched(model.final_ada_ln)
    assert touched(reg.projector)
    reg.remove()


def test_adaptive_loss_weight_matches_manual_gradients() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(8, 5)
    out = layer(x)
    main = out.pow(2).mean()
    aux = (out - 1).abs().mean() * 3
    w = AF.adaptive_loss_weight(main, aux, layer.weight, scale=0.1)
    g_main = torch.autograd.grad(main, layer.weight, retain_graph=True)[0]
    g_aux = torch.autograd.grad(aux, layer.weight, retain_graph=True)[0]
    torch.testing.assert_close(w, 0.1 * g_main.norm() / (g_aux.norm() + 1e-4))
    assert not w.requires_grad
    (main + w * aux).backward()  # the graph was retained for the caller
    with pytest.raises(ValueError, match="parameter"):
        AF.adaptive_loss_weight(main, aux, torch.zeros(3))


def test_vae_with_vf_loss_trains_and_hook_is_removed() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 8, 8, generator=g)
    enc = PatchEncoder().eval().requires_grad_(False)
    assert enc.tokens(images).shape == (32, 16, 64)
    vae = DigitVAE(latent_channels=4)
    facts = train_vae(vae, images, target=enc, epochs=2, batch_size=16)
    assert facts["with_vf"] and facts["vf_weight"] > 0 and np.isfinite(facts["rec"])
    assert not vae.to_mean._forward_hooks  # the regulariser's hook was taken off
    views = augment_digits(images, g)
    assert views.shape == images.shape and float(views.min()) >= 0 and float(views.max()) <= 1
    shifted = random_shift(images, 1, g)
    assert shifted.shape == images.shape


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerationJudge, torch.Tensor, torch.Tensor]:
    from alignkit.data.digits import load_digits_captions

    data = load_digits_captions(seed=0)
    images, labels = torch.from_numpy(data.images).float(), torch.from_numpy(data.labels).long()
    tr, te = data.splits["train"], data.splits["test"]
    cache = tmp_path_factory.mktemp("cache")
    args = (images[tr], labels[tr], images[te], labels[te])
    j = GenerationJudge.from_digits(*args, cache_dir=cache, epochs=8)
    # the second construction loads the cached classifier (same weights, same accuracy)
    again = GenerationJudge.from_digits(*args, cache_dir=cache, epochs=8)
    assert again.test_accuracy == j.test_accuracy
    assert list((cache / "digit_judge").glob("*.safetensors"))
    return j, images[tr], labels[tr]


def test_judge_fd_of_train_vs_test_is_near_zero_relative_to_noise(judge) -> None:  # type: ignore[no-untyped-def]
    j, train_x, train_y = judge
    assert j.test_accuracy > 0.9
    real = j.score(train_x[:360], train_y[:360])
    noise = j.score(torch.rand(360, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert real["accuracy"] > 0.9 and noise["accuracy"] is None
    assert real["fd"] < 0.05 * noise["fd"], (real, noise)
    assert real["precision"] > 0.6 and real["recall"] > 0.6
    # k-NN manifolds are inflated by outliers (a known weakness of the metric): noise still lands in
    # some real balls, but covers almost none of the real set
    assert noise["recall"] < 0.3 and real["precision"] > noise["precision"]
    # a SiT at initialisation predicts v = 0: its samples are the initial noise, far from digits
    init = sample_flow(SiT(width=32, depth=1, num_heads=2), train_y[:360], steps=2, method="euler", seed=0)
    assert j.score(init, train_y[:360])["fd"] > 10 * real["fd"]


def test_hidden_equals_the_hooked_block_output() -> None:
    model = _trained_ish(depth=3).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([3, 10])
    reg = REPARegularizer(model, SiT.block_name(2), target_dim=8, hidden_dim=None, source_dim=32)
    model(x, t, y)
    torch.testing.assert_close(model.hidden(x, t, y, 2), reg.tokens())
    reg.remove()
    with pytest.raises(ValueError, match="depth"):
        model.hidden(x, t, y, 4)
