"""Image–text matching by co-attention fusion, trained with an alignment term and a matching term.

ALBEF (Li et al. 2021, "Align before Fuse: Vision and Language Representation Learning with Momentum
Distillation") trains two objectives at once: an image–text contrastive loss that aligns the
*unimodal* embeddings before fusion (L_align), and an image–text matching loss (L_task) on the
*fused* representation, a binary matched / not-matched classifier whose negatives are mined in the
batch among the pairs the contrastive similarity finds hardest. The fusion here is a stack of
bidirectional co-attention layers (ViLBERT, Lu et al. 2019), each stream querying the other.
Example::

    matcher = ImageTextMatcher(image_dim=768, text_dim=512, dim=256, num_heads=8, num_layers=2)
    loss = matcher.loss(patches, words, text_padding_mask=pad)    # L_align + L_task
    logits = matcher(patches, words, text_padding_mask=pad)       # (B,): pair i ↔ text i matched?
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
from alignkit.functional.contrastive import clip_loss
from alignkit.losses.contrastive import LearnableTemperature
from alignkit.nn.attention import AttentionalPooler, CoAttention, check_padding_mask
from alignkit.nn.heads import ProjectionHead

__all__ = ["MATCHER_POOLING", "ImageTextMatcher", "masked_mean"]

MATCHER_POOLING = ("mean", "attention")


def masked_mean(tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Mean over the tokens that are not padding: (B, T, d), (B, T) bool (True = padding) → (B, d).

    ``out_b = Σ_t [¬pad_bt] x_bt / max(1, Σ_t [¬pad_bt])``: a sample with no real token gives a zero
    vector. Padded positions are excluded exactly (their values never enter the sum, even if NaN-free
    garbage). Time and memory O(B·T·d).
    """
    if padding_mask is None:
        return tokens.mean(1)
    keep = ~padding_mask
    summed = torch.where(keep[..., None], tokens, tokens.new_zeros(())).sum(1)
    return summed / keep.sum(1, keepdim=True).clamp_min(1).to(tokens.dtype)


