"""A small SiT: a diffusion transformer trained by flow matching, sized for 8×8 digits.

Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant
Transformers" (the DiT architecture of Peebles & Xie 2023 trained on the linear interpolant), as used
by REPA (Yu et al. 2024):

* patch embedding: a ``p×p`` stride-``p`` convolution → ``T = (H/p)·(W/p)`` tokens of width ``d``, plus
  fixed 2-D sine-cosine position embeddings;
* ``depth`` transformer blocks with **adaLN-Zero** conditioning: ``c = emb(t) + emb(y)``; each block
  regresses ``(shift, scale, gate)`` for its attention and MLP branches from ``c``, the regression
  initialised to zero so that every block starts as the identity;
* a final adaLN layer mapping each token back to a ``p×p×C`` patch (zero-initialised);
* flow matching with the linear interpolant (:func:`alignkit.functional.linear_interpolant`: data at
  t = 0, noise at t = 1, velocity target ``ε − x``), :func:`flow_matching_loss`;
* a fixed-step Euler or Heun ODE sampler from t = 1 to t = 0, :func:`sample_flow`, with optional
  classifier-free guidance (Ho & Salimans 2022) through a null class (label ``num_classes``) that
  training substitutes for the label with probability ``class_dropout``.

REPA hooks a block's output tokens (B, T, d) with :class:`alignkit.models.REPARegularizer`; the name
of block ``k`` (1-based depth, REPA's convention: "depth 8" is the output of the 8th block) is
``SiT.block_name(k)`` = ``"blocks.{k−1}"``. Example::

    sit = SiT(input_size=8, patch_size=2, in_channels=1, width=128, depth=6)
    reg = REPARegularizer(sit, sit.block_name(2), target_dim=64, hidden_dim=256, weight=0.5)
    loss = flow_matching_loss(sit, images, labels) + reg.loss(frozen_tokens)   # (B, T', 64)
    samples = sample_flow(sit, labels, steps=50, method="heun", cfg_scale=1.5, seed=0)
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignkit.functional._checks import check_choice, check_dropout, check_int, check_positive, shape_str
from alignkit.functional.generation import linear_interpolant

__all__ = ["SAMPLERS", "SiT", "SiTBlock", "flow_matching_loss", "sample_flow", "timestep_embedding"]

SAMPLERS = ("euler", "heun")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) times (DiT's ``TimestepEmbedder.timestep_embedding``) → (B, dim).

    ``[cos(t·f_i), sin(t·f_i)]`` with ``f_i = max_period^{−i/(dim/2)}``; t is scaled by 1000 first so that
    t ∈ [0, 1] spans the frequencies DiT uses for its 1000 discrete steps.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _sincos_2d(width: int, side: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings (MAE / DiT), (side², width), row-major."""
    if width % 4:
        raise ValueError(f"width must be divisible by 4 for 2-D sine-cosine position embeddings, got {width}")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(side, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def emb(pos: Tensor) -> Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([emb(cols), emb(rows)], dim=1).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class SiTBlock(nn.Module):
    """A DiT/SiT block with adaLN-Zero: ``x += g₁·Attn(mod(LN(x), s₁, a₁)); x += g₂·MLP(mod(LN(x), s₂, a₂))``.

    ``forward(x (B, T, d), c (B, d)) → (B, T, d)``. The modulation Linear is zero-initialised, so the
    block is the identity at initialisation. Cost: O(B·T·d² + B·T²·d).
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada_ln[1].weight)
        nn.init.zeros_(self.ada_ln[1].bias)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        s1, a1, g1, s2, a2, g2 = self.ada_ln(c).chunk(6, dim=-1)
        b, t, d = x.shape
        qkv = self.qkv(_modulate(self.norm1(x), s1, a1)).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + g1[:, None] * self.proj(attn)
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, a2))


class SiT(nn.Module):
    """A SiT/DiT velocity model ``v_θ(x_t, t, y)`` for (B, C, H, W) inputs.

    Args:
        input_size: H = W of the input (8 for the digits; 4 for a 4×4 latent).
        patch_size: p, dividing input_size; T = (input_size/p)² tokens.
        in_channels: C.
        width: token width d (divisible by 4 and by num_heads).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / d.
        num_classes: class labels 0…num_classes−1; label ``num_classes`` is the null class (CFG).
        class_dropout: probability that training replaces a label by the null class (0 disables CFG
            training; CFG sampling then has no meaning).

    ``forward(x (B, C, H, W), t (B,), y (B,) int64) → (B, C, H, W)`` velocity. Blocks are
    ``self.blocks[i]`` (names ``"blocks.i"``); their outputs are the (B, T, d) tokens REPA aligns.
    Cost per sample: O(depth·(T·d² + T²·d)).
    """

    def __init__(
        self,
        input_size: int = 8,
        patch_size: int = 2,
        in_channels: int = 1,
        width: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 10,
        class_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_int(input_size, "input_size", 1)
        check_int(patch_size, "patch_size", 1)
        if input_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide input_size ({input_size})")
        check_int(in_channels, "in_channels", 1)
        check_int(width, "width", 4)
        check_int(depth, "depth", 1)
        check_int(num_heads, "num_heads", 1)
        check_positive(float(mlp_ratio), "mlp_ratio")
        check_int(num_classes, "num_classes", 1)
        self.class_dropout = check_dropout(class_dropout, "class_dropout")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.width, self.depth, self.num_classes = width, depth, num_classes
        self.grid = input_size // patch_size
        self.num_tokens = self.grid**2
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", _sincos_2d(width, self.grid)[None], persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.label_embed = nn.Embedding(num_classes + 1, width)
        self.blocks = nn.ModuleList(SiTBlock(width, num_heads, mlp_ratio) for _ in range(depth))
        self.final_ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final = nn.Linear(width, patch_size * patch_size * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.label_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero
            nn.init.zeros_(block.ada_ln[1].weight)
            nn.init.zeros_(block.ada_ln[1].bias)
        for m in (self.final_ada_ln[1], self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @staticmethod
    def block_name(depth: int) -> str:
        """The module name of the block whose output is REPA's "depth" (1-based): ``"blocks.{depth−1}"``."""
        check_int(depth, "depth", 1)
        return f"blocks.{depth - 1}"

    @property
    def null_class(self) -> int:
        """The label of the unconditional (null) class used by classifier-free guidance."""
        return self.num_classes

    def _check_inputs(self, x: Tensor, t: Tensor, y: Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            want = ", ".join(map(str, expected))
            raise ValueError(f"x must have shape (B, {want}), got {getattr(x, 'shape', x)}")
        b = x.shape[0]
        if not isinstance(t, Tensor) or t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {getattr(t, 'shape', t)}")
        if not isinstance(y, Tensor) or y.shape != (b,) or y.dtype != torch.long:
            raise ValueError(f"y must be an int64 tensor of shape ({b},), got {getattr(y, 'shape', y)}")
        if b and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(
                f"y must hold labels in [0, {self.num_classes}] ({self.num_classes} = the null class)"
            )

    def _embed(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return h, self.time_embed(timestep_embedding(t, 256).to(h.dtype)) + self.label_embed(y)

    def hidden(self, x: Tensor, t: Tensor, y: Tensor, depth: int) -> Tensor:
        """The (B, T, d) tokens after block ``depth`` (1-based; what REPA aligns), no label dropout."""
        self._check_inputs(x, t, y)
        check_int(depth, "depth", 1, self.depth)
        h, c = self._embed(x, t, y)
        for block in self.blocks[:depth]:
            h = block(h, c)
        return h

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self._check_inputs(x, t, y)
        if self.training and self.class_dropout > 0:
            drop = torch.rand(y.shape, device=y.device) < self.class_dropout
            y = torch.where(drop, torch.full_like(y, self.null_class), y)
        h, c = self._embed(x, t, y)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada_ln(c).chunk(2, dim=-1)
        out = self.final(_modulate(self.final_norm(h), shift, scale))  # (B, T, p·p·C)
        return self._unpatchify(out)

    def _unpatchify(self, tokens: Tensor) -> Tensor:
        b, g, p, c = tokens.shape[0], self.grid, self.patch_size, self.in_channels
        x = tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)


def flow_matching_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``mean ‖v_θ(x_t, t, y) − (ε − x)‖²`` with ``x_t = (1 − t)·x + t·ε``, t ~ U[0, 1], ε ~ N(0, I).

    Args:
        model: a velocity model ``model(x_t, t, y)`` (e.g. :class:`SiT`).
        x: (B, C, H, W) clean data.
        y: (B,) int64 labels.
        t: (B,) times; ``None``: drawn uniformly.
        noise: ε, the shape of x; ``None``: drawn.
        generator: random source for t and ε.

    Returns:
        scalar loss (mean over all elements, REPA's ``mean_flat`` then batch mean).
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a (B, ...) tensor, got {getattr(x, 'shape', x)}")
    if t is None:
        t = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_t, v = linear_interpolant(x, noise, t)
    return F.mse_loss(model(x_t, t, y), v)


@torch.no_grad()
def sample_flow(
    model: nn.Module,
    labels: Tensor,
    shape: tuple[int, ...] | None = None,
    steps: int = 50,
    method: str = "heun",
    cfg_scale: float = 1.0,
    null_class: int | None = None,
    seed: int | None = 0,
    noise: Tensor | None = None,
) -> Tensor:
    """Integrate ``dx/dt = v_θ(x, t, y)`` from t = 1 (noise) to t = 0 (data) with a fixed step count.

    Times ``t_i = 1 − i/steps``; Euler: ``x ← x + (t_{i+1} − t_i)·v(x, t_i)`` (``steps`` model calls);
    Heun (2nd order): Euler predictor, then the average of the slopes at both ends (2·steps calls).
    With ``cfg_scale = s ≠ 1``, classifier-free guidance: ``v = v(x, t, ∅) + s·(v(x, t, y) − v(x, t, ∅))``,
    the conditional and null halves in one batch.

    Args:
        model: the velocity model, put in eval mode for the call (its mode is restored afterwards).
        labels: (B,) int64 class labels.
        shape: per-sample shape (C, H, W); ``None``: ``(model.in_channels, model.input_size,
            model.input_size)``.
        steps: number of steps ≥ 1.
        method: ``"euler"`` | ``"heun"``.
        cfg_scale: guidance scale s ≥ 0 (1 = plain conditional sampling).
        null_class: the null label; ``None``: ``model.null_class``.
        seed: seeds a private ``torch.Generator`` for the initial noise (deterministic output for a
            given seed, model and device); ``None``: the global generator.
        noise: the initial x at t = 1, (B, C, H, W); overrides ``seed``.

    Returns:
        (B, C, H, W) samples at t = 0.
    """
    check_int(steps, "steps", 1)
    check_choice(method, "method", SAMPLERS)
    check_positive(float(cfg_scale), "cfg_scale", allow_zero=True)
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype != torch.long:
        raise ValueError(f"labels must be a (B,) int64 tensor, got {getattr(labels, 'shape', labels)}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if shape is None:
        shape = (model.in_channels, model.input_size, model.input_size)
    full = (labels.shape[0], *shape)
    if noise is not None:
        if tuple(noise.shape) != full:
            raise ValueError(f"noise must have shape {full}, got {shape_str(noise)}")
        x = noise.to(device=device, dtype=dtype)
    else:
        gen = None
        if seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(seed))
        x = torch.randn(full, generator=gen, device=device, dtype=dtype)
    labels = labels.to(device)
    guided = cfg_scale != 1.0
    if guided:
        null = model.null_class if null_class is None else null_class
        y_all = torch.cat([labels, torch.full_like(labels, null)])

    def velocity(z: Tensor, t: float) -> Tensor:
        tt = torch.full((z.shape[0],), t, device=device, dtype=dtype)
        if not guided:
            return model(z, tt, labels)
        v = model(torch.cat([z, z]), torch.cat([tt, tt]), y_all)
        cond, uncond = v.chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    was_training = model.training
    model.eval()
    try:
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        for t_now, t_next in itertools.pairwise(times):
            dt = t_next - t_now
            v = velocity(x, t_now)
            if method == "euler":
                x = x + dt * v
            else:
                x_pred = x + dt * v
                x = x + dt * 0.5 * (v + velocity(x_pred, t_next))
    finally:
        model.train(was_training)
    return x
