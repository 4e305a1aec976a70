"""The pieces around a small diffusion model on the digits: a self-supervised target encoder for REPA
and a small VAE (with or without VA-VAE's vision-foundation loss) for latent diffusion.

* :class:`PatchEncoder` — a small CNN that maps (N, 8, 8) digits to a 4×4 grid of 64-d patch tokens
  (N, 16, 64), trained **without labels or captions** by SimCLR (Chen et al. 2020): two augmented
  views of each training digit, the mean-pooled tokens through a projection head, and the
  symmetric InfoNCE loss (:func:`alignkit.functional.info_nce`, τ = 0.2). :func:`digit_target_encoder`
  trains it once and caches it (:func:`alignkit.metrics.cached_module`). It plays DINOv2's role in
  REPA: a frozen encoder whose patch features the diffusion model's hidden tokens are pulled towards.
* :class:`DigitVAE` — a convolutional VAE, 8×8×1 → 4×4×c latent → 8×8×1, trained by
  :func:`train_vae` on reconstruction (squared error) + β·KL, optionally plus VA-VAE's VF loss
  (Yao et al. 2025): ``mcos`` (margin 0.5) + ``mdms`` (margin 0.25) between a linear projection of the
  latent mean and the target encoder's patch tokens, weighted adaptively by
  :func:`alignkit.functional.adaptive_loss_weight` at the encoder's last layer.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import check_int, check_positive
from alignkit.functional.contrastive import info_nce
from alignkit.functional.generation import adaptive_loss_weight
from alignkit.metrics.generation import cached_module, data_digest
from alignkit.models.repa import REPARegularizer
from alignkit.nn.heads import ProjectionHead

__all__ = ["DigitVAE", "PatchEncoder", "augment_digits", "digit_target_encoder", "train_simclr", "train_vae"]


def augment_digits(images: Tensor, generator: torch.Generator, strength: float = 1.0) -> Tensor:
    """SimCLR-style views of (N, 8, 8) digits in [0, 1]: a random affine map (rotation ±15°, scale
    0.85–1.15, shear ±0.15, translation ±1 px; bilinear), ink gain 0.7–1.3, and Gaussian pixel noise
    σ = 0.05, each scaled by ``strength``; clamped to [0, 1]."""
    n = images.shape[0]
    s = strength

    def u(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = u(-15, 15) * s * math.pi / 180
    scale = 1 + u(-0.15, 0.15) * s
    shear = u(-0.15, 0.15) * s
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * s * (2 / 8)  # ±1 px in [−1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(images)
    grid = F.affine_grid(theta, [n, 1, 8, 8], align_corners=False)
    x = F.grid_sample(images[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]
    gain = (1 + u(-0.3, 0.3) * s).to(images)[:, None, None]
    noise = torch.randn(x.shape, generator=generator).to(images) * 0.05 * s
    return (x * gain + noise).clamp(0, 1)


class PatchEncoder(nn.Module):
    """Conv3(1→32) GELU Conv3(32→64) GELU MaxPool2 Conv3(64→64) GELU Conv3(64→64) → (N, 16, 64) tokens.

    ``tokens(x)`` returns the 4×4 grid of patch tokens in row-major order (the SiT patch-2 order);
    ``forward(x)`` their mean, (N, 64). Input (N, 8, 8) or (N, 1, 8, 8).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, width, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def tokens(self, x: Tensor) -> Tensor:
        return self.net(x if x.dim() == 4 else x[:, None]).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.tokens(x).mean(1)


