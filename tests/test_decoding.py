"""Decoding blocks: CapDec noise, DeCap memory projection, nearest-candidate choice, the causal decoder,
greedy and beam search (against exhaustive search), the prefix captioner and CoCa."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import alignkit.functional as AF
from alignkit.models import CoCa, PrefixCaptioner
from alignkit.nn import CausalDecoder, DecoderCache, beam_search, caption_loss, greedy_search

# --------------------------------------------------------------------------------------------------
# functional


def test_noise_injection_statistics_and_gradient() -> None:
    x = torch.randn(4000, 64, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    out = AF.noise_injection(x, 0.016, generator=g)
    base = F.normalize(x, dim=-1)
    noise = (out - base).detach()
    assert noise.mean().abs() < 3e-3
    assert noise.var().item() == pytest.approx(0.016, rel=0.03)
    # the same generator state gives the same noise; the noise is a constant for autograd
    again = AF.noise_injection(x, 0.016, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    (out * base.detach()).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    (base * base.detach()).sum().backward()
    assert torch.allclose(grad, x.grad)
    assert torch.allclose(AF.noise_injection(x, 0.0), base)
    assert torch.allclose(AF.noise_injection(x, 0.0, normalize=False), x)
    assert AF.noise_injection(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="variance must be a finite number >= 0"):
        AF.noise_injection(x, -1.0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\)"):
        AF.noise_injection(torch.randn(3))


def _projection_reference(query: torch.Tensor, memory: torch.Tensor, tau: float) -> torch.Tensor:
    out = torch.zeros(query.shape, dtype=torch.float64)
    mem = [m.double() / m.double().norm() for m in memory]
    for i, q in enumerate(query.double()):
        q = q / q.norm()
        logits = [float(q @ m) / tau for m in mem]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = sum(weights)
        mix = sum(w / total * m for w, m in zip(weights, mem, strict=True))
        out[i] = mix / mix.norm()
    return out


def test_memory_projection_matches_loop_and_limits() -> None:
    query, memory = torch.randn(7, 16), torch.randn(30, 16)
    for tau in (0.01, 0.1, 1.0):
        got = AF.memory_projection(query, memory, tau)
        assert torch.allclose(got.double(), _projection_reference(query, memory, tau), atol=1e-5)
        assert torch.allclose(got.norm(dim=1), torch.ones(7), atol=1e-5)
    nearest = (F.normalize(query, dim=1) @ F.normalize(memory, dim=1).T).argmax(1)
    cold = AF.memory_projection(query, memory, 1e-6)
    assert torch.allclose(cold, F.normalize(memory[nearest], dim=1), atol=1e-5)
    hot = AF.memory_projection(query, memory, 1e6)
    mean = F.normalize(F.normalize(memory, dim=1).mean(0), dim=0)
    assert torch.allclose(hot, mean.expand(7, -1), atol=1e-4)
    with pytest.raises(ValueError, match="same width d"):
        AF.memory_projection(query, torch.randn(5, 8))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        AF.memory_projection(query, memory, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        AF.memory_projection(query, memory.masked_fill(memory > 2, float("nan")))


def test_nearest_candidates_matches_loop() -> None:
    query, cand = torch.randn(6, 8), torch.randn(20, 8)
    got = AF.nearest_candidates(query, cand)
    for i in range(6):
        sims = [float(F.cosine_similarity(query[i], c, dim=0)) for c in cand]
        assert int(got[i]) == max(range(20), key=sims.__getitem__)
    groups = torch.tensor([i % 6 for i in range(20)])
    got = AF.nearest_candidates(query, cand, groups)
    for i in range(6):
        own = [j for j in range(20) if j % 6 == i]
        sims = {j: float(F.cosine_similarity(query[i], cand[j], dim=0)) for j in own}
        assert int(got[i]) == max(own, key=sims.__getitem__)
    # ties: the first candidate of the group wins
    twins = torch.ones(4, 8)
    assert AF.nearest_candidates(torch.ones(2, 8), twins, torch.tensor([1, 0, 1, 0])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="query 2 has no candidate"):
        AF.nearest_candidates(torch.randn(3, 8), torch.randn(2, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"groups must be an int64 tensor of shape \(4,\)"):
        AF.nearest_candidates(torch.randn(3, 8), torch.randn(4, 8), torch.tensor([0, 1]))


# --------------------------------------------------------------------------------------------------
# search


def _markov_step(table: torch.Tensor, per_row: torch.Tensor):
    """log p(next | last token, batch item): table (V, V) plus an item-specific bias (B, V)."""

    def step(tokens: torch.Tensor, rows: torch.Tensor, parents: torch.Tensor | None = None) -> torch.Tensor:
        return torch.log_softmax(table[tokens[:, -1]] + per_row[rows], dim=-1)

    return step


def _exhaustive(
    step, item: int, vocab: int, max_length: int, bos: int, eos: int, pad: int, alpha: float = 0.0
):
    """Best sequence of one item by enumerating every sequence (float64 sums), ranked by
    log p / length^alpha; a sequence that reaches max_length without EOS counts too."""
    best, best_seq = -math.inf, None
    words = [t for t in range(vocab) if t != pad]
    for length in range(1, max_length):
        for seq in itertools.product(words, repeat=length):
            if eos in seq[:-1] or (length < max_length - 1 and seq[-1] != eos):
                continue  # stopped early without EOS, or continued after EOS
            tokens = [bos, *seq]
            total = 0.0
            for t in range(1, len(tokens)):
                prefix = torch.tensor([tokens[:t]])
                total += float(step(prefix, torch.tensor([item]))[0, tokens[t]].double())
            score = total / length**alpha
            if score > best:
                best, best_seq = score, tokens
    return best, best_seq


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_is_exact_with_a_wide_beam(alpha: float) -> None:
    vocab, bos, eos, pad, max_length = 5, 1, 2, 0, 5
    g = torch.Generator().manual_seed(0)
    table = torch.randn(vocab, vocab, generator=g) * 2
    table[:, pad] = -1e9  # the model never emits PAD or BOS
    table[:, bos] = -1e9
    step = _markov_step(table, torch.randn(3, vocab, generator=g))
    seqs, scores = beam_search(step, 3, bos, eos, max_length, beam_size=5**4, length_penalty=alpha, pad=pad)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    for item in range(3):
        best, best_seq = _exhaustive(step, item, vocab, max_length, bos, eos, pad, alpha)
        got = [t for t in seqs[item, 0].tolist() if t != pad]
        assert got == best_seq
        assert float(scores[item, 0]) == pytest.approx(best, abs=1e-4)


def test_beam_search_scores_are_the_sequence_log_probabilities() -> None:
    vocab, bos, eos, pad = 7, 1, 2, 0
    g = torch.Generator().manual_seed(1)
    table = torch.randn(vocab, vocab, generator=g)
    table[:, pad] = -1e9
    step = _markov_step(table, torch.randn(4, vocab, generator=g))
    seqs, scores = beam_search(step, 4, bos, eos, 8, beam_size=3, pad=pad)
    for item in range(4):
        for k in range(3):
            tokens = seqs[item, k].tolist()
            total = 0.0
            for t in range(1, len(tokens)):
                if tokens[t - 1] == eos or tokens[t] == pad:
                    break
                total += float(step(torch.tensor([tokens[:t]]), torch.tensor([item]))[0, tokens[t]])
            assert float(scores[item, k]) == pytest.approx(total, abs=1e-4)


def test_beam_of_one_is_greedy_and_length_penalty_prefers_longer() -> None:
    vocab, bos, eos, pad = 6, 1, 2, 0
    g = torch.Generator().manual_seed(2)
    table = torch.randn(vocab, vocab, generator=g)
    table[:, pad] = -1e9
    step = _markov_step(table, torch.randn(5, vocab, generator=g))
    greedy = greedy_search(step, 5, bos, eos, 9, pad=pad)
    beams, _ = beam_search(step, 5, bos, eos, 9, beam_size=1, pad=pad)
    assert torch.equal(beams[:, 0, : greedy.shape[1]], greedy)
    assert torch.all(beams[:, 0, greedy.shape[1] :] == pad)
    # greedy stops every row at EOS and pads after it
    for row in greedy.tolist():
        if eos in row:
            assert all(t == pad for t in row[row.index(eos) + 1 :])
    short, _ = beam_search(step, 5, bos, eos, 9, beam_size=4, pad=pad)
    long, _ = beam_search(step, 5, bos, eos, 9, beam_size=4, length_penalty=2.0, pad=pad)
    length = lambda s: int((s[:, 0] != pad).sum(1).float().mean())  # noqa: E731
    assert length(long) >= length(short)
    with pytest.raises(ValueError, match="beam_size must be an integer ≥ 1"):
        beam_search(step, 5, bos, eos, 9, beam_size=0)
    with pytest.raises(ValueError, match="max_length must be an integer ≥ 2"):
        greedy_search(step, 5, bos, eos, 1)
    with pytest.raises(ValueError, match=r"pad = 7 is not a token id of the step's vocabulary \(V = 6\)"):
        beam_search(step, 5, bos, eos, 9, pad=7)
    with pytest.raises(ValueError, match=r"step must return \(M, V\) = \(5, V\)"):
        greedy_search(lambda tokens, rows, parents: torch.zeros(3, 6), 5, bos, eos, 9)


# --------------------------------------------------------------------------------------------------
# decoder


def test_causal_decoder_is_causal_and_right_padding_changes_nothing_before_it() -> None:
    lm = CausalDecoder(vocab_size=20, dim=32, depth=2, num_heads=4, max_length=16).eval()
    tokens = torch.randint(3, 20, (2, 8))
    prefix = torch.randn(2, 3, 32)
    out = lm(tokens, prefix=prefix)
    assert out.shape == (2, 11, 20)
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1 - 3) % 17 + 3
    out2 = lm(changed, prefix=prefix)
    assert torch.allclose(out[:, : 3 + 5], out2[:, : 3 + 5], atol=1e-6)  # positions before 5 unchanged
    assert not torch.allclose(out[:, 3 + 5], out2[:, 3 + 5])
    padded = torch.cat([tokens, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(lm(padded, prefix=prefix)[:, :11], out, atol=1e-5)
    assert not torch.allclose(lm(tokens, prefix=prefix + 1)[:, 3:], out[:, 3:])
    with pytest.raises(ValueError, match="exceeds max_length = 16"):
        lm(torch.randint(3, 20, (2, 14)), prefix=prefix)
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 20\)"):
        lm(torch.full((1, 3), 20))
    with pytest.raises(ValueError, match="no cross-attention"):
        lm(tokens, context=torch.randn(2, 4, 32))
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        CausalDecoder(vocab_size=5, dim=30, num_heads=4)


def test_caption_loss_matches_loop() -> None:
    logits = torch.randn(3, 2 + 6, 11, dtype=torch.float64)
    tokens = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0], [1, 3, 4, 5, 9, 2]])
    terms = []
    for b in range(3):
        for t in range(1, 6):
            if tokens[b, t] != 0:
                terms.append(-torch.log_softmax(logits[b, 2 + t - 1], 0)[tokens[b, t]])
    assert float(caption_loss(logits, tokens, prefix_length=2)) == pytest.approx(
        float(sum(terms) / len(terms))
    )
    with pytest.raises(ValueError, match=r"logits must have shape \(B, P \+ T, V\) = \(3, 6, V\)"):
        caption_loss(logits, tokens, prefix_length=0)
    with pytest.raises(ValueError, match="tokens must be an int64 tensor"):
        caption_loss(logits, tokens.float(), prefix_length=2)


def _toy_captions(n: int, vocab: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((n, length + 2), 0)
    tokens[:, 0] = 1
    for i in range(n):
        size = 2 + i % (length - 1)
        tokens[i, 1 : 1 + size] = torch.randint(3, vocab, (size,), generator=g)
        tokens[i, 1 + size] = 2
    return tokens


def _fit(model: torch.nn.Module, loss, steps: int = 300, lr: float = 3e-3) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("mapping", ["mlp", "transformer"])
def test_prefix_captioner_learns_to_caption_embeddings(mapping: str) -> None:
    torch.manual_seed(0)
    emb = torch.randn(8, 16)
    tokens = _toy_captions(8, 14, 5, seed=1)
    cap = PrefixCaptioner(
        16, 14, prefix_length=2, mapping=mapping, dim=32, depth=1, num_heads=2, max_length=8, dropout=0.0
    )
    before = float(cap.loss(emb, tokens).detach())
    _fit(cap, lambda: cap.loss(emb, tokens))
    assert float(cap.loss(emb, tokens).detach()) < 0.05 < before
    for search in ("greedy", "beam"):
        out = cap.generate(emb, search=search, beam_size=3)
        for row, want in zip(out.tolist(), tokens.tolist(), strict=True):
            stop = want.index(2) + 1
            assert row[:stop] == want[:stop]
    with pytest.raises(ValueError, match=r"embedding must have shape \(N, 16\)"):
        cap.generate(torch.randn(2, 15))
    with pytest.raises(ValueError, match="tokens must have 8 rows"):
        cap(emb, tokens[:3])
    with pytest.raises(ValueError, match="mapping must be one of"):
        PrefixCaptioner(16, 14, mapping="lstm")


class _Patches(torch.nn.Module):
    """(N, 8, 8) → (N, 16, 8) tokens: 2×2 patches plus positions (enough for a toy CoCa)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 8)
        self.pos = torch.nn.Parameter(torch.randn(16, 8) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        return self.proj(patches) + self.pos


def _toy_coca(depth: int) -> CoCa:
    return CoCa(
        _Patches(),
        8,
        14,
        embed_dim=16,
        dim=32,
        num_heads=2,
        unimodal_depth=depth,
        multimodal_depth=depth,
        caption_queries=4,
        max_length=12,
        dropout=0.0,
    )


def test_coca_loss_is_weighted_sum_gradients_reach_both_towers_and_it_learns() -> None:
    torch.manual_seed(0)
    images = torch.rand(8, 8, 8)
    tokens = _toy_captions(8, 14, 5, seed=2)
    coca = _toy_coca(1)
    out = coca(images, tokens)
    assert float(out["loss"].detach()) == pytest.approx(
        2 * float(out["caption_loss"]) + float(out["contrastive_loss"]), rel=1e-6
    )
    coca.zero_grad()
    out["loss"].backward()
    assert coca.image_tower.proj.weight.grad.abs().sum() > 0
    assert coca.unimodal.token_embedding.weight.grad.abs().sum() > 0
    assert coca.contrastive_pool.query.grad.abs().sum() > 0 and coca.caption_pool.query.grad.abs().sum() > 0
    # the text embedding is read at the first EOS (causal): padding after it changes nothing
    longer = torch.cat([tokens, torch.zeros(8, 3, dtype=torch.long)], dim=1)
    coca.eval()
    assert torch.allclose(coca.encode_text(tokens), coca.encode_text(longer), atol=1e-5)
    _fit(coca, lambda: coca(images, tokens)["loss"], steps=300)
    final = coca(images, tokens)
    assert float(final["caption_loss"]) < 0.05
    sims = F.normalize(coca.encode_image(images), dim=1) @ F.normalize(coca.encode_text(tokens), dim=1).T
    assert torch.equal(sims.argmax(1), torch.arange(8))  # contrastive half aligned the pairs
    generated = coca.generate(images, search="beam")
    for row, want in zip(generated.tolist(), tokens.tolist(), strict=True):
        stop = want.index(2) + 1
        assert row[:stop] == want[:stop]
    with pytest.raises(ValueError, match="must contain EOS"):
        coca.encode_text(torch.tensor([[1, 5, 6]]))
    with pytest.raises(ValueError, match="search must be one of"):
        coca.generate(images, search="sample")


def test_memory_projection_is_built_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blocks (3 queries at a time) give the same projection as one block."""
    import alignkit.functional.decoding as decoding

    query, memory = torch.randn(10, 8), torch.randn(50, 8)
    whole = AF.memory_projection(query, memory)
    monkeypatch.setattr(decoding, "_BLOCK_ELEMENTS", 150)
    assert decoding._rows_per_block(50) == 3
    # float32 GEMM rounding differs between block sizes; softmax(cos / 0.01) multiplies it by 100
    assert torch.allclose(whole, AF.memory_projection(query, memory), atol=1e-5)


def test_cached_incremental_decoding_equals_the_full_pass() -> None:
    torch.manual_seed(0)
    for context_dim in (None, 24):
        lm = CausalDecoder(
            vocab_size=20, dim=32, depth=2, num_heads=4, max_length=16, context_dim=context_dim
        ).eval()
        tokens, prefix = torch.randint(3, 20, (3, 9)), torch.randn(3, 2, 32)
        context = None if context_dim is None else torch.randn(3, 5, context_dim)
        full = lm(tokens, prefix=prefix, context=context)
        cache = DecoderCache()
        parts = [lm(tokens[:, :4], prefix=prefix, context=context, cache=cache)]  # prefix + 4 tokens
        parts += [
            lm(tokens[:, t : t + 1], context=context, cache=cache) for t in range(4, 7)
        ]  # one at a time
        parts.append(lm(tokens[:, 7:], context=context, cache=cache))  # two at once
        assert cache.length == 11
        assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds max_length = 16"):
        lm(tokens, context=context, cache=cache)


def test_beam_reordering_of_the_cache_follows_the_rows() -> None:
    cache = DecoderCache()
    cache.layer(1)["k"] = torch.arange(4.0)[:, None, None, None].expand(4, 1, 2, 1)
    cache.reorder(torch.tensor([2, 2, 0, 3]))
    assert cache.layers[1]["k"][:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0, 3.0] and cache.layers[0] == {}


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_cached_generation_equals_recomputing_every_step(search: str) -> None:
    torch.manual_seed(1)
    cap = PrefixCaptioner(
        16, 14, prefix_length=3, dim=32, depth=2, num_heads=4, max_length=12, dropout=0.0
    ).eval()
    emb = torch.randn(5, 16)
    prefix = cap.prefix(emb)

    def full_step(tokens: torch.Tensor, rows: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
        return torch.log_softmax(cap.decoder(tokens, prefix=prefix[rows])[:, -1], dim=-1)

    if search == "greedy":
        expected = greedy_search(full_step, 5, 1, 2, 12)
    else:
        expected = beam_search(full_step, 5, 1, 2, 12, beam_size=3)[0][:, 0]
    assert torch.equal(cap.generate(emb, search=search, beam_size=3), expected)

    coca = _toy_coca(2).eval()
    images = torch.rand(5, 8, 8)
    context = coca._image(images)[1]

    def coca_full(tokens: torch.Tensor, rows: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
        hidden = coca.unimodal(tokens, return_hidden=True)
        return torch.log_softmax(coca._captioning_logits(hidden, context[rows])[:, -1], dim=-1)

    if search == "greedy":
        expected = greedy_search(coca_full, 5, 1, 2, 12)
    else:
        expected = beam_search(coca_full, 5, 1, 2, 12, beam_size=3)[0][:, 0]
    assert torch.equal(coca.generate(images, search=search, beam_size=3), expected)
