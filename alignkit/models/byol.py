"""Cross-modal BYOL: each modality's online branch predicts the *other* modality's momentum target.

    model = CrossModalBYOL(image_encoder, text_encoder, dim_a=512, dim_b=384)
    for step, (images, captions) in enumerate(loader):
        out = model(images, captions)          # {"loss", "loss_ab", "loss_ba", "emb_a", "emb_b"}
        out["loss"].backward(); opt.step(); opt.zero_grad()
        model.step(step, max_steps)            # EMA update of both targets, τ on BYOL's cosine schedule

Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning". The seed's
"multi-modal" BYOL summed one single-modality BYOL term per modality, which never ties the modalities
together; this model regresses across modalities instead (a → b and b → a), and keeps the per-modality
sum as ``per_modality=True``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from alignkit.functional._checks import check_choice, check_int, check_same_rows
from alignkit.functional.losses import byol_loss
from alignkit.models.dual_encoder import _check_module, _normalize, _tower_features
from alignkit.nn.ema import MomentumTarget, cosine_schedule
from alignkit.nn.heads import PredictionHead, ProjectionHead

__all__ = ["CrossModalBYOL"]


class _Branch(nn.Module):
    """encoder → (mean-pool tokens) → projector; the part of BYOL that has a momentum target."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, dim: int, name: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.dim = dim
        self.name = name

    def forward(self, x: Any, mask: Tensor | None = None) -> Tensor:
        return self.projector(_tower_features(self.encoder, x, self.name, self.dim, mask))


