"""What the task modules share: SGD with lr scaled linearly to the global batch, one warm-up + decay
schedule stepped per optimiser step, and images/s logging.

The schedule (:class:`WarmupDecay`) is a pure function of the optimiser step: linear warm-up from
``lr * warmup_factor`` over ``warmup_epochs`` epochs or ``warmup_iters`` steps, then either step
decay (``lr * gamma ** k`` after the k-th of ``milestones``, in epochs) or cosine decay to 0 over
the remaining steps. Being a function of the step alone (and saved with the scheduler's state),
a resumed run continues it exactly, mid-epoch included.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Tuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..checks import oversubscription_warning, require, require_non_negative, require_positive

__all__ = ["LinearScaledRecipe", "WarmupDecay", "check_sgd_recipe", "SCHEDULES"]

SCHEDULES = ("step", "cosine")


def check_sgd_recipe(
    lr: float,
    lr_reference_batch: int,
    momentum: float,
    weight_decay: float,
    milestones: Sequence[int],
    gamma: float,
    schedule: str = "step",
    warmup_epochs: float = 0.0,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> None:
    """One-line errors for impossible recipe values, when the module is built (not epochs later)."""
    require_positive("model.lr", lr)
    require_positive("model.lr_reference_batch", lr_reference_batch, integer=True)
    require(isinstance(momentum, (int, float)) and 0 <= momentum < 1, "model.momentum", momentum, "in [0, 1)")
    require_non_negative("model.weight_decay", weight_decay)
    require_non_negative("model.milestones", list(milestones))
    require_positive("model.gamma", gamma)
    require(schedule in SCHEDULES, "model.schedule", schedule, f"one of {', '.join(SCHEDULES)}")
    require_non_negative("model.warmup_epochs", warmup_epochs)
    require_non_negative("model.warmup_iters", warmup_iters)
    require(
        not (warmup_epochs and warmup_iters),
        "model.warmup_epochs",
        warmup_epochs,
        f"0 when model.warmup_iters is set ({warmup_iters}): give the warm-up in epochs or in steps",
    )
    require(0 < warmup_factor <= 1, "model.warmup_factor", warmup_factor, "in (0, 1]")


@dataclass(frozen=True)
class WarmupDecay:
    """The lr factor of optimiser step ``step`` (a ``LambdaLR`` lambda).

    Args:
        warmup_steps: linear warm-up from ``warmup_factor`` to 1 over these steps.
        warmup_factor: the factor at step 0.
        decay: "step" (``gamma ** k`` after the k-th milestone epoch) or "cosine" (from 1 after
            the warm-up to 0 at ``total_steps``).
        milestones, gamma: step decay, in epochs.
        steps_per_epoch: optimiser steps per epoch (for milestones and epoch-given warm-ups).
        total_steps: the run's optimiser steps (for cosine decay).
    """

    warmup_steps: int = 0
    warmup_factor: float = 0.001
    decay: str = "step"
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1
    steps_per_epoch: int = 1
    total_steps: int = 1

    def __call__(self, step: int) -> float:
        warm = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            warm = self.warmup_factor * (1 - alpha) + alpha
        if self.decay == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
        epoch = step // max(1, self.steps_per_epoch)
        return warm * self.gamma ** bisect.bisect_right(sorted(self.milestones), epoch)


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

    def optimizer_parameter_groups(self) -> Iterable:
        """What SGD optimises (parameters or parameter groups); tasks override it."""
        return [p for p in self.parameters() if p.requires_grad]

    def steps_per_epoch(self) -> Optional[int]:
        """Optimiser steps per training epoch (None when the loader has no length)."""
        trainer = self._trainer
        if trainer is None:
            return None
        trainer.estimated_stepping_batches  # noqa: B018 - loads the training data, sets num_training_batches
        batches = trainer.num_training_batches
        if batches in (None, float("inf")):
            return None
        return max(1, -(-int(batches) // trainer.accumulate_grad_batches))

    def lr_schedule(self) -> WarmupDecay:
        """The run's :class:`WarmupDecay`, from the hyperparameters and the trainer's step counts."""
        hp = self.hparams
        per_epoch = self.steps_per_epoch() or 1
        total = self._trainer.estimated_stepping_batches if self._trainer is not None else per_epoch
        total = int(total) if total not in (None, float("inf")) else per_epoch
        warmup = int(hp.get("warmup_iters", 0)) + round(float(hp.get("warmup_epochs", 0.0)) * per_epoch)
        return WarmupDecay(
            warmup_steps=warmup,
            warmup_factor=float(hp.get("warmup_factor", 0.001)),
            decay=hp.get("schedule", "step"),
            milestones=tuple(int(m) for m in hp.milestones),
            gamma=float(hp.gamma),
            steps_per_epoch=per_epoch,
            total_steps=total,
        )

    def configure_optimizers(self):
        """SGD at the scaled lr with :meth:`lr_schedule`, stepped per optimiser step."""
        hp = self.hparams
        rank_zero_info(self.lr_message())
        optimizer = torch.optim.SGD(
            self.optimizer_parameter_groups(),
            lr=self.scaled_lr(),
            momentum=hp.momentum,
            nesterov=bool(hp.get("nesterov", False)) and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_schedule())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        # the configured lr scaled to this run's global batch; the lr itself is LearningRateMonitor's (lr-SGD)
        self.log("lr_scaled", float(self.scaled_lr()), on_step=False, on_epoch=True)

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
