"""Encoders ("towers") on either side of an alignment: built from scratch, frozen features, or loaded."""

from __future__ import annotations

from alignkit.towers.image import IMAGE_TOWERS, image_tower, mlp

__all__ = ["IMAGE_TOWERS", "image_tower", "mlp"]
