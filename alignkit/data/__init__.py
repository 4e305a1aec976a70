"""Data for alignkit: the captioned digits, the MiniLM text tower, and users' paired features.

* :mod:`alignkit.data.digits` — scikit-learn's 8×8 digits with captions measured on the pixels
  (:func:`load_digits_captions`, :func:`class_prompts`, :func:`attribute_words`).
* :mod:`alignkit.data.text` — all-MiniLM-L6-v2 sentence embeddings, offline and cached on disk
  (:func:`encode_texts`, :class:`TextTower`); sentence-transformers is imported only when needed.
* :mod:`alignkit.data.paired` — :class:`PairedEmbeddings`, aligned rows from two embedding files.
* :mod:`alignkit.data.tokenizer` — :class:`WordTokenizer`, a word-level caption tokenizer.
* :mod:`alignkit.data.sources` — users' pairs for the recipes (:func:`load_source` → :class:`PairedSource`):
  two feature files (``.npy`` memory-mapped as :class:`FeatureRows`) or a table of text / image paths.
* :mod:`alignkit.data.splits` — :func:`group_split` (groups never straddle splits), :func:`read_split_file`,
  :func:`group_positives` (group-aware ``positives`` for ``recall_at_k``).
"""

from __future__ import annotations

from .digits import *  # noqa: F403
from .digits import __all__ as _digits_all
from .paired import *  # noqa: F403
from .paired import __all__ as _paired_all
from .sources import *  # noqa: F403
from .sources import __all__ as _sources_all
from .splits import *  # noqa: F403
from .splits import __all__ as _splits_all
from .text import *  # noqa: F403
from .text import __all__ as _text_all
from .tokenizer import *  # noqa: F403
from .tokenizer import __all__ as _tokenizer_all

__all__ = [*_digits_all, *_paired_all, *_sources_all, *_splits_all, *_text_all, *_tokenizer_all]
