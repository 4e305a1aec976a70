"""Training engine: :class:`Trainer` (AdamW, warm-up + cosine, seeded, resumable mid-epoch, DDP),
atomic safetensors checkpoints, the LR schedule and process-group helpers.

    from alignkit.train import Trainer
    Trainer(system, (x_a, x_b), batch_size=256, epochs=10, lr=1e-3, out_dir="runs/x").fit()
"""

from __future__ import annotations

from alignkit.train import checkpoint, distributed, schedule, trainer
from alignkit.train.checkpoint import *  # noqa: F403
from alignkit.train.distributed import *  # noqa: F403
from alignkit.train.schedule import *  # noqa: F403
from alignkit.train.trainer import *  # noqa: F403

__all__ = [*trainer.__all__, *checkpoint.__all__, *schedule.__all__, *distributed.__all__]
