"""Loss modules: thin ``nn.Module`` wrappers over :mod:`alignkit.functional` plus a registry.

Example::

    from alignkit import losses

    criterion = losses.build("clip", init_temperature=0.07)
    joint = losses.JointLoss({"info_nce": {"weight": 1.0}, "structure": {"weight": 0.5}})
"""

from alignkit.losses import contrastive, disentangle, joint, micro, similarity, structural
from alignkit.losses.contrastive import *  # noqa: F403
from alignkit.losses.disentangle import *  # noqa: F403
from alignkit.losses.joint import *  # noqa: F403
from alignkit.losses.micro import *  # noqa: F403
from alignkit.losses.registry import available, build, register
from alignkit.losses.similarity import *  # noqa: F403
from alignkit.losses.structural import *  # noqa: F403

__all__ = [
    *contrastive.__all__,
    *disentangle.__all__,
    *joint.__all__,
    *micro.__all__,
    *similarity.__all__,
    *structural.__all__,
    "available",
    "build",
    "register",
]
