"""Composed alignment systems built from :mod:`alignkit.nn` blocks and :mod:`alignkit.losses`.

Example::

    from alignkit.models import Binder, CoCa, CrossModalBYOL, DualEncoder, PrefixCaptioner, REPARegularizer
"""

from alignkit.models import (
    binder,
    byol,
    captioning,
    disentangle,
    dual_encoder,
    generative,
    matching,
    repa,
    sit,
)
from alignkit.models.binder import *  # noqa: F403
from alignkit.models.byol import *  # noqa: F403
from alignkit.models.captioning import *  # noqa: F403
from alignkit.models.disentangle import *  # noqa: F403
from alignkit.models.dual_encoder import *  # noqa: F403
from alignkit.models.generative import *  # noqa: F403
from alignkit.models.matching import *  # noqa: F403
from alignkit.models.repa import *  # noqa: F403
from alignkit.models.sit import *  # noqa: F403

__all__ = [
    *binder.__all__,
    *byol.__all__,
    *captioning.__all__,
    *disentangle.__all__,
    *dual_encoder.__all__,
    *generative.__all__,
    *matching.__all__,
    *repa.__all__,
    *sit.__all__,
]
