"""Staged fine-tuning from pretrained weights, as a config piece (``configs/recipe/finetune.yaml``).

For the first ``warmup_epochs`` only the new parameters train (the gates and the head: every parameter
the weights file did not provide); then everything, the pretrained parameters at
``pretrained_lr_factor`` times the lr of the new ones. Both stages are lr factors of parameter groups
that exist from the first step, under the recipe's one LambdaLR:

- no group is added at the unfreeze step (a LambdaLR built over fewer groups fails there: ``zip()
  argument 2 is shorter than argument 1``);
- nothing is frozen through ``requires_grad`` (DDP's reducer registers the parameters that need
  gradients once, at wrapping, and fails when that set changes), and Lightning's
  ``BackboneFinetuning`` (which expects a ``backbone`` attribute) is not needed;
- a resume at any step restores the same factors: each is a function of the optimiser step alone.

During the warm-up the pretrained parameters stay exactly as loaded (lr 0: neither the gradient nor
the weight decay moves them); their BatchNorm running statistics do follow the new data.
"""

from __future__ import annotations

from typing import Callable

from ..checks import require, require_positive
from ..spec import Spec

__all__ = ["Finetune"]


class Finetune(Spec):
    """The staged fine-tuning piece of `csa_lightning.tasks.ClassificationModule` (``model.finetune``).

    Args:
        warmup_epochs: epochs (fractions allowed) in which only the new parameters train.
        pretrained_lr_factor: after the warm-up, the pretrained parameters' lr relative to the new ones'
            (1.0: the same lr).
    """

    def __init__(self, warmup_epochs: float = 1.0, pretrained_lr_factor: float = 0.1) -> None:
        require(
            isinstance(warmup_epochs, (int, float)) and not isinstance(warmup_epochs, bool) and warmup_epochs >= 0,
            "model.finetune.warmup_epochs",
            warmup_epochs,
            ">= 0 (epochs in which only the gates and the head train)",
        )
        require_positive("model.finetune.pretrained_lr_factor", pretrained_lr_factor)
        self.warmup_epochs = float(warmup_epochs)
        self.pretrained_lr_factor = float(pretrained_lr_factor)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the warm-up."""
        return round(self.warmup_epochs * steps_per_epoch)

    def pretrained_lr_lambda(self, schedule: Callable[[int], float], steps_per_epoch: int) -> Callable[[int], float]:
        """The pretrained parameters' lr factor per optimiser step: 0 in the warm-up, then the schedule's
        factor times ``pretrained_lr_factor``."""
        warmup, scale = self.warmup_steps(steps_per_epoch), self.pretrained_lr_factor

        def factor(step: int) -> float:
            return 0.0 if step < warmup else scale * schedule(step)

        return factor

    def describe(self, steps_per_epoch: int) -> str:
        return (
            f"fine-tuning: the gates and the head alone for {self.warmup_steps(steps_per_epoch)} optimiser steps "
            f"({self.warmup_epochs:g} epochs), then everything, the pretrained parameters at "
            f"{self.pretrained_lr_factor:g} x the lr"
        )
