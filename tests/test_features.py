from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from alignkit.nn import FeatureExtractor, reduce_features


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()


class _TupleBlock(nn.Module):
    """Returns (hidden, extra) like a Hugging Face block of older transformers releases."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.proj(x)
        return h, h.sum()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"block1": _TupleBlock(), "block2": _TupleBlock()})
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.encoder["block1"](x)
        h, _ = self.encoder["block2"](h)
        return self.head(h)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_sequential_outputs_match_manual_forward() -> None:
    model = _mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    with FeatureExtractor(model, ["0", "1", "2"]) as extract, torch.no_grad():
        feats = extract(x)
    assert list(feats) == ["0", "1", "2"]
    with torch.no_grad():
        h0 = x @ model[0].weight.T + model[0].bias
        h1 = h0.clamp_min(0)
        h2 = h1 @ model[2].weight.T + model[2].bias
    torch.testing.assert_close(feats["0"], h0)
    torch.testing.assert_close(feats["1"], h1)
    torch.testing.assert_close(feats["2"], h2)


def test_hooks_removed_on_exit_and_by_remove() -> None:
    model = _mlp()
    assert _hook_count(model) == 0
    with FeatureExtractor(model, ["0", "2"]) as extract:
        assert _hook_count(model) == 2
        extract(torch.randn(2, 5, dtype=torch.float64))
    assert _hook_count(model) == 0
    extractor = FeatureExtractor(model, ["1"])
    assert _hook_count(model) == 1
    extractor.remove()
    extractor.remove()  # idempotent
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="removed"):
        extractor(torch.randn(2, 5, dtype=torch.float64))


def test_hooks_removed_when_the_body_raises() -> None:
    model = _mlp()
    with pytest.raises(RuntimeError, match="boom"), FeatureExtractor(model, ["0"]):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_unknown_layer_lists_close_matches() -> None:
    model = _Net()
    with pytest.raises(ValueError, match=r"no sub-module 'encoder\.blok1'.*'encoder\.block1'"):
        FeatureExtractor(model, ["encoder.blok1"])
    with pytest.raises(ValueError, match="layers"):
        FeatureExtractor(model, [])
    with pytest.raises(ValueError, match="layers"):
        FeatureExtractor(model, "head")  # a bare string is not a list of names
    with pytest.raises(ValueError, match="repeat"):
        FeatureExtractor(model, ["head", "head"])
    with pytest.raises(ValueError, match="flatten"):
        FeatureExtractor(model, ["head"], flatten="max")
    with pytest.raises(ValueError, match="model"):
        FeatureExtractor(object(), ["head"])  # type: ignore[arg-type]
    assert _hook_count(model) == 0


def test_tuple_outputs_capture_first_element() -> None:
    model = _Net()
    x = torch.randn(3, 4)
    with FeatureExtractor(model, ["encoder.block1", "encoder.block2", "head"]) as extract, torch.no_grad():
        feats = extract(x)
        h1 = model.encoder["block1"].proj(x)
        h2 = model.encoder["block2"].proj(h1)
    torch.testing.assert_close(feats["encoder.block1"], h1)
    torch.testing.assert_close(feats["encoder.block2"], h2)
    torch.testing.assert_close(feats["head"], model.head(h2).detach())


def test_multihead_attention_tuple_output() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: Tensor) -> Tensor:
            out, _ = self.attn(x, x, x)
            return out

    model = Wrapper().eval()
    x = torch.randn(2, 5, 8)
    with FeatureExtractor(model, ["attn"], flatten="none") as extract, torch.no_grad():
        feats = extract(x)
        expected, _ = model.attn(x, x, x)
    torch.testing.assert_close(feats["attn"], expected)


def test_layer_that_does_not_run_is_an_error() -> None:
    model = _Net()
    with FeatureExtractor(model, ["unused"]) as extract, pytest.raises(ValueError, match="did not run"):
        extract(torch.randn(2, 4))


def test_module_called_twice_keeps_last_output() -> None:
    lin = nn.Linear(3, 3).double()

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(self.lin(x))

    x = torch.randn(2, 3, dtype=torch.float64)
    with FeatureExtractor(Twice(), ["lin"]) as extract, torch.no_grad():
        out = extract(x)["lin"]
        torch.testing.assert_close(out, lin(lin(x)))


def test_gradients_flow_unless_detached() -> None:
    model = _mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    with FeatureExtractor(model, ["1"]) as extract:
        feats = extract(x)["1"]
        assert feats.requires_grad
        feats.sum().backward()
    assert model[0].weight.grad is not None and bool(model[0].weight.grad.abs().sum() > 0)
    with FeatureExtractor(model, ["1"], detach=True) as extract:
        assert not extract(x)["1"].requires_grad


def _masked_mean_loop(h: Tensor, mask: Tensor) -> Tensor:
    out = torch.zeros(h.shape[0], h.shape[2], dtype=torch.float64)
    for b in range(h.shape[0]):
        count = 0
        for t in range(h.shape[1]):
            if mask[b, t]:
                out[b] += h[b, t].double()
                count += 1
        if count:
            out[b] /= count
    return out


def test_transformer_token_reductions_with_mask() -> None:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.long)
    pad = mask == 0
    with torch.no_grad():
        raw = FeatureExtractor(model, ["layers.0", "layers.1"], flatten="none")
        tokens = raw(x, src_key_padding_mask=pad)
        raw.remove()
        assert tokens["layers.1"].shape == (3, 5, 8)
        for flatten in ("mean", "cls", "flatten"):
            with FeatureExtractor(model, ["layers.0", "layers.1"], flatten=flatten) as extract:
                feats = extract(x, src_key_padding_mask=pad, mask=mask)
            for name, h in tokens.items():
                if flatten == "mean":
                    expected = _masked_mean_loop(h, mask)
                elif flatten == "cls":
                    expected = h[:, 0]
                else:
                    expected = torch.stack(
                        [torch.cat([h[b, t] * float(mask[b, t]) for t in range(5)]) for b in range(3)]
                    )
                assert feats[name].shape == expected.shape
                torch.testing.assert_close(feats[name], expected)
    # without a mask, "mean" averages every token
    plain = reduce_features(tokens["layers.0"], "mean")
    torch.testing.assert_close(
        plain, _masked_mean_loop(tokens["layers.0"], torch.ones(3, 5, dtype=torch.bool))
    )


def test_spatial_reductions() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()).double()
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        h = model(x)
        with FeatureExtractor(model, ["1"]) as extract:
            mean = extract(x)["1"]
        with FeatureExtractor(model, ["1"], flatten="flatten") as extract:
            flat = extract(x)["1"]
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            expected[b, c] = sum(float(h[b, c, i, j]) for i in range(4) for j in range(5)) / 20
    torch.testing.assert_close(mean, expected)
    assert flat.shape == (2, 3 * 4 * 5)
    torch.testing.assert_close(flat[1, 20:40], h[1, 1].reshape(-1))
    with FeatureExtractor(model, ["1"], flatten="cls") as extract, pytest.raises(ValueError, match="spatial"):
        extract(x)


def test_reduce_features_validation_and_edge_cases() -> None:
    h = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(2, 4\)"):
        reduce_features(h, "mean", mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="flatten"):
        reduce_features(h, "sum")
    with pytest.raises(ValueError, match="features"):
        reduce_features([1, 2], "mean")  # type: ignore[arg-type]
    # a row with every token masked out gives a zero vector, not NaN
    out = reduce_features(h, "mean", mask=torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]]))
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(3))
    torch.testing.assert_close(out[1], h[1, :2].mean(0))
    # (B,) becomes (B, 1); (B, d) is unchanged, and the mask is ignored for it
    assert reduce_features(torch.arange(3.0), "mean").shape == (3, 1)
    flat = torch.randn(3, 2)
    assert reduce_features(flat, "mean", mask=torch.ones(3, 7)) is flat


@pytest.mark.parametrize("batch", [1, 2])
def test_batch_of_one_and_two(batch: int) -> None:
    model = _mlp()
    with FeatureExtractor(model, ["2"]) as extract, torch.no_grad():
        out = extract(torch.randn(batch, 5, dtype=torch.float64))["2"]
    assert out.shape == (batch, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_reduction_keeps_dtype(dtype: torch.dtype) -> None:
    h = torch.randn(3, 6, 4)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    ref = reduce_features(h, "mean", mask=mask)
    out = reduce_features(h.to(dtype), "mean", mask=mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_repr_mentions_layers_and_state() -> None:
    extractor = FeatureExtractor(_mlp(), ["0"])
    assert "layers=['0']" in repr(extractor) and "active" in repr(extractor)
    extractor.remove()
    assert "removed" in repr(extractor)
