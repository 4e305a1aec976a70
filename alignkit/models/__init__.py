"""Composed alignment systems built from :mod:`alignkit.nn` blocks and :mod:`alignkit.losses`.

from alignkit.models import DualEncoder, CrossModalBYOL, Binder
"""

# --- contrastive / self-distillation / binding systems: DualEncoder, CrossModalBYOL, Binder ---------
from alignkit.models import binder, byol, dual_encoder
from alignkit.models.binder import *  # noqa: F403
from alignkit.models.byol import *  # noqa: F403
from alignkit.models.dual_encoder import *  # noqa: F403

_DUAL_BYOL_BINDER = [*dual_encoder.__all__, *byol.__all__, *binder.__all__]
# --- end DualEncoder / CrossModalBYOL / Binder --------------------------------------------------------

__all__ = [*_DUAL_BYOL_BINDER]