def train_simclr(
    encoder: PatchEncoder,
    images: Tensor,
    epochs: int = 60,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """SimCLR on unlabelled images: ``info_nce(g(f(v₁)), g(f(v₂)), τ=0.2, symmetric)``; trains in place.

    ``g`` is a 2-layer projection head (discarded). Returns ``{"final_loss": …, "epochs": …}``.
    """
    check_int(epochs, "epochs", 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = ProjectionHead(encoder.width, 64, hidden_dim=128, num_layers=2)
        params = [*encoder.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        steps = epochs * ((len(images) + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
        encoder.train()
        last = float("nan")
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=gen)
            for start in range(0, len(images), batch_size):
                x = images[order[start : start + batch_size]]
                if len(x) < 2:
                    continue
                z1 = head(encoder(augment_digits(x, gen)))
                z2 = head(encoder(augment_digits(x, gen)))
                loss = info_nce(z1, z2, temperature=0.2, symmetric=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                last = float(loss.detach())
    encoder.eval()
    return {"final_loss": last, "epochs": epochs, "seed": seed, "train_rows": len(images), "labels": False}


def digit_target_encoder(
    images: Tensor, epochs: int = 60, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[PatchEncoder, dict[str, Any]]:
    """The default REPA target: a :class:`PatchEncoder` trained by SimCLR on ``images`` (the training
    split, no labels), trained once and cached (key: the images' digest, epochs, seed). Frozen."""
    images = images.float()
    key = data_digest(images, epochs=epochs, seed=seed, model="PatchEncoder-SimCLR-v1")
    encoder, facts = cached_module(
        "repa_target",
        key,
        PatchEncoder,
        lambda m: train_simclr(m, images, epochs=epochs, seed=seed),
        cache_dir,
    )
    return encoder, facts  # type: ignore[return-value]


class DigitVAE(nn.Module):
    """A convolutional VAE: (N, 1, 8, 8) → latent (N, c, 4, 4) → (N, 1, 8, 8) in [0, 1] (sigmoid).

    Encoder ``Conv3(1→32) SiLU Conv4/s2(32→64) SiLU Conv3(64→64) SiLU``, then ``to_mean`` and
    ``to_logvar`` (1×1 convolutions to c channels; ``to_mean`` is the "last layer" the VA-VAE adaptive
    weight is measured at, and the block the VF loss hooks). Decoder ``Conv3(c→64) SiLU
    ConvT4/s2(64→32) SiLU Conv3(32→1)`` + sigmoid.
    """

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        check_int(latent_channels, "latent_channels", 1)
        self.latent_channels = latent_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.SiLU(),
        )
        self.to_mean = nn.Conv2d(64, latent_channels, 1)
        self.to_logvar = nn.Conv2d(64, latent_channels, 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 64, 3, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 1, 3, padding=1),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, logvar), each (N, c, 4, 4)."""
        h = self.encoder(x if x.dim() == 4 else x[:, None])
        return self.to_mean(h), self.to_logvar(h).clamp(-10, 10)

    def decode(self, z: Tensor) -> Tensor:
        """(N, c, 4, 4) → (N, 1, 8, 8) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return self.decode(z), mean, logvar


def train_vae(
    vae: DigitVAE,
    images: Tensor,
    target: nn.Module | None = None,
    vf_weight: float = 0.1,
    kl_weight: float = 1e-3,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a :class:`DigitVAE` in place; with ``target`` (a frozen encoder with ``tokens(x)`` →
    (N, T', d)), add VA-VAE's VF loss.

    Per batch: ``L_rec = mean_N Σ_pixels (x̂ − x)²``, ``L_kl = mean_N KL(q(z|x) ‖ N(0, I))`` summed over the
    latent, and with a target ``L_vf = mcos_{m=0.5}(Wz̄, y) + mdms_{m=0.25}(Wz̄, y)`` between a linear
    projection ``W`` of the latent mean's 16 tokens and the target's tokens (resampled to 16); total
    ``L_rec + kl_weight·L_kl + w_a·L_vf`` with ``w_a = adaptive_loss_weight(L_rec, L_vf, to_mean.weight,
    scale=vf_weight)`` (VA-VAE: vf_weight 0.1). Returns the final epoch's mean losses.
    """
    check_int(epochs, "epochs", 1)
    check_positive(float(vf_weight), "vf_weight", allow_zero=True)
    gen = torch.Generator().manual_seed(seed)
    images = images.float()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reg = None
        params = list(vae.parameters())
        if target is not None:
            target_dim = int(target.tokens(images[:1]).shape[-1])  # type: ignore[operator]
            reg = REPARegularizer(
                vae, "to_mean", target_dim=target_dim, hidden_dim=None, weight=1.0, form="vavae",
                margins=(0.5, 0.25), source_dim=vae.latent_channels,
            )  # fmt: skip
            params += list(reg.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        steps = epochs * ((len(images) + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
        vae.train()
        totals: dict[str, float] = {}
        try:
            for _ in range(epochs):
                sums = {"rec": 0.0, "kl": 0.0, "vf_loss": 0.0, "vf_weight": 0.0}
                batches = 0
                order = torch.randperm(len(images), generator=gen)
                for start in range(0, len(images), batch_size):
                    x = images[order[start : start + batch_size]]
                    recon, mean, logvar = vae(x)
                    rec = (recon[:, 0] - x).pow(2).sum((1, 2)).mean()
                    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum((1, 2, 3)).mean()
                    loss = rec + kl_weight * kl
                    if reg is not None:
                        with torch.no_grad():
                            y = target.tokens(x)  # type: ignore[union-attr, operator]
                        vf = reg.loss(y)
                        w = adaptive_loss_weight(rec, vf, vae.to_mean.weight, scale=vf_weight)
                        loss = loss + w * vf
                        sums["vf_loss"] += float(vf.detach())
                        sums["vf_weight"] += float(w)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    sums["rec"] += float(rec.detach())
                    sums["kl"] += float(kl.detach())
                    batches += 1
                totals = {k: v / batches for k, v in sums.items()}
        finally:
            if reg is not None:
                reg.remove()
    vae.eval()
    return {**totals, "epochs": epochs, "seed": seed, "with_vf": target is not None}
