"""A small Vision Transformer trained from scratch (Dosovitskiy et al. 2021, "An Image is Worth 16x16
Words: Transformers for Image Recognition at Scale").

    vit = ViT(image_size=8, patch_size=2, in_channels=1, width=64, depth=2, num_heads=4)
    vit(images).shape                 # (N, 64): pooled features (CLS, attentional or mean pooling)
    vit.forward_tokens(images).shape  # (N, 16, 64): the final-layer patch tokens (REPA, ITM)

Patches of ``patch_size × patch_size`` pixels are embedded by a strided convolution, learned
position embeddings are added (and a learned CLS token prepended for ``pooling="cls"``), then
``depth`` pre-LayerNorm transformer blocks and a final LayerNorm::

    x = x + Attn(LN(x)),   x = x + MLP(LN(x)),   MLP = Linear(w, r·w) → GELU → Linear(r·w, w)

Pooling: ``"cls"`` — the final CLS token; ``"attention"`` — one learned query attending over the
patch tokens (:class:`alignkit.nn.AttentionalPooler`, CoCa's attentional pooling); ``"mean"`` — the
mean of the patch tokens.

Cost per image with P = (H/p)(W/p) patches, width w, depth L: O(L·(P²·w + P·w²·(4 + 2r))) time,
O(P² + P·w) activation memory per block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import check_choice, check_dropout, check_int
from alignkit.nn.attention import AttentionalPooler
from alignkit.towers.base import Tower, _as_float_tensor

__all__ = ["VIT_POOLINGS", "EncoderBlock", "ViT"]

VIT_POOLINGS = ("cls", "attention", "mean")


class EncoderBlock(nn.Module):
    """One pre-LayerNorm transformer encoder block (bidirectional attention, no mask).

    ``forward(x (B, T, dim)) → (B, T, dim)``; attention through
    :func:`torch.nn.functional.scaled_dot_product_attention` with a fused ``qkv`` projection.

    Cost: O(B·T²·dim + B·T·dim²·(4 + 2·mlp_ratio)).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width must be divisible by num_heads = {num_heads}, got width = {dim}")
        hidden = max(1, round(dim * mlp_ratio))
        self.num_heads, self.attn_dropout = num_heads, dropout
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
            for z in self.qkv(self.norm_attn(x)).split(d, -1)
        )
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.dropout(self.out(h.transpose(1, 2).reshape(b, t, d)))
        return x + self.dropout(self.mlp(self.norm_mlp(x)))


def _pair(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return check_int(value[0], name, 1), check_int(value[1], name, 1)
    v = check_int(value, name, 1, what=" (or a pair (H, W))")
    return v, v


class ViT(Tower):
    """Vision Transformer image tower: (N, C, H, W) or (N, H, W) images → (N, width) features.

    Args:
        image_size: H = W, or (H, W); each divisible by ``patch_size``.
        patch_size: p, or (p_h, p_w).
        in_channels: C (1 for grayscale; (N, H, W) input is taken as C = 1).
        width: token width w (= ``out_dim``), divisible by ``num_heads``.
        depth: number of transformer blocks (≥ 1).
        num_heads: attention heads.
        mlp_ratio: hidden width of each block's MLP as a multiple of w.
        dropout: dropout on the residual branches and the attention weights.
        pooling: ``"cls"`` | ``"attention"`` | ``"mean"`` (see the module docstring).
        seed: when given, the weights are initialised from this seed (the global RNG is untouched).

    ``out_dim = width``; ``frozen = False`` (a from-scratch tower is trained). ``prepare(images)``
    returns the images as a float tensor and checks their shape.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 8,
        patch_size: int | tuple[int, int] = 2,
        in_channels: int = 1,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pooling: str = "cls",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.image_size = _pair(image_size, "image_size")
        self.patch_size = _pair(patch_size, "patch_size")
        for axis, (size, patch) in enumerate(zip(self.image_size, self.patch_size, strict=True)):
            if size % patch:
                raise ValueError(
                    f"image_size must be divisible by patch_size along {'HW'[axis]}, got {size} and {patch}"
                )
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.width = check_int(width, "width", 1)
        self.depth = check_int(depth, "depth", 1)
        self.num_heads = check_int(num_heads, "num_heads", 1)
        if width % num_heads:
            raise ValueError(f"width must be divisible by num_heads = {num_heads}, got width = {width}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a number > 0, got {mlp_ratio!r}")
        dropout = check_dropout(dropout)
        check_choice(pooling, "pooling", VIT_POOLINGS)
        if seed is not None:
            check_int(seed, "seed", 0)
        self.pooling = pooling
        self.out_dim = width
        self.frozen = False
        self.grid = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.num_patches = self.grid[0] * self.grid[1]
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.patch_embed = nn.Conv2d(in_channels, width, self.patch_size, stride=self.patch_size)
            extra = 1 if pooling == "cls" else 0
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if extra else None
            self.pos_embed = nn.Parameter(torch.empty(1, self.num_patches + extra, width))
            self.blocks = nn.ModuleList(
                EncoderBlock(width, num_heads, float(mlp_ratio), dropout) for _ in range(depth)
            )
            self.norm = nn.LayerNorm(width)
            self.pool = AttentionalPooler(width, 1, num_heads) if pooling == "attention" else None
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            if self.cls_token is not None:
                nn.init.trunc_normal_(self.cls_token, std=0.02)

    def prepare(self, items: Any) -> Tensor:
        x = _as_float_tensor(items, "images")
        self._check(x)
        return x

    def _check(self, x: object) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(f"images must be a tensor, got {type(x).__name__}")
        h, w = self.image_size
        if x.dim() == 3 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, h, w):
            raise ValueError(
                f"images must have shape (N, {self.in_channels}, {h}, {w})"
                + (f" or (N, {h}, {w})" if self.in_channels == 1 else "")
                + f", got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            x = x.float()
        return x

    def _encode(self, x: Tensor) -> Tensor:
        """All final tokens (CLS first when pooling is "cls"), after the final LayerNorm."""
        x = self._check(x).to(self.patch_embed.weight.dtype)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, P, w), row-major patch order
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Final-layer patch tokens, (N, P, width), P = (H/p_h)·(W/p_w) in row-major order (no CLS)."""
        tokens = self._encode(x)
        return tokens[:, 1:] if self.cls_token is not None else tokens

    def forward(self, x: Tensor) -> Tensor:
        tokens = self._encode(x)
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "mean":
            return tokens.mean(dim=1)
        assert self.pool is not None
        return self.pool(tokens).squeeze(1)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, patch_size={self.patch_size}, in_channels={self.in_channels}, "
            f"width={self.width}, depth={self.depth}, num_heads={self.num_heads}, pooling={self.pooling!r}"
        )
