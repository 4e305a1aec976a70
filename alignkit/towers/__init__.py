"""Encoders ("towers") on either side of an alignment: built from scratch, frozen features, or loaded.

See :mod:`alignkit.towers.base` for the contract every tower follows."""

from __future__ import annotations

from alignkit.towers import base, frozen, vit
from alignkit.towers.base import *  # noqa: F403
from alignkit.towers.frozen import *  # noqa: F403
from alignkit.towers.image import IMAGE_TOWERS, image_tower, mlp
from alignkit.towers.vit import *  # noqa: F403

__all__ = [*base.__all__, *frozen.__all__, *vit.__all__, "IMAGE_TOWERS", "image_tower", "mlp"]
