"""ImageBind-style binding: every modality is aligned to one anchor modality, and only to it.

    binder = Binder("image", {"image": img_enc, "text": txt_enc, "audio": aud_enc},
                    {"image": 512, "text": 384, "audio": 128}, embed_dim=256)
    binder({"image": img, "text": txt})["loss"].backward()       # (image, text) pairs
    binder({"image": img2, "audio": aud})["loss"].backward()     # (image, audio) pairs
    scores, idx = binder.retrieve("text", captions, "audio", clips, k=5)   # emergent text ↔ audio
    query = binder.compose({"image": img, "text": txt})          # embedding arithmetic

Girdhar et al. 2023, "ImageBind: One Embedding Space To Bind Them All".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from alignkit.functional._checks import check_features, check_int, check_positive, check_same_rows, shape_str
from alignkit.functional.retrieval import recall_at_k
from alignkit.losses.contrastive import InfoNCELoss
from alignkit.models.dual_encoder import (
    _check_module,
    _make_projection,
    _normalize,
    _set_frozen,
    _tower_features,
)

__all__ = ["Binder"]

# queries per block in retrieve(): at most this many similarity entries at once
_RETRIEVE_BLOCK_ENTRIES = 1 << 22


class Binder(nn.Module):
    """One joint space for many modalities, each bound to an anchor modality only (ImageBind).

    Each modality ``m`` has an encoder ``f_m`` (rows (N, dim_m) or tokens (B, T, dim_m), mean-pooled
    honouring a (B, T) mask with 1 = real token) and a projection ``W_m``; ``e_m = normalize(W_m f_m(x))``.
    A batch holds the anchor and any subset of the other modalities, all paired row by row; the loss
    is the symmetric InfoNCE of each (anchor, m) pair, summed::

        L = Σ_{m ≠ anchor in batch} ½ [ InfoNCE(e_anchor → e_m) + InfoNCE(e_m → e_anchor) ],
        InfoNCE(q → k) = −(1/N) Σ_i log softmax_j(q_i·k_j / τ)_i

    Two non-anchor modalities are never contrasted with each other; their alignment *emerges* through
    the anchor (ImageBind §3), and is used by :meth:`retrieve` and :meth:`compose`.

    Args:
        anchor: name of the anchor modality (a key of ``encoders``).
        encoders: ``{modality: nn.Module}``, anchor included, at least two modalities.
        dims: ``{modality: output width}``, the same keys as ``encoders``.
        embed_dim: width of the joint space.
        temperature: InfoNCE temperature τ (fixed; ImageBind uses 0.05–0.07).
        projection: ``"linear"`` (bias-free Linear, as ImageBind's heads) or ``"mlp"``.
        hidden_dim: hidden width of ``"mlp"`` projections.
        frozen: modalities whose encoder is locked (``requires_grad=False`` and kept in eval mode by
            :meth:`train`, run without gradients), e.g. ImageBind's frozen CLIP image and text towers.
            Listing the anchor *fixes* the anchor space: its projection head is locked too, so
            modalities bound one after another all target the same embedding (ImageBind keeps the
            anchor embedding fixed); a non-anchor modality keeps a trainable head (LiT-style).
            :meth:`freeze` does the same after construction, e.g. between two binding stages.

    Cost: the encoders plus O(N²·embed_dim) per (anchor, m) pair for the loss (tiled for large N).
    """

    def __init__(
        self,
        anchor: str,
        encoders: Mapping[str, nn.Module],
        dims: Mapping[str, int],
        embed_dim: int,
        temperature: float = 0.07,
        projection: str = "linear",
        hidden_dim: int | None = None,
        frozen: Iterable[str] = (),
    ) -> None:
        super().__init__()
        if not isinstance(encoders, Mapping) or len(encoders) < 2:
            raise ValueError(
                "encoders must be a mapping {modality: nn.Module} with the anchor and at least one other "
                f"modality, got {encoders if not isinstance(encoders, Mapping) else list(encoders)!r}"
            )
        if not isinstance(dims, Mapping):
            raise ValueError(f"dims must be a mapping {{modality: width}}, got {type(dims).__name__}")
        if anchor not in encoders:
            raise ValueError(f"anchor {anchor!r} is not a modality of encoders {list(encoders)}")
        if set(dims) != set(encoders):
            missing = sorted(set(encoders) - set(dims))
            extra = sorted(set(dims) - set(encoders))
            raise ValueError(
                f"dims must have one width per encoder: missing {missing}, unknown {extra} "
                f"(encoders: {list(encoders)})"
            )
        for name, enc in encoders.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"modality names must be non-empty strings without '.', got {name!r}")
            _check_module(enc, f"encoders[{name!r}]")
            check_int(dims[name], f"dims[{name!r}]", 1)
        check_int(embed_dim, "embed_dim", 1)
        check_positive(float(temperature), "temperature")
        if hidden_dim is not None:
            check_int(hidden_dim, "hidden_dim", 1)
        self.anchor = anchor
        self.embed_dim = embed_dim
        self.temperature = float(temperature)
        self.projection = projection
        self.dims = {name: int(dims[name]) for name in encoders}
        self.encoders = nn.ModuleDict(dict(encoders))
        self.heads = nn.ModuleDict(
            {name: _make_projection(projection, self.dims[name], embed_dim, hidden_dim) for name in encoders}
        )
        self.criterion = InfoNCELoss(temperature=self.temperature, symmetric=True)
        self.frozen: set[str] = set()
        for name in frozen:
            self._check_modality(name, "frozen")
        self.freeze(*frozen)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, anchor included, in registration order."""
        return tuple(self.encoders.keys())

    def _check_modality(self, modality: object, name: str) -> str:
        if modality not in self.dims:
            raise ValueError(f"{name} must be one of the modalities {list(self.dims)}, got {modality!r}")
        return modality  # type: ignore[return-value]

    @property
    def anchor_fixed(self) -> bool:
        """Whether the anchor's encoder and projection head are both locked."""
        return self.anchor in self.frozen

    def freeze(self, *modalities: str) -> Binder:
        """Lock the encoders of ``modalities`` (and, for the anchor, its projection head as well).

        Typical sequential binding: train (anchor, text) pairs, ``freeze(anchor)``, then train
        (anchor, audio) pairs; text ↔ anchor retrieval is then unchanged by the second stage. Parameters
        already in an optimiser simply stop receiving gradients (``requires_grad=False``).
        """
        for name in modalities:
            self._check_modality(name, "modalities")
        for name in modalities:
            self.frozen.add(name)
            _set_frozen(self.encoders[name], True, self.training)
            if name == self.anchor:
                _set_frozen(self.heads[name], True, self.training)
        return self

    def train(self, mode: bool = True) -> Binder:
        """As ``nn.Module.train``, but frozen encoders (and a fixed anchor's head) stay in eval mode."""
        super().train(mode)
        for name in self.frozen:
            self.encoders[name].eval()
            if name == self.anchor:
                self.heads[name].eval()
        return self

    def embed(self, modality: str, x: Any, mask: Tensor | None = None) -> Tensor:
        """(N, embed_dim) L2-normalised embeddings of ``x`` in ``modality``. Cost: the encoder plus
        O(N·dim·embed_dim)."""
        self._check_modality(modality, "modality")
        with torch.set_grad_enabled(torch.is_grad_enabled() and modality not in self.frozen):
            feats = _tower_features(
                self.encoders[modality], x, f"encoders[{modality!r}] output", self.dims[modality], mask
            )
        fixed = modality == self.anchor and self.anchor_fixed
        with torch.set_grad_enabled(torch.is_grad_enabled() and not fixed):
            return _normalize(self.heads[modality](feats))

    def forward(self, batch: Mapping[str, Any], masks: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
        """Loss of one batch ``{anchor: x, m1: x1, …}`` (rows paired across modalities).

        Returns ``{"loss": Σ pair losses, "pair_losses": {m: loss(anchor, m)}, "embeddings": {m: e_m}}``.
        ``masks`` optionally maps modalities to (B, T) token masks.
        """
        if not isinstance(batch, Mapping):
            raise ValueError(f"batch must be a mapping {{modality: input}}, got {type(batch).__name__}")
        masks = {} if masks is None else dict(masks)
        for name in batch:
            self._check_modality(name, "batch keys")
        for name in masks:
            self._check_modality(name, "masks keys")
        if self.anchor not in batch:
            raise ValueError(
                f"batch must contain the anchor modality {self.anchor!r} (every loss pairs it with another "
                f"modality), got keys {list(batch)}"
            )
        others = [name for name in batch if name != self.anchor]
        if not others:
            raise ValueError(
                f"batch must contain at least one modality besides the anchor {self.anchor!r}, "
                f"got {list(batch)}"
            )
        e_anchor = self.embed(self.anchor, batch[self.anchor], masks.get(self.anchor))
        embeddings = {self.anchor: e_anchor}
        pair_losses: dict[str, Tensor] = {}
        for name in others:
            e = self.embed(name, batch[name], masks.get(name))
            check_same_rows(e_anchor, e, f"batch[{self.anchor!r}]", f"batch[{name!r}]")
            embeddings[name] = e
            pair_losses[name] = self.criterion(e_anchor, e)
        total = torch.stack(list(pair_losses.values())).sum()
        return {"loss": total, "pair_losses": pair_losses, "embeddings": embeddings}

    def _embedding_or_input(
        self, modality: str | None, x: Any, mask: Tensor | None, name: str, mod_name: str
    ) -> Tensor:
        if modality is None:
            check_features(x, name)
            if x.shape[1] != self.embed_dim:
                raise ValueError(
                    f"{name} must be (N, {self.embed_dim}) embeddings (embed_dim) when its modality is None, "
                    f"got {shape_str(x)}"
                )
            return _normalize(x)
        self._check_modality(modality, mod_name)
        return self.embed(modality, x, mask)

    @torch.no_grad()
    def retrieve(
        self,
        query_mod: str | None,
        x: Any,
        gallery_mod: str | None,
        gallery_x: Any,
        k: int = 5,
        query_mask: Tensor | None = None,
        gallery_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The ``k`` gallery items most cosine-similar to each query: ``(scores (N, k), indices (N, k))``,
        best first.

        ``x`` is embedded in ``query_mod`` and ``gallery_x`` in ``gallery_mod`` (any two modalities,
        e.g. two non-anchor ones for emergent retrieval); a modality of ``None`` means the input is
        already an (N, embed_dim) embedding, e.g. from :meth:`compose`. Runs without gradients.

        Cost: O(N·M·embed_dim) time for N queries and M gallery items, O(min(N·M, 4M entries)) memory
        (queries are processed in blocks).
        """
        q = self._embedding_or_input(query_mod, x, query_mask, "x", "query_mod")
        g = self._embedding_or_input(gallery_mod, gallery_x, gallery_mask, "gallery_x", "gallery_mod")
        m = g.shape[0]
        check_int(k, "k", 1, m, f" (gallery of {m} items)")
        block = max(1, _RETRIEVE_BLOCK_ENTRIES // m)
        scores, indices = [], []
        gt = g.to(q.dtype).T
        for start in range(0, q.shape[0], block):
            top = torch.topk(q[start : start + block] @ gt, k, dim=1)
            scores.append(top.values)
            indices.append(top.indices)
        return torch.cat(scores), torch.cat(indices)

    @torch.no_grad()
    def recall(
        self,
        query_mod: str | None,
        x: Any,
        gallery_mod: str | None,
        gallery_x: Any,
        k: int | tuple[int, ...] = (1, 5, 10),
    ) -> dict[str, float]:
        """Recall@K (and ranks, mAP) of :func:`alignkit.functional.recall_at_k` for paired rows (query
        ``i`` ↔ gallery item ``i``) between ``query_mod`` and ``gallery_mod``. Cost O(N·M·embed_dim)."""
        q = self._embedding_or_input(query_mod, x, None, "x", "query_mod")
        g = self._embedding_or_input(gallery_mod, gallery_x, None, "gallery_x", "gallery_mod")
        return recall_at_k(q, g, k=k)

    def compose(self, inputs: Mapping[str, Any], masks: Mapping[str, Tensor] | None = None) -> Tensor:
        """Embedding arithmetic across modalities (ImageBind §4.3): ``normalize(Σ_m normalize(e_m))``.

        ``inputs`` maps modalities to paired inputs (same number of rows); the result is (N, embed_dim)
        with unit rows (a zero sum stays a zero vector), ready to :meth:`retrieve` in a third
        modality with ``query_mod=None``. Cost: the encoders plus O(N·embed_dim) per modality.
        """
        if not isinstance(inputs, Mapping) or not inputs:
            raise ValueError(f"inputs must be a non-empty mapping {{modality: input}}, got {inputs!r}")
        masks = {} if masks is None else dict(masks)
        total: Tensor | None = None
        first = ""
        for name, x in inputs.items():
            self._check_modality(name, "inputs keys")
            e = self.embed(name, x, masks.get(name))
            if total is None:
                total, first = e, name
            else:
                check_same_rows(total, e, f"inputs[{first!r}]", f"inputs[{name!r}]")
                total = total + e
        assert total is not None
        return _normalize(total)

    def extra_repr(self) -> str:
        return (
            f"anchor={self.anchor!r}, modalities={list(self.dims)}, embed_dim={self.embed_dim}, "
            f"temperature={self.temperature}, projection={self.projection!r}, frozen={sorted(self.frozen)}"
        )
