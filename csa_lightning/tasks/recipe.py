"""What the task modules share: lr scaled linearly with the global batch, and images/s logging."""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from ..checks import oversubscription_warning, require, require_non_negative, require_positive

__all__ = ["LinearScaledRecipe", "check_sgd_recipe"]


def check_sgd_recipe(
    lr: float, lr_reference_batch: int, momentum: float, weight_decay: float, milestones: Sequence[int], gamma: float
) -> None:
    """One-line errors for impossible recipe values, when the module is built (not epochs later)."""
    require_positive("model.lr", lr)
    require_positive("model.lr_reference_batch", lr_reference_batch, integer=True)
    require(isinstance(momentum, (int, float)) and 0 <= momentum < 1, "model.momentum", momentum, "in [0, 1)")
    require_non_negative("model.weight_decay", weight_decay)
    require_non_negative("model.milestones", list(milestones))
    require_positive("model.gamma", gamma)


class LinearScaledRecipe:
    """Mixin for LightningModules with ``hparams.lr`` given for a global batch of
    ``hparams.lr_reference_batch`` (the paper's), scaled linearly to the actual one."""

    _batch_started: Optional[float] = None

    def global_batch_size(self) -> Optional[int]:
        """Per-process batch x processes x accumulation, from the datamodule (None if unknown)."""
        trainer: Optional[L.Trainer] = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        per_process = getattr(datamodule, "batch_size", None)
        if per_process is None:
            return None
        return int(per_process) * trainer.world_size * trainer.accumulate_grad_batches

    def scaled_lr(self) -> float:
        batch = self.global_batch_size()
        if batch is None:
            return self.hparams.lr
        return self.hparams.lr * batch / self.hparams.lr_reference_batch

    def lr_message(self) -> str:
        batch = self.global_batch_size()
        return (
            f"lr {self.hparams.lr:g} for a global batch of {self.hparams.lr_reference_batch} -> {self.scaled_lr():g} "
            f"for the actual global batch of {batch if batch is not None else 'unknown (no datamodule batch_size)'}"
        )

    @staticmethod
    def images_in(batch: Any) -> int:
        """Images in a batch: (images, labels) tensors or (list of images, list of targets)."""
        return len(batch[0])

    def on_fit_start(self) -> None:
        trainer = self.trainer
        on_cpu = type(trainer.accelerator).__name__ == "CPUAccelerator"
        message = oversubscription_warning(trainer.world_size, os.cpu_count(), on_cpu, self.global_batch_size())
        if message:
            rank_zero_warn(message)
        super().on_fit_start()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # images/s of the optimisation step (forward, backward, update); data loading is not included
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._batch_started is None:
            return
        elapsed = time.perf_counter() - self._batch_started
        images = self.images_in(batch) * self.trainer.world_size
        self.log("train/images_per_sec", images / max(elapsed, 1e-9), on_step=True, on_epoch=True, batch_size=1)
