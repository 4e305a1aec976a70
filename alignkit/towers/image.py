"""Small image encoders trained from scratch: ``mlp`` and ``cnn`` (see also :mod:`alignkit.towers.vit`)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["IMAGE_TOWERS", "image_tower", "mlp"]

IMAGE_TOWERS = ("mlp", "cnn")


class _Flatten8x8(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)


class _AddChannel(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], 1, *x.shape[-2:])


def image_tower(kind: str = "mlp", width: int = 256, dropout: float = 0.0, size: int = 8) -> nn.Module:
    """A small image encoder trained from scratch: (N, size, size) images → (N, width) features.

    * ``"mlp"``: flatten → Linear(size², width) → GELU → Dropout → Linear(width, width) → GELU.
    * ``"cnn"``: Conv3×3(1→32) → GELU → Conv3×3(32→64) → GELU → MaxPool2 → flatten →
      Linear(64·(size/2)², width) → GELU (no global pooling: captions describe where the ink sits).

    The module has attribute ``out_dim = width``. Cost per image: O(size²·width + width²) (mlp) or
    O(size²·32·64·9) (cnn).
    """
    if kind not in IMAGE_TOWERS:
        raise ValueError(f"kind must be one of {IMAGE_TOWERS}, got {kind!r}")
    if kind == "mlp":
        tower = nn.Sequential(
            _Flatten8x8(),
            nn.Linear(size * size, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.GELU(),
        )
    else:
        half = size // 2
        tower = nn.Sequential(
            _AddChannel(),
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * half * half, width),
            nn.GELU(),
        )
    tower.out_dim = width  # type: ignore[assignment]
    return tower


def mlp(in_dim: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU())

