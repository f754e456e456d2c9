"""The training speed every run logs (``train/images_per_sec``, the figure an ablation's record and
report carry): images per second of the optimisation step (forward, backward, update), counted over
every process, data loading not included. The task modules add it (``configure_callbacks``)."""

from __future__ import annotations

import time
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from ...run_folder.result import TRAIN_IMAGES_PER_SEC

__all__ = ["ImagesPerSecond"]


class ImagesPerSecond(Callback):
    """Logs `csa_lightning.run_folder.result.TRAIN_IMAGES_PER_SEC`, the mean over each epoch of
    images / step time; a module's ``images_in(batch)`` says how many images a batch holds."""

    def __init__(self) -> None:
        self._started: Optional[float] = None

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        if self._started is None:
            return
        elapsed = time.perf_counter() - self._started
        images = pl_module.images_in(batch) * trainer.world_size
        pl_module.log(TRAIN_IMAGES_PER_SEC, images / max(elapsed, 1e-9), on_step=False, on_epoch=True, batch_size=1)
