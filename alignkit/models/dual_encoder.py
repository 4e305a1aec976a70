"""CLIP / LiT dual encoder: two towers, a projection each into one joint space, a contrastive loss.

    model = DualEncoder(image_tower, text_tower, dim_a=512, dim_b=384, embed_dim=256)
    out = model(images, captions)            # {"loss", "logit_scale", "emb_a", "emb_b"}
    out["loss"].backward()

    lit = DualEncoder(image_tower, text_tower, 512, 384, 256, freeze_a=True)   # LiT: locked image tower
    lit.zero_shot_classifier(prompt_embeddings)                              # (C, K, 256) → (C, 256)
    logits = lit.classify(images)                                            # (N, C)

The model/loss split follows open_clip: the model produces L2-normalised embeddings, the loss module
(:class:`alignkit.losses.CLIPLoss` by default) owns the learnable temperature and returns the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import (
    EPS,
    check_choice,
    check_features,
    check_int,
    check_positive,
    check_same_rows,
    shape_str,
)
from alignkit.losses.contrastive import CLIPLoss
from alignkit.nn.features import reduce_features
from alignkit.nn.heads import ProjectionHead

__all__ = ["PROJECTIONS", "DualEncoder"]

PROJECTIONS = ("linear", "mlp")


# ------------------------------------------------------------------------------------------------
# Shared by the models of this package (CrossModalBYOL and Binder import these).


def _check_module(module: object, name: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
    return module


def _tower_features(tower: nn.Module, x: Any, name: str, dim: int, mask: Tensor | None = None) -> Tensor:
    """Run ``tower`` on ``x`` and return one (N, dim) row per sample.

    A tower may return rows (N, dim) or tokens (B, T, dim); tokens are mean-pooled over T, over the
    tokens where ``mask`` (B, T) is non-zero when a mask is given (1 = real token, the Hugging Face
    attention-mask convention; a row with no real token pools to a zero vector). O(B·T·dim).
    """
    out = tower(x)
    if not isinstance(out, Tensor):
        raise ValueError(
            f"{name} must return a torch.Tensor of shape (N, {dim}) or (B, T, {dim}), "
            f"got {type(out).__name__}"
        )
    check_features(out, name, ndim=(2, 3))
    if out.shape[-1] != dim:
        raise ValueError(f"{name} must have {dim} features (the declared dim), got shape {shape_str(out)}")
    if mask is not None and out.dim() == 2:
        raise ValueError(
            f"a mask applies to token outputs (B, T, {dim}) only, but {name} has shape {shape_str(out)}"
        )
    return reduce_features(out, "mean", mask)


def _make_projection(projection: str, in_dim: int, out_dim: int, hidden_dim: int | None) -> ProjectionHead:
    check_choice(projection, "projection", PROJECTIONS)
    if projection == "linear":
        return ProjectionHead.linear(in_dim, out_dim)
    width = max(in_dim, out_dim) if hidden_dim is None else hidden_dim
    return ProjectionHead(in_dim, out_dim, hidden_dim=width, num_layers=2, activation="gelu")


def _set_frozen(module: nn.Module, frozen: bool, training: bool) -> None:
    """Freeze (``requires_grad=False`` and eval mode) or unfreeze (trainable, ``training`` mode)."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    module.train(False if frozen else training)


def _normalize(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=EPS)


def _loss_scale(loss: nn.Module) -> Tensor | None:
    """The logit multiplier a loss module uses: CLIPLoss's ``logit_scale``, or ``1/temperature``."""
    scale = getattr(loss, "logit_scale", None)
    if isinstance(scale, Tensor):
        return scale
    temperature = getattr(loss, "temperature", None)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0:
        return torch.tensor(1.0 / float(temperature))
    return None


