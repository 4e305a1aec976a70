"""Names the command line offers as choices, in a module that imports nothing (no torch), so that
``alignkit COMMAND --help`` lists them and still starts in a fraction of a second.

The modules that implement them re-export them: :data:`alignkit.captioning.METHODS`,
:data:`alignkit.models.captioning.SEARCHES`.
"""

from __future__ import annotations

__all__ = ["CAPTION_METHODS", "CAPTION_SEARCHES"]

#: The captioning methods of ``alignkit caption`` (:mod:`alignkit.captioning`).
CAPTION_METHODS = ("clipcap", "capdec", "decap", "iterative-memory", "iterative-beam", "coca")
#: Decoding searches of the prefix captioners (:mod:`alignkit.models.captioning`).
CAPTION_SEARCHES = ("greedy", "beam")
