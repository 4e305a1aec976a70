"""Building blocks around models: :class:`FeatureExtractor` (forward hooks on named layers),
projection / prediction heads, momentum (EMA) targets and their schedule, cross-attention blocks,
a small causal transformer decoder with greedy and beam search, sub-space heads and the learnable
temperature of CLIP."""

from alignkit.losses.contrastive import LearnableTemperature
from alignkit.nn import attention, decoder, ema, features, heads, subspace
from alignkit.nn.attention import *  # noqa: F403
from alignkit.nn.decoder import *  # noqa: F403
from alignkit.nn.ema import *  # noqa: F403
from alignkit.nn.features import *  # noqa: F403
from alignkit.nn.heads import *  # noqa: F403
from alignkit.nn.subspace import *  # noqa: F403

__all__ = [
    *features.__all__,
    *heads.__all__,
    *ema.__all__,
    *attention.__all__,
    *decoder.__all__,
    *subspace.__all__,
    "LearnableTemperature",
]
