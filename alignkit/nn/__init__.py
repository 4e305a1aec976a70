"""Building blocks around models: :class:`FeatureExtractor` (forward hooks on named layers),
projection / prediction heads, momentum (EMA) targets and their schedule, cross-attention blocks,
sub-space heads and the learnable temperature of CLIP."""

from alignkit.losses.contrastive import LearnableTemperature
from alignkit.nn import attention, ema, features, heads, subspace
from alignkit.nn.attention import *  # noqa: F403
from alignkit.nn.ema import *  # noqa: F403
from alignkit.nn.features import *  # noqa: F403
from alignkit.nn.heads import *  # noqa: F403
from alignkit.nn.subspace import *  # noqa: F403

__all__ = [
    *features.__all__,
    *heads.__all__,
    *ema.__all__,
    *attention.__all__,
    *subspace.__all__,
    "LearnableTemperature",
]