class CrossModalBYOL(nn.Module):
    """BYOL across two modalities: online encoder → projector → predictor per modality, and a momentum
    (EMA) target encoder → projector per modality.

    With online projections ``z_m = g_m(f_m(x_m))``, predictions ``p_m = q_m(z_m)`` and target
    projections ``z'_m = g'_m(f'_m(x_m))`` (no gradient; ``f'``, ``g'`` are EMAs of ``f``, ``g``),
    the cross-modal loss (default) is, symmetrised as in BYOL (a sum of the two directions)::

        L = byol(p_a, sg(z'_b)) + byol(p_b, sg(z'_a)),     byol(p, t) = 2 − 2·cos(p, t)  (batch mean)

    so the a-branch regresses the b-target and the b-branch the a-target. With ``per_modality=True``
    the loss is the seed's literal sum of single-modality BYOL terms on two augmented views per
    modality (``forward(a1, b1, a2, b2)``, both ``a2`` and ``b2`` required)::

        L = byol(q_a(z_a¹), z'_a²) + byol(q_a(z_a²), z'_a¹) + byol(q_b(z_b¹), z'_b²) + byol(q_b(z_b²), z'_b¹)

    which trains each modality on its own and does not align them.

    After each optimiser step, :meth:`step` updates both targets,
    ``ξ ← τξ + (1 − τ)θ`` with ``τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2`` (BYOL's cosine schedule).

    Encoders may return rows (N, dim) or tokens (B, T, dim) (mean-pooled, honouring a (B, T) mask with
    1 = real token). Projector: :meth:`ProjectionHead.byol` ``(dim, proj_dim, hidden_dim)``; predictor:
    :class:`PredictionHead` ``(proj_dim, hidden_dim)`` — both with BatchNorm, so training batches need
    at least two rows.

    Args:
        encoder_a, encoder_b: the online encoders (deep-copied into the targets).
        dim_a, dim_b: encoder output widths.
        proj_dim: width of the projections / predictions (shared by both modalities).
        hidden_dim: hidden width of projectors and predictors.
        tau_base: τ at step 0, in [0, 1].
        per_modality: use the per-modality loss described above.

    ``forward`` returns ``{"loss", "emb_a", "emb_b"}`` plus ``"loss_ab"``, ``"loss_ba"`` (cross-modal)
    or ``"loss_a"``, ``"loss_b"`` (per modality); ``emb_*`` are the L2-normalised online projections of
    the (first) views, with their graph.

    Cost: two online and two target passes per modality view pair plus O(N·proj_dim) for the loss;
    memory: one extra copy of encoders and projectors (the targets).
    """

    def __init__(
        self,
        encoder_a: nn.Module,
        encoder_b: nn.Module,
        dim_a: int,
        dim_b: int,
        proj_dim: int = 256,
        hidden_dim: int = 1024,
        tau_base: float = 0.996,
        per_modality: bool = False,
    ) -> None:
        super().__init__()
        _check_module(encoder_a, "encoder_a")
        _check_module(encoder_b, "encoder_b")
        check_int(dim_a, "dim_a", 1)
        check_int(dim_b, "dim_b", 1)
        check_int(proj_dim, "proj_dim", 1)
        check_int(hidden_dim, "hidden_dim", 1)
        if isinstance(tau_base, bool) or not isinstance(tau_base, (int, float)) or not 0.0 <= tau_base <= 1.0:
            raise ValueError(f"tau_base must be a number in [0, 1], got {tau_base!r}")
        self.dim_a, self.dim_b, self.proj_dim, self.hidden_dim = dim_a, dim_b, proj_dim, hidden_dim
        self.tau_base = float(tau_base)
        self.per_modality = bool(per_modality)
        self.momentum = self.tau_base
        self.online_a = _Branch(
            encoder_a, ProjectionHead.byol(dim_a, proj_dim, hidden_dim), dim_a, "encoder_a output"
        )
        self.online_b = _Branch(
            encoder_b, ProjectionHead.byol(dim_b, proj_dim, hidden_dim), dim_b, "encoder_b output"
        )
        self.predictor_a = PredictionHead(proj_dim, hidden_dim)
        self.predictor_b = PredictionHead(proj_dim, hidden_dim)
        self.target_a = MomentumTarget(self.online_a)
        self.target_b = MomentumTarget(self.online_b)

    @property
    def encoder_a(self) -> nn.Module:
        """The online encoder of modality a."""
        return self.online_a.encoder

    @property
    def encoder_b(self) -> nn.Module:
        """The online encoder of modality b."""
        return self.online_b.encoder

    def _parts(self, modality: str) -> tuple[_Branch, nn.Module, MomentumTarget]:
        check_choice(modality, "modality", ("a", "b"))
        if modality == "a":
            return self.online_a, self.predictor_a, self.target_a
        return self.online_b, self.predictor_b, self.target_b

    def encode(self, modality: str, x: Any, mask: Tensor | None = None, predict: bool = False) -> Tensor:
        """L2-normalised online projection ``z_m`` (N, proj_dim) of ``x`` in modality ``"a"`` | ``"b"``,
        or with ``predict=True`` the prediction ``q_m(z_m)`` — which the cross-modal loss trains to match
        the *other* modality's projection, so cross-modal retrieval compares ``encode("a", x,
        predict=True)`` with ``encode("b", y)``. Call in eval mode for evaluation (BatchNorm)."""
        online, predictor, _ = self._parts(modality)
        z = online(x, mask)
        return _normalize(predictor(z) if predict else z)

    def encode_a(self, x: Any, mask: Tensor | None = None, predict: bool = False) -> Tensor:
        """:meth:`encode` for modality a."""
        return self.encode("a", x, mask, predict)

    def encode_b(self, x: Any, mask: Tensor | None = None, predict: bool = False) -> Tensor:
        """:meth:`encode` for modality b."""
        return self.encode("b", x, mask, predict)

    def forward(
        self,
        a: Any,
        b: Any,
        a2: Any = None,
        b2: Any = None,
        *,
        mask_a: Tensor | None = None,
        mask_b: Tensor | None = None,
        mask_a2: Tensor | None = None,
        mask_b2: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Cross-modal loss on paired ``a`` (modality a) and ``b`` (modality b); with
        ``per_modality=True``, ``a``/``a2`` and ``b``/``b2`` are two augmented views of each modality."""
        if self.per_modality:
            if a2 is None or b2 is None:
                missing = "a2" if a2 is None else "b2"
                raise ValueError(
                    f"{missing} is None: per_modality=True needs a second augmented view of each modality, "
                    "forward(a1, b1, a2, b2)"
                )
            loss_a, emb_a = self._single_modality("a", a, a2, mask_a, mask_a2)
            loss_b, emb_b = self._single_modality("b", b, b2, mask_b, mask_b2)
            return {
                "loss": loss_a + loss_b,
                "loss_a": loss_a,
                "loss_b": loss_b,
                "emb_a": emb_a,
                "emb_b": emb_b,
            }
        if a2 is not None or b2 is not None:
            raise ValueError(
                "a2 and b2 (second views) are only used with per_modality=True; "
                "the cross-modal loss pairs a with b"
            )
        z_a = self.online_a(a, mask_a)
        z_b = self.online_b(b, mask_b)
        check_same_rows(z_a, z_b, "a (its projection)", "b (its projection)")
        t_a = self.target_a(a, mask_a)
        t_b = self.target_b(b, mask_b)
        loss_ab = byol_loss(self.predictor_a(z_a), t_b)
        loss_ba = byol_loss(self.predictor_b(z_b), t_a)
        return {
            "loss": loss_ab + loss_ba,
            "loss_ab": loss_ab,
            "loss_ba": loss_ba,
            "emb_a": _normalize(z_a),
            "emb_b": _normalize(z_b),
        }

    def _single_modality(
        self, modality: str, x1: Any, x2: Any, mask1: Tensor | None, mask2: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        online, predictor, target = self._parts(modality)
        z1, z2 = online(x1, mask1), online(x2, mask2)
        check_same_rows(z1, z2, f"{modality} (first view)", f"{modality}2 (second view)")
        t1, t2 = target(x1, mask1), target(x2, mask2)
        loss = byol_loss(predictor(z1), t2) + byol_loss(predictor(z2), t1)
        return loss, _normalize(z1)

    def step(self, global_step: int, max_steps: int) -> float:
        """EMA-update both targets with ``τ = cosine_schedule(global_step, max_steps, tau_base, 1)``
        (call after the optimiser step); returns τ. Cost O(P) for P target parameters."""
        tau = cosine_schedule(global_step, max_steps, self.tau_base, 1.0)
        self.target_a.update(self.online_a, tau)
        self.target_b.update(self.online_b, tau)
        self.momentum = tau
        return tau

    def extra_repr(self) -> str:
        return (
            f"dim_a={self.dim_a}, dim_b={self.dim_b}, proj_dim={self.proj_dim}, "
            f"hidden_dim={self.hidden_dim}, "
            f"tau_base={self.tau_base}, per_modality={self.per_modality}"
        )
