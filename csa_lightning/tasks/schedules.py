"""Learning-rate schedules as config pieces: a task's ``lr_schedule``, stepped per optimiser step.

A schedule is a `csa_lightning.spec.Spec` (plain values, ``class_path`` / ``init_args`` in a
config, stored as such in a checkpoint). The task supplies what only the trainer knows, the optimiser
steps per epoch and in the whole run, to [`Schedule.lr_lambda`][csa_lightning.tasks.Schedule.lr_lambda], which returns
the factor of the configured lr at each step (a ``LambdaLR`` lambda)::

    lr_schedule:
      class_path: csa_lightning.tasks.StepDecay        # the paper's ImageNet recipe
      init_args: {milestones: [30, 60, 90], gamma: 0.1}

    lr_schedule:
      class_path: csa_lightning.tasks.StepDecay        # COCO 2x: 500 warm-up iterations, then steps
      init_args: {milestones: [16, 22], warmup_iters: 500, warmup_factor: 0.001}

    lr_schedule:
      class_path: csa_lightning.tasks.CosineDecay      # torchvision's strong recipe
      init_args: {warmup_epochs: 5, warmup_factor: 0.01}

A schedule of your own is a [`Schedule`][csa_lightning.tasks.Schedule] subclass whose ``lr_lambda`` returns a callable
object (its fields are saved with the scheduler's state, so a resumed run continues it exactly).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

from ..checks import require, require_non_negative, require_positive
from ..spec import Spec

__all__ = ["Schedule", "StepDecay", "CosineDecay", "WarmupDecay"]


@dataclass(frozen=True)
class WarmupDecay:
    """The lr factor of optimiser step ``step`` (a ``LambdaLR`` lambda).

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_steps``, times either step decay
    (``gamma ** k`` after the k-th of ``milestones``, in epochs of ``steps_per_epoch`` steps) or
    cosine decay (from 1 after the warm-up to 0 at ``total_steps``). A function of the step alone,
    saved with the scheduler's state: a resumed run continues it exactly, mid-epoch included.
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


class Schedule(Spec):
    """Base of lr schedules: a linear warm-up from ``lr * warmup_factor`` over ``warmup_epochs``
    epochs (fractions allowed) or ``warmup_iters`` optimiser steps (0: none), then the subclass's decay.
    """

    def __init__(self, warmup_epochs: float = 0.0, warmup_iters: int = 0, warmup_factor: float = 0.001) -> None:
        require_non_negative("model.lr_schedule.warmup_epochs", warmup_epochs)
        require_non_negative("model.lr_schedule.warmup_iters", warmup_iters)
        require(
            not (warmup_epochs and warmup_iters),
            "model.lr_schedule.warmup_epochs",
            warmup_epochs,
            f"0 when warmup_iters is set ({warmup_iters}): give the warm-up in epochs or in steps",
        )
        require(0 < warmup_factor <= 1, "model.lr_schedule.warmup_factor", warmup_factor, "in (0, 1]")
        self.warmup_epochs = warmup_epochs
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return int(self.warmup_iters) + round(float(self.warmup_epochs) * steps_per_epoch)

    def lr_lambda(self, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
        """The factor of the configured lr at each optimiser step of a run of ``total_steps`` steps."""
        raise NotImplementedError(f"{type(self).__name__} must implement lr_lambda(steps_per_epoch, total_steps)")


class StepDecay(Schedule):
    """lr x ``gamma`` after each of ``milestones`` (epochs), after an optional warm-up: the paper's
    ImageNet recipe (30, 60, 90; no warm-up) and the COCO 2x recipe (16, 22; 500 warm-up steps)."""

    def __init__(
        self,
        milestones: Sequence[int] = (30, 60, 90),
        gamma: float = 0.1,
        warmup_epochs: float = 0.0,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
    ) -> None:
        super().__init__(warmup_epochs, warmup_iters, warmup_factor)
        require_non_negative("model.lr_schedule.milestones", list(milestones))
        require_positive("model.lr_schedule.gamma", gamma)
        self.milestones = [int(m) for m in milestones]
        self.gamma = gamma

    def lr_lambda(self, steps_per_epoch: int, total_steps: int) -> WarmupDecay:
        return WarmupDecay(
            warmup_steps=self.warmup_steps(steps_per_epoch),
            warmup_factor=float(self.warmup_factor),
            decay="step",
            milestones=tuple(self.milestones),
            gamma=float(self.gamma),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )


class CosineDecay(Schedule):
    """Cosine decay from the lr to 0 at the run's last step, after an optional warm-up (torchvision's
    ``LinearLR`` then ``CosineAnnealingLR``, per step)."""

    def lr_lambda(self, steps_per_epoch: int, total_steps: int) -> WarmupDecay:
        return WarmupDecay(
            warmup_steps=self.warmup_steps(steps_per_epoch),
            warmup_factor=float(self.warmup_factor),
            decay="cosine",
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )
