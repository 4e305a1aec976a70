"""Small image encoders trained from scratch: ``mlp``, ``cnn`` and ``vit`` (:class:`alignkit.towers.vit.ViT`).

    tower = image_tower("cnn", width=256, size=32, channels=3)
    tower(images).shape            # (N, 256) from (N, 3, 32, 32); (N, H, W) is read as one channel
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["IMAGE_TOWERS", "image_tower", "mlp"]

IMAGE_TOWERS = ("mlp", "cnn", "vit")


class _Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)


class _AddChannel(nn.Module):
    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.channels, *x.shape[-2:])


def _hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def image_tower(
    kind: str = "mlp",
    width: int = 256,
    dropout: float = 0.0,
    size: int | tuple[int, int] = 8,
    channels: int = 1,
) -> nn.Module:
    """A small image encoder trained from scratch: (N, C, H, W) or (N, H, W) images → (N, width).

    * ``"mlp"``: flatten → Linear(C·H·W, width) → GELU → Dropout → Linear(width, width) → GELU.
    * ``"cnn"``: Conv3×3(C→32) → GELU → Conv3×3(32→64) → GELU → MaxPool2 → flatten →
      Linear(64·(H/2)·(W/2), width) → GELU (no global pooling: captions describe where the ink sits).
    * ``"vit"``: :class:`~alignkit.towers.vit.ViT` with 2×2 patches up to 16 pixels a side (else
      ``size/8``), depth 4, 4 heads, CLS pooling; ``forward_tokens`` gives its patch tokens.

    The module has attribute ``out_dim = width``. Cost per image: O(C·H·W·width + width²) (mlp),
    O(H·W·32·64·9) (cnn), O(4·(P²·w + 12·P·w²)) for P patches (vit).
    """
    if kind not in IMAGE_TOWERS:
        raise ValueError(f"kind must be one of {IMAGE_TOWERS}, got {kind!r}")
    h, w = _hw(size)
    if kind == "vit":
        from alignkit.towers.vit import ViT

        patch = 2 if max(h, w) <= 16 else max(1, max(h, w) // 8)
        heads = 4 if width % 4 == 0 else 1
        tower: nn.Module = ViT(
            image_size=(h, w), patch_size=patch, in_channels=channels, width=width, depth=4,
            num_heads=heads, dropout=dropout, pooling="cls",
        )
    elif kind == "mlp":
        tower = nn.Sequential(
            _Flatten(),
            nn.Linear(channels * h * w, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.GELU(),
        )
    else:
        tower = nn.Sequential(
            _AddChannel(channels),
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * (h // 2) * (w // 2), width),
            nn.GELU(),
        )
    tower.out_dim = width  # type: ignore[assignment]
    return tower


def mlp(in_dim: int, width: int) -> nn.Module:
    """Linear(in_dim, width) → GELU → Linear(width, width) → GELU: a trainable head on frozen features."""
    return nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
