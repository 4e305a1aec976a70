"""Cross-attention blocks: bidirectional :class:`CoAttention` and learned-query :class:`AttentionalPooler`.

Both are thin arrangements of :class:`torch.nn.MultiheadAttention` (batch first) with key-padding
masks. Masks are ``(B, T)`` bool tensors, ``True`` = padding (the token is ignored as a key), as in
PyTorch. A sample whose keys are *all* padding attends to nothing: its attention output is zero
(instead of the NaN a softmax over no key would give), so only the residual path remains.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alignkit.functional._checks import check_dropout, check_int, shape_str

__all__ = ["AttentionalPooler", "CoAttention"]


def _check_tokens(x: object, name: str, dim: int, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, T, {dim}), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (B, T, {dim}) ({what}), got {shape_str(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_padding_mask(mask: object, name: str, tokens: Tensor, tokens_name: str) -> Tensor | None:
    """``None``, or a bool (B, T) key-padding mask (True = padding) on ``tokens``' device."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = padding), got dtype {mask.dtype}")
    if mask.shape != tokens.shape[:2]:
        raise ValueError(
            f"{name} must have shape (B, T) = ({tokens.shape[0]}, {tokens.shape[1]}) to match "
            f"{tokens_name} {shape_str(tokens)}, got {shape_str(mask)}"
        )
    if mask.device != tokens.device:
        raise ValueError(f"{name} is on {mask.device} but {tokens_name} is on {tokens.device}")
    return mask


def _attend(attn: nn.MultiheadAttention, query: Tensor, context: Tensor, padding: Tensor | None) -> Tensor:
    """``attn(query, context, context)`` with padded keys ignored; all-padding samples give zeros."""
    if padding is None:
        return attn(query, context, context, need_weights=False)[0]
    empty = padding.all(dim=1)  # (B,): no key left to attend to
    padding = padding & ~empty[:, None]  # unmask those rows so the softmax stays finite …
    out = attn(query, context, context, key_padding_mask=padding, need_weights=False)[0]
    return out.masked_fill(empty[:, None, None], 0.0)  # … and drop their attention output


