"""Decoding an aligned embedding back into text: :class:`PrefixCaptioner` (ClipCap, CapDec, DeCap) and
:class:`CoCa`.

Both decode with :func:`alignkit.nn.greedy_search` / :func:`alignkit.nn.beam_search` over a
:class:`alignkit.nn.CausalDecoder` trained from scratch on a word vocabulary
(:class:`alignkit.data.WordTokenizer`: ``PAD = 0``, ``BOS = 1``, ``EOS = 2``).

* ClipCap (Mokady et al. 2021, "ClipCap: CLIP Prefix for Image Captioning"): a mapping network turns
  the image embedding into ``k`` prefix vectors that the decoder reads before the caption; train it
  on (image embedding, caption) pairs.
* CapDec (Nukrai et al. 2022): the same captioner trained on *text* embeddings with Gaussian noise
  (:func:`alignkit.functional.noise_injection`), fed image embeddings at inference.
* DeCap (Li et al. 2023): trained on text embeddings; at inference the image embedding is first
  projected onto a memory of text embeddings (:func:`alignkit.functional.memory_projection`).
* CoCa (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models"): an image
  tower whose tokens are pooled by learned queries, a unimodal text decoder whose end-of-text state
  is the text embedding, and a multimodal decoder that cross-attends to the pooled image tokens;
  loss ``2·captioning + 1·contrastive``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import (
    EPS,
    check_choice,
    check_features,
    check_int,
    check_positive,
    shape_str,
)
from alignkit.losses import CLIPLoss
from alignkit.names import CAPTION_SEARCHES
from alignkit.nn.attention import AttentionalPooler
from alignkit.nn.decoder import (
    CausalDecoder,
    DecoderBlock,
    DecoderCache,
    StepFunction,
    beam_search,
    caption_loss,
    greedy_search,
)

__all__ = ["MAPPINGS", "SEARCHES", "CoCa", "PrefixCaptioner"]

MAPPINGS = ("mlp", "transformer")
SEARCHES = CAPTION_SEARCHES  # defined without torch, for `alignkit caption --help`
PAD, BOS, EOS = 0, 1, 2


def _check_tokens(tokens: object, batch: int) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
        got = shape_str(tokens) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be an int64 tensor of shape (N, T) starting with BOS, got {got}")
    if tokens.shape[0] != batch:
        raise ValueError(f"tokens must have {batch} rows (one caption per input), got {shape_str(tokens)}")
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must hold at least BOS and one more token, got {shape_str(tokens)}")
    return tokens


def _decode(
    step: object, n: int, search: str, beam_size: int, max_length: int, device: torch.device
) -> Tensor:
    check_choice(search, "search", SEARCHES)
    if search == "greedy":
        return greedy_search(step, n, BOS, EOS, max_length, pad=PAD, device=device)  # type: ignore[arg-type]
    return beam_search(step, n, BOS, EOS, max_length, beam_size, pad=PAD, device=device)[0][:, 0]  # type: ignore[arg-type]


class PrefixCaptioner(nn.Module):
    """ClipCap's prefix captioner: embedding → ``prefix_length`` prefix vectors → causal decoder.

    Mapping networks (``e`` is the (N, embed_dim) input embedding, ``k = prefix_length``)::

        mlp:          P = reshape(W₂ · tanh(W₁ e), (k, dim)),  W₁: embed_dim → k·dim/2, W₂: → k·dim
        transformer:  P = Transformer([reshape(W e, (k, dim)) ‖ C])[k:],  C: k learned constants

    The caption is decoded by :class:`~alignkit.nn.CausalDecoder` reading ``[P ‖ BOS w₁ …]``; the loss
    is next-token cross-entropy on the caption tokens (:func:`~alignkit.nn.caption_loss`). ClipCap
    trains it on image embeddings; CapDec and DeCap on (noisy) text embeddings — the class is the
    same, only the training input differs.

    Args:
        embed_dim: width of the conditioning embedding.
        vocab_size: tokenizer vocabulary size.
        prefix_length: k ≥ 1.
        mapping: ``"mlp"`` or ``"transformer"``.
        dim, depth, num_heads, dropout: the decoder's (and the transformer mapping's) width, depth,
            heads and dropout.
        max_length: longest caption in tokens (BOS and EOS included).

    ``forward(embedding (N, embed_dim), tokens (N, T)) → logits (N, k + T, vocab_size)``;
    ``loss(embedding, tokens) → scalar``; ``generate(embedding, search, beam_size) → (N, L)`` ids.

    Example:
        >>> cap = PrefixCaptioner(embed_dim=64, vocab_size=60)
        >>> ids = cap.generate(torch.randn(5, 64), search="beam", beam_size=3)   # (5, L)
    """

    def __init__(
        self,
        embed_dim: int,
        vocab_size: int,
        prefix_length: int = 4,
        mapping: str = "mlp",
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        max_length: int = 40,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_int(embed_dim, "embed_dim", 1)
        check_int(prefix_length, "prefix_length", 1)
        check_int(max_length, "max_length", 2)
        check_choice(mapping, "mapping", MAPPINGS)
        self.embed_dim, self.prefix_length, self.mapping_kind = embed_dim, prefix_length, mapping
        self.max_length = max_length
        self.decoder = CausalDecoder(
            vocab_size,
            dim,
            depth,
            num_heads,
            max_length=prefix_length + max_length,
            dropout=dropout,
        )
        k = prefix_length
        if mapping == "mlp":
            hidden = max(k * dim // 2, 1)
            self.mapping = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, k * dim))
        else:
            self.mapping = nn.Linear(embed_dim, k * dim)
            self.constants = nn.Parameter(torch.randn(k, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(
                dim, num_heads, 4 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
            )
            self.mapper = nn.TransformerEncoder(layer, num_layers=max(depth, 1), enable_nested_tensor=False)

    def prefix(self, embedding: Tensor) -> Tensor:
        """(N, embed_dim) → (N, prefix_length, dim) prefix vectors."""
        check_features(embedding, "embedding")
        if embedding.shape[1] != self.embed_dim:
            raise ValueError(f"embedding must have shape (N, {self.embed_dim}), got {shape_str(embedding)}")
        n, k, d = embedding.shape[0], self.prefix_length, self.decoder.dim
        p = self.mapping(embedding).reshape(n, k, d)
        if self.mapping_kind == "transformer":
            p = self.mapper(torch.cat([p, self.constants.expand(n, -1, -1)], dim=1))[:, k:]
        return p

    def forward(self, embedding: Tensor, tokens: Tensor) -> Tensor:
        prefix = self.prefix(embedding)
        return self.decoder(_check_tokens(tokens, embedding.shape[0]), prefix=prefix)

    def loss(self, embedding: Tensor, tokens: Tensor) -> Tensor:
        """Mean next-token cross-entropy of the caption tokens (PAD ignored)."""
        return caption_loss(self(embedding, tokens), tokens, self.prefix_length, PAD)

    def _step(self, prefix: Tensor) -> StepFunction:
        """Incremental decoding: the first call reads the prefix and BOS, later ones the newest token."""
        cache = DecoderCache()

        def step(tokens: Tensor, rows: Tensor, parents: Tensor | None) -> Tensor:
            if parents is None:
                logits = self.decoder(tokens, prefix=prefix[rows], cache=cache)
            else:
                cache.reorder(parents)
                logits = self.decoder(tokens[:, -1:], cache=cache)
            return F.log_softmax(logits[:, -1].float(), dim=-1)

        return step

    @torch.no_grad()
    def generate(
        self, embedding: Tensor, search: str = "beam", beam_size: int = 3, max_length: int | None = None
    ) -> Tensor:
        """Token ids (N, L) of the best caption of each embedding (``search``: "greedy" or "beam")."""
        prefix = self.prefix(embedding)

        step = self._step(prefix)

        return _decode(
            step, embedding.shape[0], search, beam_size, max_length or self.max_length, embedding.device
        )

    @torch.no_grad()
    def beams(
        self, embedding: Tensor, beam_size: int = 5, max_length: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """All beams: ``(ids (N, beam_size, L), scores (N, beam_size))``, best first (iterative decoding)."""
        prefix = self.prefix(embedding)

        step = self._step(prefix)

        return beam_search(
            step,
            embedding.shape[0],
            BOS,
            EOS,
            max_length or self.max_length,
            beam_size,
            pad=PAD,
            device=embedding.device,
        )


class CoCa(nn.Module):
    """Contrastive captioner: one model trained with ``caption_weight·L_cap + contrastive_weight·L_con``.

    ::

        T = image_tower(images)                    (N, S, token_dim) image tokens
        v = W_v · Pool₁(T)                         image embedding (one learned query)
        C = Pool_q(T)                              (N, q, dim) captioning queries
        H = UnimodalDecoder(BOS w₁ … EOS)          causal, no image
        u = W_u · H[EOS]                           text embedding (CLIP's end-of-text state stands in
                                                   for CoCa's appended CLS token)
        logits = MultimodalDecoder(H, cross-attending to C)
        L_cap = cross-entropy of the next tokens,  L_con = CLIP loss of (v, u) (learnable temperature)

    Args:
        image_tower: module, images → (N, S, token_dim) tokens.
        token_dim: width of the image tokens.
        vocab_size: tokenizer vocabulary size.
        embed_dim: width of the contrastive embeddings.
        dim: decoder width; num_heads: attention heads (both divide ``dim``).
        unimodal_depth, multimodal_depth: blocks in each half of the text decoder.
        caption_queries: q, learned queries of the captioning pooler.
        max_length: longest caption (BOS and EOS included).
        caption_weight, contrastive_weight: the loss weights (CoCa: 2 and 1).
        init_temperature: the contrastive loss's initial temperature.

    ``forward(images, tokens) → {"loss", "caption_loss", "contrastive_loss", "logits"}``;
    ``encode_image(images) → (N, embed_dim)``; ``encode_text(tokens) → (N, embed_dim)``;
    ``generate(images, search, beam_size) → (N, L)`` ids.
    """

    def __init__(
        self,
        image_tower: nn.Module,
        token_dim: int,
        vocab_size: int,
        embed_dim: int = 64,
        dim: int = 128,
        num_heads: int = 4,
        unimodal_depth: int = 2,
        multimodal_depth: int = 2,
        caption_queries: int = 16,
        max_length: int = 40,
        dropout: float = 0.1,
        caption_weight: float = 2.0,
        contrastive_weight: float = 1.0,
        init_temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if not isinstance(image_tower, nn.Module):
            raise ValueError(f"image_tower must be an nn.Module, got {type(image_tower).__name__}")
        for value, name in (
            (token_dim, "token_dim"),
            (embed_dim, "embed_dim"),
            (multimodal_depth, "multimodal_depth"),
        ):
            check_int(value, name, 1)
        check_int(max_length, "max_length", 2)
        check_positive(caption_weight, "caption_weight", allow_zero=True)
        check_positive(contrastive_weight, "contrastive_weight", allow_zero=True)
        self.image_tower = image_tower
        self.max_length = max_length
        self.caption_weight, self.contrastive_weight = float(caption_weight), float(contrastive_weight)
        self.contrastive_pool = AttentionalPooler(dim, 1, num_heads, context_dim=token_dim)
        self.caption_pool = AttentionalPooler(dim, caption_queries, num_heads, context_dim=token_dim)
        self.unimodal = CausalDecoder(vocab_size, dim, unimodal_depth, num_heads, max_length, dropout=dropout)
        self.multimodal = nn.ModuleList(
            DecoderBlock(dim, num_heads, context_dim=dim, dropout=dropout) for _ in range(multimodal_depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.image_projection = nn.Linear(dim, embed_dim, bias=False)
        self.text_projection = nn.Linear(dim, embed_dim, bias=False)
        self.contrastive = CLIPLoss(init_temperature=init_temperature)

    def _image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.image_tower(images)
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            raise ValueError(f"image_tower must return (N, S, token_dim) tokens, got {shape_str(tokens)}")
        return self.contrastive_pool(tokens)[:, 0], self.caption_pool(tokens)

    def _captioning_logits(
        self, hidden: Tensor, context: Tensor, cache: DecoderCache | None = None
    ) -> Tensor:
        for index, block in enumerate(self.multimodal):  # causal: right padding never reaches the tokens
            hidden = block(hidden, context, None, None if cache is None else cache.layer(index))
        return self.norm(hidden) @ self.unimodal.token_embedding.weight.T

    def encode_image(self, images: Tensor) -> Tensor:
        """(N, …) images → (N, embed_dim) image embeddings (not normalised)."""
        return self.image_projection(self._image(images)[0])

    def encode_text(self, tokens: Tensor) -> Tensor:
        """(N, T) caption ids (BOS … EOS PAD …) → (N, embed_dim) text embeddings at the EOS position."""
        tokens = _check_tokens(tokens, tokens.shape[0] if isinstance(tokens, Tensor) else 0)
        return self._text_embedding(self.unimodal(tokens, return_hidden=True), tokens)

    def _text_embedding(self, hidden: Tensor, tokens: Tensor) -> Tensor:
        is_eos = tokens == EOS
        if not bool(is_eos.any(1).all()):
            raise ValueError("every caption in tokens must contain EOS (id 2) for its text embedding")
        last = is_eos.float().argmax(1)  # first EOS
        return self.text_projection(hidden[torch.arange(tokens.shape[0], device=tokens.device), last])

    def forward(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        pooled, context = self._image(images)
        tokens = _check_tokens(tokens, pooled.shape[0])
        hidden = self.unimodal(tokens, return_hidden=True)
        logits = self._captioning_logits(hidden, context)
        cap = caption_loss(logits, tokens, 0, PAD)
        image_embedding = F.normalize(self.image_projection(pooled), dim=-1, eps=EPS)
        text_embedding = F.normalize(self._text_embedding(hidden, tokens), dim=-1, eps=EPS)
        con = self.contrastive(image_embedding, text_embedding)
        loss = self.caption_weight * cap + self.contrastive_weight * con
        return {
            "loss": loss,
            "caption_loss": cap.detach(),
            "contrastive_loss": con.detach(),
            "logits": logits,
        }

    @torch.no_grad()
    def generate(
        self, images: Tensor, search: str = "beam", beam_size: int = 3, max_length: int | None = None
    ) -> Tensor:
        """Token ids (N, L) of the best caption of each image."""
        _, context = self._image(images)

        unimodal, multimodal = DecoderCache(), DecoderCache()

        def step(tokens: Tensor, rows: Tensor, parents: Tensor | None) -> Tensor:
            if parents is not None:  # incremental: reorder both caches, feed the newest token
                unimodal.reorder(parents)
                multimodal.reorder(parents)
                tokens = tokens[:, -1:]
            hidden = self.unimodal(tokens, return_hidden=True, cache=unimodal)
            logits = self._captioning_logits(hidden, context[rows], multimodal)
            return F.log_softmax(logits[:, -1].float(), dim=-1)

        return _decode(
            step, context.shape[0], search, beam_size, max_length or self.max_length, context.device
        )
