"""A small causal transformer decoder and the two searches that read text out of it.

:class:`CausalDecoder` is a GPT-style stack (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners"; pre-LayerNorm blocks of Xiong et al. 2020) trained from scratch: token embedding
plus learned positions, ``depth`` blocks of causal self-attention (optionally followed by
cross-attention to a context, as in a multimodal decoder), an MLP, and an output layer tied to the
token embedding. It accepts *prefix* vectors placed before the tokens (ClipCap's prefix tokens) and
a *context* it cross-attends to (CoCa's image tokens).

:func:`greedy_search` and :func:`beam_search` decode from any ``step(tokens, rows, parents) →
log-probs`` function, so the prefix captioner, CoCa and anything else share them; with a
:class:`DecoderCache` a step feeds only the newest token (keys and values of the earlier positions
are kept), so generating L tokens costs O(L) token passes instead of O(L²).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import check_dropout, check_int, shape_str

__all__ = ["CausalDecoder", "DecoderBlock", "DecoderCache", "beam_search", "caption_loss", "greedy_search"]

#: ``step(tokens (M, t) int64, rows (M,) int64, parents (M,) int64 | None) → (M, V)``
#: log-probabilities of the next token given the decoded tokens of each of the M live sequences.
#: ``rows[m]`` is the batch item sequence ``m`` belongs to (use it to pick that item's prefix or
#: context); ``parents[m]`` is the row of the previous call that sequence ``m`` extends (``None`` on
#: the first call): reorder a :class:`DecoderCache` with it, then feed ``tokens[:, -1:]`` only.
StepFunction = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class DecoderCache:
    """Keys and values of every position seen so far, per block, for incremental decoding.

    Pass the same cache to successive :class:`CausalDecoder` calls: the first call feeds the prefix
    and the first tokens, each later call only the new tokens, and the result equals one call on the
    whole sequence (to float rounding). :meth:`reorder` follows beam search's reshuffling of rows.

    Attributes:
        length: positions cached so far (the next call's tokens start at this position).
    """

    def __init__(self) -> None:
        self.layers: list[dict[str, Tensor]] = []
        self.length = 0

    def layer(self, index: int) -> dict[str, Tensor]:
        while len(self.layers) <= index:
            self.layers.append({})
        return self.layers[index]

    def reorder(self, index: Tensor) -> None:
        """Keep row ``index[m]`` of the cache as row ``m`` (``index`` (M,) int64)."""
        for layer in self.layers:
            for key, value in layer.items():
                layer[key] = value.index_select(0, index)


class DecoderBlock(nn.Module):
    """One pre-LayerNorm decoder block::

        x = x + SelfAttn(LN(x), causal)
        x = x + CrossAttn(LN(x), context, context_padding_mask)      (only with context_dim)
        x = x + MLP(LN(x)),   MLP = Linear(dim, 4·dim) → GELU → Linear(4·dim, dim)

    ``forward(x (B, T, dim), context (B, S, context_dim) | None, context_padding_mask (B, S) bool |
    None, cache: dict | None) → (B, T, dim)``; ``True`` marks padded context entries. Position ``t``
    sees positions ≤ t only, so padding placed after the real tokens (right padding) never reaches
    them. With ``cache`` (one block's dict of a :class:`DecoderCache`) the keys and values of earlier
    calls are prepended and the new ones stored, so ``x`` holds only the new positions.

    Self-attention is multi-head scaled dot-product attention (Vaswani et al. 2017) through
    :func:`torch.nn.functional.scaled_dot_product_attention`, with fused ``qkv`` and output
    projections.

    Cost: O(B·T²·dim + B·T·dim²) (+ O(B·T·S·dim + B·S·context_dim·dim) with cross-attention).
    """

    def __init__(
        self, dim: int, num_heads: int, context_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads, self.attn_dropout = num_heads, dropout
        self.norm_self = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.cross_attn: nn.MultiheadAttention | None = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = nn.MultiheadAttention(
                dim, num_heads, dropout=dropout, kdim=context_dim, vdim=context_dim, batch_first=True
            )
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def _self_attention(self, h: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        b, t, d = h.shape
        q, k, v = (
            z.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
            for z in self.qkv(h).split(d, -1)
        )
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        past = k.shape[2] - t
        mask = None
        if t > 1 and past:  # new queries see every cached key and the new keys up to themselves
            mask = torch.ones(t, past + t, dtype=torch.bool, device=h.device).tril(past)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=t > 1 and not past,
        )
        return self.out(out.transpose(1, 2).reshape(b, t, d))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        cache: dict[str, Tensor] | None = None,
    ) -> Tensor:
        x = x + self.dropout(self._self_attention(self.norm_self(x), cache))
        if self.cross_attn is not None and context is not None:
            h = self.norm_cross(x)
            x = x + self.dropout(
                self.cross_attn(
                    h, context, context, key_padding_mask=context_padding_mask, need_weights=False
                )[0]
            )
        return x + self.dropout(self.mlp(self.norm_mlp(x)))


class CausalDecoder(nn.Module):
    """A causal transformer language model, optionally conditioned on prefix vectors and a context.

    The input sequence is ``[prefix_1 … prefix_P, emb(token_1) … emb(token_T)] + positions``; block
    outputs go through a final LayerNorm and the output layer ``logits = h · Eᵀ`` (weights tied to
    the token embedding ``E``, Press & Wolf 2017). Position ``P + t − 1`` predicts ``token_{t+1}``.
    Pad captions on the right (after EOS): causal attention hides those positions from every real
    one, so no key-padding mask is needed and their outputs are simply ignored by the loss.

    Args:
        vocab_size: number of token ids (≥ 2).
        dim: model width (divisible by ``num_heads``).
        depth: number of :class:`DecoderBlock` (≥ 1).
        num_heads: attention heads.
        max_length: longest ``P + T`` the learned positions cover.
        context_dim: width of a cross-attended context (CoCa's multimodal decoder); ``None``: no
            cross-attention.
        dropout: dropout on attention weights and residual branches, in [0, 1).

    ``forward(tokens (B, T) int64 | None, prefix (B, P, dim) | None, context (B, S, context_dim) |
    None, context_padding_mask (B, S) bool | None) → logits (B, P + T, vocab_size)``; with
    ``return_hidden=True`` the final hidden states (B, P + T, dim) instead. With ``cache`` (a
    :class:`DecoderCache`), only the positions after ``cache.length`` are passed and returned.

    Cost: O(depth·B·L·(L + dim)·dim) for L = P + T.

    Example:
        >>> lm = CausalDecoder(vocab_size=50, dim=64, depth=2, num_heads=4, max_length=32)
        >>> lm(torch.randint(0, 50, (3, 10)), prefix=torch.randn(3, 4, 64)).shape
        torch.Size([3, 14, 50])
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        max_length: int = 64,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int(vocab_size, "vocab_size", 2)
        check_int(dim, "dim", 1)
        check_int(depth, "depth", 1)
        check_int(num_heads, "num_heads", 1)
        check_int(max_length, "max_length", 1)
        if context_dim is not None:
            check_int(context_dim, "context_dim", 1)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads = {num_heads}, got dim = {dim}")
        dropout = check_dropout(dropout)
        self.vocab_size, self.dim, self.max_length = vocab_size, dim, max_length
        self.context_dim = context_dim
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, dim))
        self.blocks = nn.ModuleList(DecoderBlock(dim, num_heads, context_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(
        self,
        tokens: Tensor | None = None,
        prefix: Tensor | None = None,
        context: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        return_hidden: bool = False,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        parts = []
        batch = None
        if prefix is not None:
            if not isinstance(prefix, Tensor) or prefix.dim() != 3 or prefix.shape[-1] != self.dim:
                raise ValueError(f"prefix must have shape (B, P, {self.dim}), got {shape_str(prefix)}")
            batch = prefix.shape[0]
            parts.append(prefix)
        if tokens is not None:
            if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
                raise ValueError(f"tokens must be an int64 tensor of shape (B, T), got {shape_str(tokens)}")
            if batch is not None and tokens.shape[0] != batch:
                raise ValueError(
                    f"tokens {shape_str(tokens)} and prefix {shape_str(prefix)} must have the same batch size"
                )
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
                raise ValueError(f"tokens must be ids in [0, {self.vocab_size})")
            parts.append(self.token_embedding(tokens))
        if not parts:
            raise ValueError("forward needs tokens, a prefix, or both")
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        start = 0 if cache is None else cache.length
        length = start + x.shape[1]
        if length > self.max_length:
            raise ValueError(f"sequence of length P + T = {length} exceeds max_length = {self.max_length}")
        if context is not None and self.context_dim is None:
            raise ValueError("context was given but this decoder has no cross-attention (context_dim=None)")
        if self.context_dim is not None:
            if context is None:
                raise ValueError(
                    f"this decoder cross-attends: context of shape (B, S, {self.context_dim}) is required"
                )
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.context_dim:
                raise ValueError(
                    f"context must have shape ({x.shape[0]}, S, {self.context_dim}), got {shape_str(context)}"
                )
        x = self.dropout(x + self.position_embedding[start:length].to(x.dtype))
        for index, block in enumerate(self.blocks):
            x = block(x, context, context_padding_mask, None if cache is None else cache.layer(index))
        if cache is not None:
            cache.length = length
        x = self.norm(x)
        return x if return_hidden else x @ self.token_embedding.weight.T

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, dim={self.dim}, max_length={self.max_length}"


def caption_loss(logits: Tensor, tokens: Tensor, prefix_length: int = 0, pad_id: int = 0) -> Tensor:
    """Next-token cross-entropy of ``tokens`` under ``logits`` from :class:`CausalDecoder`.

    ``logits`` (B, P + T, V) for ``tokens`` (B, T) = ``BOS w_1 … w_n EOS PAD …``: position ``P + t − 1``
    predicts ``tokens[:, t]`` for t = 1 … T − 1; PAD targets are ignored; the mean is over the
    remaining targets (the words and EOS), as in ClipCap's and CoCa's captioning loss.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, P + T, V), got {shape_str(logits)}")
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be an int64 tensor of shape (B, T), got {shape_str(tokens)}")
    check_int(prefix_length, "prefix_length", 0)
    expected = (tokens.shape[0], prefix_length + tokens.shape[1])
    if tuple(logits.shape[:2]) != expected:
        raise ValueError(
            f"logits must have shape (B, P + T, V) = ({expected[0]}, {expected[1]}, V) for tokens "
            f"{shape_str(tokens)} and prefix_length = {prefix_length}, got {shape_str(logits)}"
        )
    targets = tokens[:, 1:]
    predicted = logits[:, prefix_length : prefix_length + targets.shape[1]]
    return F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]).float(), targets.reshape(-1), ignore_index=pad_id
    )


def _check_search(batch_size: int, bos: int, eos: int, max_length: int, pad: int) -> None:
    check_int(batch_size, "batch_size", 1)
    check_int(max_length, "max_length", 2)
    for value, name in ((bos, "bos"), (eos, "eos"), (pad, "pad")):
        check_int(value, name, 0)


def _check_step_output(logp: Tensor, rows: int, pad: int) -> Tensor:
    if not isinstance(logp, Tensor) or logp.dim() != 2 or logp.shape[0] != rows:
        raise ValueError(f"step must return (M, V) = ({rows}, V) log-probabilities, got {shape_str(logp)}")
    if pad >= logp.shape[1]:
        raise ValueError(f"pad = {pad} is not a token id of the step's vocabulary (V = {logp.shape[1]})")
    return logp


@torch.no_grad()
def greedy_search(
    step: StepFunction,
    batch_size: int,
    bos: int,
    eos: int,
    max_length: int,
    pad: int = 0,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Decode by always taking the most probable next token.

    Sequences start with ``bos``; each stops at its first ``eos`` (later positions are ``pad``) or at
    ``max_length`` tokens (``bos`` and ``eos`` included).

    Returns:
        (batch_size, L ≤ max_length) int64 token ids, starting with ``bos``.

    Cost: ``max_length`` calls of ``step`` on at most ``batch_size`` sequences.
    """
    _check_search(batch_size, bos, eos, max_length, pad)
    tokens = torch.full((batch_size, 1), bos, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for position in range(max_length - 1):
        logp = _check_step_output(step(tokens, rows, None if position == 0 else rows), batch_size, pad)
        nxt = logp.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return tokens


@torch.no_grad()
def beam_search(
    step: StepFunction,
    batch_size: int,
    bos: int,
    eos: int,
    max_length: int,
    beam_size: int = 3,
    length_penalty: float = 0.0,
    pad: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Beam search: keep the ``beam_size`` best partial sequences of each item by total log-probability.

    At each step every live beam is extended by every token and the best ``beam_size`` extensions
    per item survive (Graves 2012; Sutskever et al. 2014). A beam that emits ``eos`` is finished: it
    keeps its score and is extended only by ``pad`` at zero cost, so it competes with the live beams
    until the end on raw log-probability. The surviving sequences are then ranked by
    ``log p / length^α`` with ``α = length_penalty`` (``length`` counts the tokens after ``bos``,
    ``eos`` included; α = 0: plain log-probability), so the penalty re-ranks survivors only.
    With ``beam_size`` at least the number of possible sequences this is exact search; with
    ``beam_size=1`` it equals :func:`greedy_search`.

    Returns:
        ``(sequences, scores)``: (batch_size, beam_size, L) int64 ids, best first, and
        (batch_size, beam_size) float32 ranking scores. Sequences that never emitted ``eos`` within
        ``max_length`` are ranked like finished ones.

    Cost: ``max_length`` calls of ``step`` on ``batch_size·beam_size`` sequences, plus a top-k over
    ``beam_size·V`` per item per step.
    """
    _check_search(batch_size, bos, eos, max_length, pad)
    check_int(beam_size, "beam_size", 1)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or length_penalty < 0:
        raise ValueError(f"length_penalty must be a number ≥ 0, got {length_penalty!r}")
    b, k = batch_size, beam_size
    tokens = torch.full((b * k, 1), bos, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device).repeat_interleave(k)
    # only the first beam of each item is live at the start, so the k beams do not start identical
    scores = torch.full((b, k), -math.inf, device=device)
    scores[:, 0] = 0.0
    done = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, device=device)
    source: Tensor | None = None
    for _ in range(max_length - 1):
        logp = _check_step_output(step(tokens, rows, source), b * k, pad).float()  # (b·k, V)
        vocab = logp.shape[-1]
        frozen = torch.full_like(logp, -math.inf)
        frozen[:, pad] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        total = (scores.reshape(-1, 1) + logp).reshape(b, k * vocab)
        scores, index = total.topk(k, dim=1)  # (b, k)
        beam = index // vocab
        word = index % vocab
        source = (torch.arange(b, device=device)[:, None] * k + beam).reshape(-1)
        tokens = torch.cat([tokens[source], word.reshape(-1, 1)], dim=1)
        was_done = done[source]
        lengths = lengths[source] + (~was_done).float()
        done = was_done | (word.reshape(-1) == eos)
        if bool(done.all()):
            break
    ranked = scores / lengths.reshape(b, k).clamp_min(1.0) ** length_penalty
    ranked, order = ranked.sort(dim=1, descending=True)
    pick = (torch.arange(b, device=device)[:, None] * k + order).reshape(-1)
    return tokens[pick].reshape(b, k, -1), ranked
