"""The ``itm`` recipe: CLIP plus image–text matching through :class:`~alignkit.nn.CoAttention`, with
hard negatives mined from the contrastive similarities, and matcher re-ranking at retrieval time
(ALBEF, Li et al. 2021, "Align before Fuse")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.recipes.systems.base import RecipeSystem, device_of, normalize, to_device

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["ITMSystem", "caption_groups"]

#: Image–text pairs scored by the matcher per forward at evaluation (bounds the fusion's memory).
PAIR_CHUNK = 2048


def caption_groups(data: RecipeData) -> Tensor:
    """(N,) int64 group ids over all rows: the source's ``groups``, else rows with an identical caption
    share one (all of them are correct matches, so none may serve as a hard negative of another)."""
    if data.groups is not None:
        return torch.as_tensor(data.groups, dtype=torch.long)
    assert data.captions is not None
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in data.captions], dtype=torch.long)


class ITMSystem(RecipeSystem):
    """The ``itm`` recipe.

    * Contrastive part (as the ``clip`` recipe, LiT with the text locked): a :class:`~alignkit.towers.vit.ViT`
      trained from scratch (mean-pooled patch tokens) → linear projection; the frozen MiniLM caption
      embedding → linear projection; CLIP loss with a learnable temperature.
    * Matching part, :class:`~alignkit.models.ImageTextMatcher` (ALBEF's fusion with ViLBERT's
      co-attention): the ViT's patch tokens (B, P, w) and MiniLM's token embeddings (B, T, 384), each
      projected to w, go through ``model.fusion_layers`` :class:`~alignkit.nn.CoAttention` blocks; the
      masked means of the fused streams, concatenated, feed an MLP with one logit ("matched"). Each
      batch scores its B pairs (label 1), each image with one hard-negative
      text and each text with one hard-negative image (label 0), the negatives drawn by
      :func:`alignkit.functional.sample_hard_negatives` from ``logit_scale · image @ textᵀ`` (rows with
      an identical caption are never drawn); loss = CLIP + ``loss.itm_weight`` · BCE over the 3B pairs.
    * Evaluation (:meth:`extra_metrics`): for each test query the contrastive top ``loss.itm_top_k``
      candidates are re-scored by the matcher (Q·k pairs, batched, never Q·N) and re-ordered
      (:func:`alignkit.functional.reranked_recall_at_k`), strict and group-aware.
    """

    recipe = "itm"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        super().__init__()
        from alignkit.losses import CLIPLoss
        from alignkit.models.matching import ImageTextMatcher
        from alignkit.recipes.data import caption_tokens
        from alignkit.towers.vit import ViT

        if data.captions is None or data.kind_a != "image" or data.kind_b != "features":
            raise ValueError(
                "recipe 'itm' needs images on side a (a ViT trained from scratch) and captions on side b "
                "embedded by a frozen sentence-transformers model"
            )
        m, d = cfg["model"], cfg["data"]
        self.seed = int(cfg["seed"])
        self.top_k = int(cfg["loss"]["itm_top_k"])
        self.itm_weight = float(cfg["loss"]["itm_weight"])
        self.negative_temperature = cfg["loss"]["itm_negative_temperature"]
        width, heads = int(m["image_width"]), int(m["fusion_heads"])
        channels, h, w = data.image_shape()
        patch = 2 if max(h, w) <= 16 else max(1, max(h, w) // 8)
        self.vit = ViT(
            image_size=(h, w), patch_size=patch, in_channels=channels, width=width, depth=int(m["vit_depth"]),
            num_heads=heads, dropout=m["dropout"], pooling="mean",
        )
        text_dim = data.width("b")
        proj = nn.Linear if m["projection"] == "linear" else _mlp
        self.proj_image = proj(width, m["embed_dim"])
        self.proj_text = proj(text_dim, m["embed_dim"])
        self.clip = CLIPLoss(init_temperature=m["init_temperature"], learn_temperature=m["learn_temperature"])
        tokens, padding = caption_tokens(list(data.captions), m["tower_b_path"] or d["text_model"])
        # row-aligned with the data; plain attributes, not buffers: never saved in a checkpoint
        self.tokens, self.padding = tokens, padding
        self.groups = caption_groups(data)
        # the library's co-attention matcher (alignkit.models.ImageTextMatcher): token projections,
        # model.fusion_layers CoAttention blocks, masked-mean pooling of both streams, an MLP logit
        self.matcher = ImageTextMatcher(
            image_dim=width, text_dim=int(tokens.shape[2]), dim=width, num_heads=heads,
            num_layers=int(m["fusion_layers"]), dropout=m["dropout"],
        )

    # ------------------------------------------------------------------------------------------ batches

    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        return [data.images[rows], data.text[rows], self.tokens[rows], self.padding[rows], self.groups[rows]]

    def _image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(patch tokens (B, P, w), joint embedding (B, E)) from one ViT pass."""
        tokens = self.vit.forward_tokens(images)
        return tokens, self.proj_image(tokens.mean(dim=1))

    def match_logits(
        self, image_tokens: Tensor, text_tokens: Tensor, padding: Tensor | None = None
    ) -> Tensor:
        """(B,) "matched" logits of B image–text pairs (:class:`~alignkit.models.ImageTextMatcher`):
        image_tokens (B, P, w), text_tokens (B, T, D) raw token embeddings, padding (B, T) bool (True =
        padding)."""
        if padding is not None:  # drop the columns that are padding for every pair
            keep = ~padding.all(dim=0)
            text_tokens, padding = text_tokens[:, keep], padding[:, keep]
        return self.matcher(image_tokens, text_tokens, text_padding_mask=padding)

    def _losses(self, batch: Sequence[Tensor], generator: torch.Generator | None) -> dict[str, Any]:
        from alignkit.functional import sample_hard_negatives

        images, text, tokens, padding, groups = batch[:5]
        image_tokens, za = self._image(images)
        zb = self.proj_text(text)
        clip = self.clip(za, zb)
        out: dict[str, Any] = {"loss_clip": clip.detach()}
        if self.itm_weight == 0:
            return {"loss": clip, **out}
        with torch.no_grad():
            tau = self.negative_temperature
            scale = self.clip.logit_scale if tau is None else 1.0 / tau
            sim = scale * normalize(za) @ normalize(zb).T
            same = groups[:, None] == groups[None, :]
            neg_text = sample_hard_negatives(sim, same, generator=generator)  # per image
            neg_image = sample_hard_negatives(sim.T, same, generator=generator)  # per text
        rows = torch.arange(len(images), device=images.device)
        i_ok, t_ok = neg_text >= 0, neg_image >= 0
        img_idx = torch.cat([rows, rows[i_ok], neg_image[t_ok]])
        txt_idx = torch.cat([rows, neg_text[i_ok], rows[t_ok]])
        labels = torch.cat([torch.ones(len(rows)), torch.zeros(int(i_ok.sum()) + int(t_ok.sum()))]).to(za)
        logits = self.match_logits(image_tokens[img_idx], tokens[txt_idx], padding[txt_idx])
        itm = F.binary_cross_entropy_with_logits(logits, labels)
        with torch.no_grad():
            out["itm_accuracy"] = ((logits > 0).to(labels) == labels).float().mean()
        out["loss_itm"] = itm.detach()
        out["temperature"] = 1.0 / self.clip.logit_scale.detach()
        return {"loss": clip + self.itm_weight * itm, **out}

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        return self._losses(batch, None)

    def validation_loss(self, batch: Sequence[Tensor]) -> Tensor:
        device = batch[0].device
        generator = torch.Generator(device=device).manual_seed(self.seed)  # the same negatives each epoch
        return self._losses(batch, generator)["loss"]

    # -------------------------------------------------------------------------------------- embeddings

    def encode_image(self, images: Tensor) -> Tensor:
        return self._image(images)[1]

    def encode_text(self, text: Tensor) -> Tensor:
        return self.proj_text(text)

    def image_features(self, images: Tensor) -> Tensor:
        return self.vit(images)

    # -------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def _scores(
        self, image_tokens: Tensor, tokens: Tensor, padding: Tensor, img_idx: Tensor, txt_idx: Tensor
    ) -> Tensor:
        """Matcher logits of the pairs (img_idx[i], txt_idx[i]), PAIR_CHUNK pairs per forward."""
        out = [
            self.match_logits(
                image_tokens[img_idx[s : s + PAIR_CHUNK]],
                tokens[txt_idx[s : s + PAIR_CHUNK]],
                padding[txt_idx[s : s + PAIR_CHUNK]],
            )
            for s in range(0, len(img_idx), PAIR_CHUNK)
        ]
        return torch.cat(out).float()

    @torch.no_grad()
    def extra_metrics(self, data: RecipeData) -> dict[str, float]:
        """Re-ranked retrieval on the test split: image → text and text → image R@1 / R@5 after the
        matcher re-orders each query's contrastive top ``loss.itm_top_k`` by its logit alone (keys
        ``*_rerank``, ALBEF) or by matcher logit + contrastive logit ``logit_scale·cos`` (``*_rerank_sum``,
        as BLIP, Li et al. 2022), strict (own partner) and group-aware (``*_grouped_rerank*``, any row
        with the identical caption), and the re-ranking ceiling ``*_recall@k_candidates`` (the positive
        is among the k candidates).
        The same numbers without re-ranking are the run's ``i2t_recall@K`` / ``*_grouped`` keys."""
        from alignkit.functional import knn, reranked_recall_at_k
        from alignkit.recipes.evaluate import retrieval_groups

        rows = data.splits["test"]
        n = len(rows)
        k = min(self.top_k, n)
        ks = tuple(x for x in (1, 5) if x <= k)
        device = device_of(self)
        image_tokens, za = self._image(to_device(data.images[rows], device))
        image = normalize(za)
        text = normalize(self.proj_text(to_device(data.text[rows], device)))
        tokens, padding = self.tokens[rows].to(device), self.padding[rows].to(device)
        ids = torch.arange(n, device=device)
        groups = retrieval_groups(data, rows)
        out: dict[str, float] = {"itm_top_k": float(k)}
        for name, query, gallery in (("i2t", image, text), ("t2i", text, image)):
            cand = knn(query, k, y=gallery, metric="dot", exclude_self=False).indices  # (n, k)
            q_idx = ids[:, None].expand(-1, k).reshape(-1)
            g_idx = cand.reshape(-1)
            img_idx, txt_idx = (q_idx, g_idx) if name == "i2t" else (g_idx, q_idx)
            scores = self._scores(image_tokens, tokens, padding, img_idx, txt_idx).reshape(n, k)
            contrastive = (query[:, None, :] * gallery[cand]).sum(-1) * self.clip.logit_scale  # (n, k)
            id_sets = [("", ids)] + ([("_grouped", groups.to(device))] if groups is not None else [])
            for suffix, gid in id_sets:
                for tag, score in (("rerank", scores), ("rerank_sum", scores + contrastive.float())):
                    r = reranked_recall_at_k(cand, score, gid, gid, k=ks)
                    out.update({f"{name}_recall@{x}{suffix}_{tag}": r[f"recall@{x}"] for x in ks})
                ceiling = reranked_recall_at_k(cand, scores, gid, gid, k=k)[f"recall@{k}"]
                out[f"{name}_recall@k{suffix}_candidates"] = ceiling
        return out


def _mlp(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.GELU(), nn.Linear(dim_out, dim_out))
