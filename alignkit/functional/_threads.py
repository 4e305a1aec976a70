"""Row blocks dealt out to Python worker threads, each running torch on one thread (the CPU kernels of
:func:`alignkit.functional.knn` and the tiled SupCon loss)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

_T = TypeVar("_T")
_R = TypeVar("_R")

__all__ = ["on_workers"]


def on_workers(fn: Callable[[list[_T]], _R], parts: Sequence[_T], device: torch.device) -> list[_R]:
    """``[fn(share) for share in shares]``: ``parts`` (e.g. the row blocks' starts) dealt out round-robin
    to ``torch.get_num_threads()`` Python threads on the CPU, each running its torch operations on one
    thread and without autograd recording (grad mode is per thread).

    ``torch.set_num_threads(1)`` is process-wide: it is set while the workers run and the caller's
    setting restored afterwards, so other torch work running at the same time in other threads of the
    caller also runs on one thread then. On a loaded machine the many mid-sized per-block operations
    never wait for each other's threads at the end of every parallel region (faiss splits its queries
    among threads the same way). Elsewhere, or with one thread or one part: ``[fn(list(parts))]`` in
    this thread.
    """
    threads = torch.get_num_threads()
    workers = min(threads, len(parts)) if device.type == "cpu" else 1
    if workers <= 1:
        return [fn(list(parts))]

    def work(first: int) -> _R:
        torch.set_num_threads(1)
        with torch.no_grad():
            return fn(list(parts[first::workers]))

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(work, range(workers)))
    finally:
        torch.set_num_threads(threads)