class ImageTextMatcher(nn.Module):
    """Co-attention fusion of image and text tokens with a matched / not-matched head.

    Architecture, for image tokens ``I`` (B, T_i, image_dim) and text tokens ``W`` (B, T_t, text_dim)::

        u = I·P_i,  v = W·P_t                                  linear projections to ``dim``
        e_i = normalize(masked_mean(u)),  e_t = normalize(masked_mean(v))     unimodal embeddings
        (u', v') = CoAttention_L ∘ … ∘ CoAttention_1 (u, v)   bidirectional, key-padding masks
        logit = MLP([pool(u') ‖ pool(v')])                     pool: masked mean or learned query

    Objective (ALBEF, Li et al. 2021), ``L = α·L_align + β·L_task``:

    * ``L_align = ½[CE(s·E_i E_tᵀ, diag) + CE(s·E_t E_iᵀ, diag)]``, the symmetric InfoNCE (CLIP form,
      Radford et al. 2021) of the unimodal embeddings, with a learnable scale ``s = 1/τ`` ≤ 100.
    * ``L_task``: binary cross-entropy of the matching logit over 3B pairs: the B true pairs
      (label 1) and, as in-batch hard negatives (label 0), for each image the most similar
      non-matching text and for each text the most similar non-matching image, the similarity being
      ``e_i·e_t`` (no gradient through the mining). Needs B ≥ 2.

    Masks follow PyTorch: ``(B, T)`` bool, ``True`` = padding. Padded tokens are ignored as attention
    keys and excluded from every pooling, so their content never changes any output. A sample whose
    tokens are all padding pools to zeros.

    Args:
        image_dim, text_dim: widths of the input tokens.
        dim: joint width (divisible by ``num_heads``).
        num_heads: attention heads per co-attention layer.
        num_layers: number of co-attention layers (≥ 1).
        temperature: initial τ of the alignment loss (scale 1/τ, clamped ≤ 100).
        learnable_temperature: learn τ (ALBEF, CLIP) or keep it fixed.
        dropout: dropout of the co-attention layers, in [0, 1).
        pooling: ``"mean"`` (masked mean) or ``"attention"`` (a learned query per stream,
            :class:`alignkit.nn.AttentionalPooler`) for the fused tokens.
        align_weight, task_weight: α, β ≥ 0.

    Cost per pair: O(L·(T_i·T_t·dim + (T_i + T_t)·dim²)); the loss runs the fusion on 3B pairs and
    the B×B similarity of the unimodal embeddings (O(B²·dim)).

    Example::

        matcher = ImageTextMatcher(768, 512, 256)
        opt = torch.optim.AdamW(matcher.parameters(), lr=1e-4)
        parts = matcher.loss(img_tokens, txt_tokens, text_padding_mask=pad, output_dict=True)
        parts["loss"].backward()                       # parts: loss, align, task
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        dim: int,
        num_heads: int = 8,
        num_layers: int = 1,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        dropout: float = 0.0,
        pooling: str = "mean",
        align_weight: float = 1.0,
        task_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_int(image_dim, "image_dim", 1)
        check_int(text_dim, "text_dim", 1)
        check_int(dim, "dim", 1)
        check_int(num_heads, "num_heads", 1)
        check_int(num_layers, "num_layers", 1)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads = {num_heads}, got dim = {dim}")
        check_positive(float(temperature), "temperature")
        check_choice(pooling, "pooling", MATCHER_POOLING)
        check_positive(float(align_weight), "align_weight", allow_zero=True)
        check_positive(float(task_weight), "task_weight", allow_zero=True)
        self.image_dim = image_dim
        self.text_dim = text_dim
        self.dim = dim
        self.num_heads = num_heads
        self.pooling = pooling
        self.align_weight = float(align_weight)
        self.task_weight = float(task_weight)
        self.image_proj = ProjectionHead.linear(image_dim, dim, bias=True)
        self.text_proj = ProjectionHead.linear(text_dim, dim, bias=True)
        self.layers = nn.ModuleList(CoAttention(dim, num_heads, dropout=dropout) for _ in range(num_layers))
        self.image_pool: AttentionalPooler | None = None
        self.text_pool: AttentionalPooler | None = None
        if pooling == "attention":
            self.image_pool = AttentionalPooler(dim, 1, num_heads)
            self.text_pool = AttentionalPooler(dim, 1, num_heads)
        self.head = ProjectionHead(2 * dim, 1, hidden_dim=dim, num_layers=2, activation="gelu")
        self.logit_scale = LearnableTemperature(temperature, learnable=learnable_temperature)

    # ------------------------------------------------------------------------------------------
    # Pieces

    def _project(
        self,
        image_tokens: Tensor,
        text_tokens: Tensor,
        image_padding_mask: Tensor | None,
        text_padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        check_features(image_tokens, "image_tokens", ndim=3)
        check_features(text_tokens, "text_tokens", ndim=3)
        if image_tokens.shape[-1] != self.image_dim:
            raise ValueError(
                f"image_tokens must have shape (B, T, image_dim={self.image_dim}), "
                f"got {shape_str(image_tokens)}"
            )
        if text_tokens.shape[-1] != self.text_dim:
            raise ValueError(
                f"text_tokens must have shape (B, T, text_dim={self.text_dim}), got {shape_str(text_tokens)}"
            )
        if image_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(
                f"image_tokens and text_tokens must have the same batch size B, got "
                f"{shape_str(image_tokens)} and {shape_str(text_tokens)}"
            )
        if image_tokens.device != text_tokens.device:
            raise ValueError(
                f"image_tokens is on {image_tokens.device} but text_tokens is on {text_tokens.device}"
            )
        image_padding_mask = check_padding_mask(
            image_padding_mask, "image_padding_mask", image_tokens, "image_tokens"
        )
        text_padding_mask = check_padding_mask(
            text_padding_mask, "text_padding_mask", text_tokens, "text_tokens"
        )
        dtype = next(self.parameters()).dtype
        u = self.image_proj(image_tokens.to(dtype))
        v = self.text_proj(text_tokens.to(dtype))
        return u, v, image_padding_mask, text_padding_mask

    def _fuse(self, u: Tensor, v: Tensor, image_mask: Tensor | None, text_mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            u, v = layer(u, v, image_mask, text_mask)
        if self.image_pool is not None and self.text_pool is not None:
            pi = self.image_pool(u, image_mask)[:, 0]
            pt = self.text_pool(v, text_mask)[:, 0]
        else:
            pi, pt = masked_mean(u, image_mask), masked_mean(v, text_mask)
        return self.head(torch.cat([pi, pt], dim=-1))[:, 0]

    def embed_image(self, image_tokens: Tensor, image_padding_mask: Tensor | None = None) -> Tensor:
        """The unimodal image embedding ``normalize(masked_mean(I·P_i))``: (B, T_i, image_dim) → (B, dim)."""
        check_features(image_tokens, "image_tokens", ndim=3)
        if image_tokens.shape[-1] != self.image_dim:
            raise ValueError(
                f"image_tokens must have shape (B, T, image_dim={self.image_dim}), "
                f"got {shape_str(image_tokens)}"
            )
        mask = check_padding_mask(image_padding_mask, "image_padding_mask", image_tokens, "image_tokens")
        u = self.image_proj(image_tokens.to(next(self.parameters()).dtype))
        return F.normalize(masked_mean(u, mask), dim=-1, eps=EPS)

    def embed_text(self, text_tokens: Tensor, text_padding_mask: Tensor | None = None) -> Tensor:
        """The unimodal text embedding ``normalize(masked_mean(W·P_t))``: (B, T_t, text_dim) → (B, dim)."""
        check_features(text_tokens, "text_tokens", ndim=3)
        if text_tokens.shape[-1] != self.text_dim:
            raise ValueError(
                f"text_tokens must have shape (B, T, text_dim={self.text_dim}), got {shape_str(text_tokens)}"
            )
        mask = check_padding_mask(text_padding_mask, "text_padding_mask", text_tokens, "text_tokens")
        v = self.text_proj(text_tokens.to(next(self.parameters()).dtype))
        return F.normalize(masked_mean(v, mask), dim=-1, eps=EPS)

    # ------------------------------------------------------------------------------------------
    # Public calls

    def forward(
        self,
        image_tokens: Tensor,
        text_tokens: Tensor,
        image_padding_mask: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Matching logits of the B pairs (image b, text b): (B,), > 0 means "matched".

        ``torch.sigmoid`` of the logit is the match probability. To score image i against text j,
        pass the rows re-indexed (``text_tokens[j]``); every pair is fused independently.
        """
        u, v, mi, mt = self._project(image_tokens, text_tokens, image_padding_mask, text_padding_mask)
        return self._fuse(u, v, mi, mt)

    def loss(
        self,
        image_tokens: Tensor,
        text_tokens: Tensor,
        image_padding_mask: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        output_dict: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """``α·L_align + β·L_task`` on a batch of B ≥ 2 matching pairs (row b of each side).

        Returns the scalar loss, or with ``output_dict=True`` ``{"loss", "align", "task",
        "match_accuracy"}`` where ``match_accuracy`` is the fraction of the 3B pairs (B positives, 2B
        hard negatives) the head classifies correctly (no gradient).
        """
        u, v, mi, mt = self._project(image_tokens, text_tokens, image_padding_mask, text_padding_mask)
        batch = u.shape[0]
        if batch < 2:
            raise ValueError(
                "image_tokens must hold at least 2 pairs for in-batch negatives, "
                f"got {shape_str(image_tokens)}"
            )
        ei = F.normalize(masked_mean(u, mi), dim=-1, eps=EPS)
        et = F.normalize(masked_mean(v, mt), dim=-1, eps=EPS)
        align = clip_loss(ei, et, self.logit_scale())
        with torch.no_grad():
            sim = ei @ et.T
            sim.fill_diagonal_(float("-inf"))
            hard_text = sim.argmax(dim=1)  # for image b, the most similar other text
            hard_image = sim.argmax(dim=0)  # for text b, the most similar other image

        fused_u = torch.cat([u, u, u[hard_image]])
        fused_v = torch.cat([v, v[hard_text], v])
        fused_mi = None if mi is None else torch.cat([mi, mi, mi[hard_image]])
        fused_mt = None if mt is None else torch.cat([mt, mt[hard_text], mt])
        logits = self._fuse(fused_u, fused_v, fused_mi, fused_mt)
        labels = torch.zeros_like(logits)
        labels[:batch] = 1.0
        task = F.binary_cross_entropy_with_logits(logits, labels)
        total = self.align_weight * align + self.task_weight * task
        if not output_dict:
            return total
        with torch.no_grad():
            accuracy = ((logits > 0) == (labels > 0.5)).to(logits.dtype).mean()
        return {"loss": total, "align": align, "task": task, "match_accuracy": accuracy}

    def extra_repr(self) -> str:
        return (
            f"image_dim={self.image_dim}, text_dim={self.text_dim}, dim={self.dim}, "
            f"num_heads={self.num_heads}, num_layers={len(self.layers)}, pooling={self.pooling!r}, "
            f"align_weight={self.align_weight}, task_weight={self.task_weight}"
        )
