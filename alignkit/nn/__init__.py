"""Building blocks around models: :class:`FeatureExtractor` (forward hooks on named layers)."""

from alignkit.nn import features
from alignkit.nn.features import *  # noqa: F403

__all__ = [*features.__all__]
