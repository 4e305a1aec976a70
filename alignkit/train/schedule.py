"""Learning-rate schedule: linear warm-up, then cosine decay — a plain function used through ``LambdaLR``.

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total=1000, warmup=50, min_ratio=0.0)
    )

Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (gradual linear warm-up);
Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts" (cosine annealing, here
without restarts).
"""

from __future__ import annotations

import math

from alignkit.functional._checks import check_int

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    ``LambdaLR`` calls it with the number of optimiser steps already taken, so step ``k`` trains with
    ``lr · warmup_cosine(k, …)``::

        k <  W:  m(k) = (k + 1) / W                                  (linear warm-up, reaches 1 at k = W − 1)
        k ≥  W:  p = min(1, (k − W) / max(1, T − W))
                 m(k) = r + (1 − r) · (1 + cos(π·p)) / 2             (cosine from 1 down to r)

    with ``T = total``, ``W = warmup`` and ``r = min_ratio``. Values: ``m(0) = 1/W`` (``1`` without
    warm-up; the first step never has learning rate 0), ``m(W) = 1``, ``m(T) = r`` and ``m(k) = r`` for
    every ``k ≥ T``. Warm-up: Goyal et al. 2017, "Accurate, Large Minibatch SGD"; cosine annealing:
    Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts".

    Args:
        step: optimiser steps already taken, ``k ≥ 0``.
        total: total number of optimiser steps ``T ≥ 1``.
        warmup: warm-up steps ``0 ≤ W ≤ T``.
        min_ratio: final multiplier ``r ∈ [0, 1]``.

    Returns:
        The multiplier as a Python float. Cost: O(1).
    """
    check_int(step, "step", 0)
    check_int(total, "total", 1)
    check_int(warmup, "warmup", 0, total, what=f" (at most total = {total})")
    if not (isinstance(min_ratio, (int, float)) and 0.0 <= min_ratio <= 1.0):
        raise ValueError(f"min_ratio must be a number in [0, 1], got {min_ratio!r}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return float(min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