class CoAttention(nn.Module):
    """Bidirectional multi-head cross-attention with residual connections and LayerNorm.

    Each stream queries the other (the co-attentional layer of ViLBERT, Lu et al. 2019, "ViLBERT:
    Pretraining Task-Agnostic Visiolinguistic Representations for Vision-and-Language Tasks"; multi-head
    attention of Vaswani et al. 2017, "Attention Is All You Need")::

        a' = LN_a(a + Dropout(MHA_a(q=a, k=b, v=b, key_padding_mask=b_padding_mask)))
        b' = LN_b(b + Dropout(MHA_b(q=b, k=a, v=a, key_padding_mask=a_padding_mask)))

    Both directions read the *input* ``a`` and ``b`` (not each other's update), so the block is
    symmetric. Padded tokens of one side never influence the other side's outputs; the outputs *at*
    padded positions are computed like any other and carry no meaning.

    Args:
        dim: width of ``a`` (> 0, divisible by ``num_heads``).
        num_heads: number of attention heads (≥ 1).
        dropout: dropout probability on the attention weights and on the residual branch, in [0, 1).
        dim_b: width of ``b`` (divisible by ``num_heads``); ``None``: ``dim``.

    ``forward(a (B, Ta, dim), b (B, Tb, dim_b), a_padding_mask (B, Ta) | None, b_padding_mask (B, Tb) |
    None) → (a' (B, Ta, dim), b' (B, Tb, dim_b))``.

    Attributes:
        attn_a, attn_b: the :class:`~torch.nn.MultiheadAttention` of the ``a``-queries (``kdim=dim_b``)
            and of the ``b``-queries (``kdim=dim``).
        norm_a, norm_b: the LayerNorms.

    Cost: O(B·Ta·Tb·(dim + dim_b) + B·(Ta + Tb)·(dim + dim_b)²) time; O(B·(Ta + Tb)·(dim + dim_b))
    memory plus the attention scores, O(B·h·Ta·Tb) when the kernel materialises them.

    Example:
        >>> block = CoAttention(256, num_heads=8, dim_b=512)
        >>> img, txt = torch.randn(2, 49, 256), torch.randn(2, 12, 512)
        >>> pad = torch.zeros(2, 12, dtype=torch.bool); pad[1, 8:] = True
        >>> img2, txt2 = block(img, txt, b_padding_mask=pad)
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.0, dim_b: int | None = None) -> None:
        super().__init__()
        check_int(dim, "dim", 1)
        check_int(num_heads, "num_heads", 1)
        if dim_b is not None:
            check_int(dim_b, "dim_b", 1)
        dim_b = dim if dim_b is None else dim_b
        for width, name in ((dim, "dim"), (dim_b, "dim_b")):
            if width % num_heads:
                raise ValueError(f"{name} must be divisible by num_heads = {num_heads}, got {name} = {width}")
        check_dropout(dropout)
        self.dim = dim
        self.dim_b = dim_b
        self.num_heads = num_heads
        self.attn_a = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, kdim=dim_b, vdim=dim_b, batch_first=True
        )
        self.attn_b = nn.MultiheadAttention(
            dim_b, num_heads, dropout=dropout, kdim=dim, vdim=dim, batch_first=True
        )
        self.norm_a = nn.LayerNorm(dim)
        self.norm_b = nn.LayerNorm(dim_b)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        a: Tensor,
        b: Tensor,
        a_padding_mask: Tensor | None = None,
        b_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        _check_tokens(a, "a", self.dim, "dim")
        _check_tokens(b, "b", self.dim_b, "dim_b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(
                f"a and b must have the same batch size B, got {shape_str(a)} and {shape_str(b)}"
            )
        if a.device != b.device:
            raise ValueError(f"a is on {a.device} but b is on {b.device}")
        a_padding_mask = check_padding_mask(a_padding_mask, "a_padding_mask", a, "a")
        b_padding_mask = check_padding_mask(b_padding_mask, "b_padding_mask", b, "b")
        a_new = self.norm_a(a + self.dropout(_attend(self.attn_a, a, b, b_padding_mask)))
        b_new = self.norm_b(b + self.dropout(_attend(self.attn_b, b, a, a_padding_mask)))
        return a_new, b_new

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_b={self.dim_b}, num_heads={self.num_heads}"


class AttentionalPooler(nn.Module):
    """Pool a variable-length token sequence into ``num_queries`` vectors with learned queries.

    ``out = MHA(q = Q, k = LN(tokens), v = LN(tokens), key_padding_mask)`` with ``Q`` a learned
    ``(num_queries, dim)`` matrix shared by all samples: the attentional pooling of CoCa (Yu et al.
    2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models") and the pooling by
    multi-head attention of the Set Transformer (Lee et al. 2019, "Set Transformer"). With one query it
    is a learned, content-dependent replacement for mean / CLS pooling.

    Args:
        dim: output width (> 0, divisible by ``num_heads``).
        num_queries: number of learned queries (≥ 1).
        num_heads: number of attention heads (≥ 1).
        context_dim: width of the input tokens; ``None``: ``dim``.

    ``forward(tokens (B, T, context_dim), padding_mask (B, T) bool | None) → (B, num_queries, dim)``;
    ``True`` in ``padding_mask`` marks tokens to ignore (an all-padding sample pools to zeros).

    Cost: O(B·T·context_dim·dim + B·num_queries·T·dim) time, O(B·T·dim) memory.

    Example:
        >>> pool = AttentionalPooler(256, num_queries=1, context_dim=768)
        >>> pool(torch.randn(4, 50, 768)).shape
        torch.Size([4, 1, 256])
    """

    def __init__(
        self, dim: int, num_queries: int = 1, num_heads: int = 8, context_dim: int | None = None
    ) -> None:
        super().__init__()
        check_int(dim, "dim", 1)
        check_int(num_queries, "num_queries", 1)
        check_int(num_heads, "num_heads", 1)
        if context_dim is not None:
            check_int(context_dim, "context_dim", 1)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads = {num_heads}, got dim = {dim}")
        self.dim = dim
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.context_dim = dim if context_dim is None else context_dim
        self.query = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.norm_context = nn.LayerNorm(self.context_dim)
        self.attn = nn.MultiheadAttention(
            dim, num_heads, kdim=self.context_dim, vdim=self.context_dim, batch_first=True
        )

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        _check_tokens(tokens, "tokens", self.context_dim, "context_dim")
        padding_mask = check_padding_mask(padding_mask, "padding_mask", tokens, "tokens")
        context = self.norm_context(tokens)
        query = self.query.to(context.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return _attend(self.attn, query, context, padding_mask)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_queries={self.num_queries}, num_heads={self.num_heads}, "
            f"context_dim={self.context_dim}"
        )
