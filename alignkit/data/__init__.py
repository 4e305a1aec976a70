"""Data for alignkit: the captioned digits, the MiniLM text tower, and users' paired features.

* :mod:`alignkit.data.digits` — scikit-learn's 8×8 digits with captions measured on the pixels
  (:func:`load_digits_captions`, :func:`class_prompts`, :func:`attribute_words`).
* :mod:`alignkit.data.text` — all-MiniLM-L6-v2 sentence embeddings, offline and cached on disk
  (:func:`encode_texts`, :class:`TextTower`); sentence-transformers is imported only when needed.
* :mod:`alignkit.data.paired` — :class:`PairedEmbeddings`, aligned rows from two embedding files.
* :mod:`alignkit.data.tokenizer` — :class:`WordTokenizer`, a word-level caption tokenizer.
"""

from __future__ import annotations

from .digits import *  # noqa: F403
from .digits import __all__ as _digits_all
from .paired import *  # noqa: F403
from .paired import __all__ as _paired_all
from .text import *  # noqa: F403
from .text import __all__ as _text_all
from .tokenizer import *  # noqa: F403
from .tokenizer import __all__ as _tokenizer_all

__all__ = [*_digits_all, *_paired_all, *_text_all, *_tokenizer_all]