class DualEncoder(nn.Module):
    """Two towers projected into one L2-normalised embedding space and trained contrastively (CLIP), with
    either tower lockable (LiT).

    Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision" (CLIP);
    Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning" (LiT).

    With towers ``f_a``, ``f_b`` and projections ``W_a``, ``W_b``::

        e_a = normalize(W_a · pool(f_a(a))),   e_b = normalize(W_b · pool(f_b(b)))
        L   = loss(e_a, e_b)      # default CLIPLoss: ½[CE(s·e_a e_bᵀ, diag) + CE(s·e_b e_aᵀ, diag)]

    where ``s = exp(log_scale)`` (≤ 100) is the learnable logit scale owned by the loss module
    (initialised to ``1/init_temperature``), as in open_clip where the loss receives ``logit_scale``.

    A tower maps its input to rows (N, dim) or tokens (B, T, dim); tokens are mean-pooled over T (over
    the tokens where ``mask`` is non-zero when a (B, T) mask is given, 1 = real token).

    A frozen tower (``freeze_a`` / ``freeze_b`` or :meth:`freeze`) has ``requires_grad=False`` on all its
    parameters, runs under ``torch.no_grad()``, and stays in eval mode even after ``model.train()``
    (its BatchNorm statistics and dropout are locked too, as in LiT). Its projection stays trainable.

    Args:
        tower_a, tower_b: the two encoders (any ``nn.Module``; inputs are passed through untouched).
        dim_a, dim_b: output widths of the towers.
        embed_dim: width of the joint space.
        projection: ``"linear"`` (CLIP: one bias-free Linear) or ``"mlp"`` (Linear-GELU-Linear,
            hidden width ``hidden_dim`` or ``max(dim, embed_dim)``).
        init_temperature: initial temperature of the default :class:`~alignkit.losses.CLIPLoss`
            (unused when ``loss`` is given).
        freeze_a, freeze_b: lock a tower (LiT).
        loss: any module called as ``loss(e_a, e_b)`` returning a scalar (or a dict with ``"loss"``);
            ``None``: ``CLIPLoss(init_temperature)``. Pass ``CLIPLoss(sigmoid=True)`` for SigLIP.
        hidden_dim: hidden width of the ``"mlp"`` projections.

    ``forward(a, b, mask_a=None, mask_b=None)`` returns ``{"loss", "logit_scale", "emb_a", "emb_b"}``
    (``"logits_scale"`` is an alias of ``"logit_scale"``); the embeddings are (N, embed_dim), normalised.

    Cost: the towers, plus O(N·(dim_a + dim_b)·embed_dim) for the projections and O(N²·embed_dim) for
    the CLIP loss (tiled, O(N·chunk) memory, for large N).
    """

    def __init__(
        self,
        tower_a: nn.Module,
        tower_b: nn.Module,
        dim_a: int,
        dim_b: int,
        embed_dim: int,
        projection: str = "linear",
        init_temperature: float = 0.07,
        freeze_a: bool = False,
        freeze_b: bool = False,
        loss: nn.Module | None = None,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_module(tower_a, "tower_a")
        _check_module(tower_b, "tower_b")
        check_int(dim_a, "dim_a", 1)
        check_int(dim_b, "dim_b", 1)
        check_int(embed_dim, "embed_dim", 1)
        if hidden_dim is not None:
            check_int(hidden_dim, "hidden_dim", 1)
        check_positive(float(init_temperature), "init_temperature")
        self.dim_a, self.dim_b, self.embed_dim = dim_a, dim_b, embed_dim
        self.projection = projection
        self.tower_a = tower_a
        self.tower_b = tower_b
        self.proj_a = _make_projection(projection, dim_a, embed_dim, hidden_dim)
        self.proj_b = _make_projection(projection, dim_b, embed_dim, hidden_dim)
        self.loss = (
            CLIPLoss(init_temperature=init_temperature) if loss is None else _check_module(loss, "loss")
        )
        self.register_buffer("class_weights", None, persistent=False)
        self.classifier_modality: str | None = None
        self.frozen = {"a": False, "b": False}
        self.freeze("a", bool(freeze_a))
        self.freeze("b", bool(freeze_b))

    # -- freezing ---------------------------------------------------------------------------------
    def _tower(self, modality: str) -> nn.Module:
        check_choice(modality, "modality", ("a", "b"))
        return self.tower_a if modality == "a" else self.tower_b

    def freeze(self, tower: str = "a", frozen: bool = True) -> DualEncoder:
        """Lock (``frozen=True``) or unlock tower ``"a"`` or ``"b"``; returns ``self``.

        Locking sets ``requires_grad=False`` on every parameter of the tower and puts it in eval mode
        (kept there by :meth:`train`); unlocking makes every parameter trainable again and restores the
        model's mode."""
        check_choice(tower, "tower", ("a", "b"))
        _set_frozen(self._tower(tower), frozen, self.training)
        self.frozen[tower] = frozen
        return self

    def train(self, mode: bool = True) -> DualEncoder:
        """As ``nn.Module.train``, but a frozen tower stays in eval mode (LiT)."""
        super().train(mode)
        for name, frozen in self.frozen.items():
            if frozen:
                self._tower(name).eval()
        return self

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, modality: str, x: Any, mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        """Embed ``x`` with tower ``modality`` (``"a"`` | ``"b"``): (N, embed_dim), L2-normalised unless
        ``normalize=False``. ``mask`` (B, T) selects the tokens to pool for token towers."""
        tower = self._tower(modality)
        dim = self.dim_a if modality == "a" else self.dim_b
        head = self.proj_a if modality == "a" else self.proj_b
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen[modality]):
            feats = _tower_features(tower, x, f"tower_{modality} output", dim, mask)
        z = head(feats)
        return _normalize(z) if normalize else z

    def encode_a(self, x: Any, mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        """(N, embed_dim) embeddings of tower a (L2-normalised)."""
        return self.encode("a", x, mask, normalize)

    def encode_b(self, x: Any, mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        """(N, embed_dim) embeddings of tower b (L2-normalised)."""
        return self.encode("b", x, mask, normalize)

    @property
    def logit_scale(self) -> Tensor | None:
        """The loss module's logit multiplier (``1/temperature``), or ``None`` if it has none."""
        return _loss_scale(self.loss)

    def forward(
        self, a: Any, b: Any, mask_a: Tensor | None = None, mask_b: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        emb_a = self.encode_a(a, mask_a)
        emb_b = self.encode_b(b, mask_b)
        check_same_rows(emb_a, emb_b, "emb_a (tower a's batch)", "emb_b (tower b's batch)")
        out = self.loss(emb_a, emb_b)
        if isinstance(out, Mapping):
            loss = out["loss"]
            scale = out.get("logit_scale", self.logit_scale)
        else:
            loss, scale = out, self.logit_scale
        return {"loss": loss, "logit_scale": scale, "logits_scale": scale, "emb_a": emb_a, "emb_b": emb_b}

    # -- zero-shot classification -----------------------------------------------------------------
    def zero_shot_classifier(self, prompts: Tensor | Sequence[Any], modality: str = "b") -> Tensor:
        """Build a zero-shot classifier from class prompts (CLIP §3.1.4 prompt ensembling).

        ``prompts`` is either

        * a Tensor of embeddings already in the joint space: (C, embed_dim), one per class, or
          (C, K, embed_dim), K templates per class;
        * a sequence of C raw inputs of tower ``modality``, entry c holding the K template inputs of
          class c (e.g. K tokenised captions "a photo of a {c}", …), encoded here under ``no_grad``
          (put the model in eval mode first if the tower has BatchNorm or dropout).

        Each template embedding is L2-normalised, the K templates of a class averaged, and the mean
        renormalised: ``w_c = normalize(Σ_k normalize(e_ck) / K)``. The (C, embed_dim) weights are
        detached, stored for :meth:`classify`, and returned. Cost O(C·K·embed_dim) plus the tower.
        """
        check_choice(modality, "modality", ("a", "b"))
        if isinstance(prompts, Tensor):
            check_features(prompts, "prompts", ndim=(2, 3))
            if prompts.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"prompts must be embeddings of width embed_dim = {self.embed_dim}, shape "
                    f"(C, {self.embed_dim}) or (C, K, {self.embed_dim}), got {shape_str(prompts)}"
                )
            emb = _normalize(prompts.detach())
            weights = _normalize(emb.mean(1)) if emb.dim() == 3 else emb
        elif isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)) and len(prompts) > 0:
            rows = []
            with torch.no_grad():
                for inputs in prompts:
                    rows.append(_normalize(self.encode(modality, inputs).mean(0)))
            weights = torch.stack(rows)
        else:
            raise ValueError(
                "prompts must be a Tensor (C, embed_dim) / (C, K, embed_dim) of embeddings or a non-empty "
                f"sequence of per-class tower inputs, got {type(prompts).__name__}"
            )
        self.class_weights = weights
        self.classifier_modality = modality
        return weights

    def classify(
        self,
        x: Any,
        mask: Tensor | None = None,
        weights: Tensor | None = None,
        modality: str | None = None,
    ) -> Tensor:
        """Zero-shot logits ``s · e(x) Wᵀ`` (N, C), ``s`` the logit scale (1 if the loss has none).

        ``weights`` (C, embed_dim) default to the last :meth:`zero_shot_classifier` result; ``x`` is
        encoded with ``modality``, by default the tower the prompts did *not* use (``"a"`` otherwise).
        The argmax is the class whose (renormalised) prompt mean is most cosine-similar to ``x``.
        Cost O(N·C·embed_dim) plus the tower.
        """
        w = self.class_weights if weights is None else weights
        if w is None:
            raise ValueError("weights is None: call zero_shot_classifier(prompts) first or pass weights")
        check_features(w, "weights")
        if w.shape[1] != self.embed_dim:
            raise ValueError(f"weights must have shape (C, {self.embed_dim}) (embed_dim), got {shape_str(w)}")
        if modality is None:
            modality = "a" if self.classifier_modality in (None, "b") else "b"
        emb = self.encode(modality, x, mask)
        scale = self.logit_scale
        logits = emb @ _normalize(w).to(device=emb.device, dtype=emb.dtype).T
        if scale is not None:
            logits = logits * scale.detach().to(device=emb.device, dtype=emb.dtype)
        return logits

    def extra_repr(self) -> str:
        return (
            f"dim_a={self.dim_a}, dim_b={self.dim_b}, embed_dim={self.embed_dim}, "
            f"projection={self.projection!r}, frozen_a={self.frozen['a']}, frozen_b={self.frozen['b']}"
        )
