"""Streaming, distributable metrics: update / compute / reset, merged across processes.

    from alignkit.metrics import StreamingLinearCKA, MinibatchCKA, MultiLayerCKA, RetrievalMetric

    metric = StreamingLinearCKA()
    for batch in loader:                      # any number of batches, any sizes
        metric.update(model_a(batch), model_b(batch))
    metric.compute()                          # == AF.cka(all_a, all_b); memory O((d_a + d_b)²)

* :class:`Metric` — the base (modelled on torchmetrics): states declared with ``add_state`` and a
  reduction (``"sum"``, ``"max"``, ``"min"``, ``"cat"``), ``update`` / ``compute`` / ``reset``,
  ``sync`` / ``unsync`` over ``torch.distributed`` (``compute`` syncs automatically when a process
  group of more than one process is initialised, then restores the local states), ``to(device)``,
  ``state_dict`` / ``load_state_dict``.
* :class:`StreamingLinearCKA` — exact linear CKA (Kornblith et al. 2019) over batches: float64
  ``XᵀX``, ``YᵀY``, ``XᵀY``, column sums and N; O((d_x + d_y)²) memory, independent of N.
* :class:`MultiLayerCKA` — the layer × layer linear-CKA matrix of two models, streamed.
* :class:`MinibatchCKA` — unbiased HSIC averaged over minibatches (Nguyen, Raghu & Kornblith 2021),
  linear or RBF kernel.
* :class:`RetrievalMetric` — Recall@K / ranks / mAP of paired rows gathered from every process.
* :class:`GenerationJudge` — FD, class accuracy and precision/recall of generated digits in the
  features of a cached digit classifier (see :mod:`alignkit.metrics.generation`).
* :func:`corpus_bleu`, :func:`sentence_bleu` — BLEU of generated captions (Papineni et al. 2002),
  plain functions of strings or token lists.

Mutual k-NN and CKNNA need no accumulator: :func:`alignkit.functional.mutual_knn` and
:func:`alignkit.functional.cknna` are already streamed internally (chunked top-k over row blocks,
faiss when installed), so ``AF.mutual_knn(x, y, k=10)`` on N = 100,000 rows holds only
O(chunk_size·N + N·k) memory besides the inputs — call them once on the collected features
(which, unlike CKA's state, must fit in memory: neighbourhoods need every row).
"""

from alignkit.metrics import base, bleu, cka, generation, retrieval
from alignkit.metrics.base import *  # noqa: F403
from alignkit.metrics.bleu import *  # noqa: F403
from alignkit.metrics.cka import *  # noqa: F403
from alignkit.metrics.generation import *  # noqa: F403
from alignkit.metrics.retrieval import *  # noqa: F403

__all__ = [*base.__all__, *bleu.__all__, *cka.__all__, *generation.__all__, *retrieval.__all__]
