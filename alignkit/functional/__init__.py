"""Pure tensor math: every alignment objective as a stateless function.

    import alignkit.functional as AF
    loss = AF.info_nce(query, key, temperature=0.07)

Conventions: features are rows; half-precision input is computed in float32 and returned in the
input's dtype; every shape or value problem raises ``ValueError`` naming the argument, its shape
and what was expected; no N×N matrix is built where an exact cheaper form exists.
"""

from alignkit.functional import (
    contrastive,
    decoding,
    disentangle,
    generation,
    hubs,
    losses,
    matching,
    neighbors,
    nulls,
    regression,
    retrieval,
    scores,
    similarity,
    structural,
)
from alignkit.functional._checks import validation
from alignkit.functional.contrastive import *  # noqa: F403
from alignkit.functional.decoding import *  # noqa: F403
from alignkit.functional.disentangle import *  # noqa: F403
from alignkit.functional.generation import *  # noqa: F403
from alignkit.functional.hubs import *  # noqa: F403
from alignkit.functional.losses import *  # noqa: F403
from alignkit.functional.matching import *  # noqa: F403
from alignkit.functional.neighbors import *  # noqa: F403
from alignkit.functional.nulls import *  # noqa: F403
from alignkit.functional.regression import *  # noqa: F403
from alignkit.functional.retrieval import *  # noqa: F403
from alignkit.functional.scores import *  # noqa: F403
from alignkit.functional.similarity import *  # noqa: F403
from alignkit.functional.structural import *  # noqa: F403

__all__ = [
    *contrastive.__all__,
    *decoding.__all__,
    *disentangle.__all__,
    *generation.__all__,
    *hubs.__all__,
    *losses.__all__,
    *matching.__all__,
    *neighbors.__all__,
    *nulls.__all__,
    *regression.__all__,
    *retrieval.__all__,
    *scores.__all__,
    *similarity.__all__,
    *structural.__all__,
    "validation",
]
