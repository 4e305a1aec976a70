"""Encoders ("towers") for either side of an alignment; see :mod:`alignkit.towers.base` for the contract."""

from alignkit.towers import base, frozen, vit
from alignkit.towers.base import *  # noqa: F403
from alignkit.towers.frozen import *  # noqa: F403
from alignkit.towers.vit import *  # noqa: F403

__all__ = [*base.__all__, *frozen.__all__, *vit.__all__]
