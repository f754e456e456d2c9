"""What the task modules share: the recipe as injected pieces, and images/s logging.

- ``optimizer``: any ``torch.optim`` optimiser (or a user's ``Optimizer`` subclass) in LightningCLI's
  convention, ``class_path`` and ``init_args``. Its ``lr`` is given for a global batch of
  ``lr_reference_batch`` and scaled to the actual one by ``lr_scaling`` ("linear", "sqrt" or "none");
  the scaled lr is printed when training starts and logged as ``lr_scaled``. Switching the class on
  the command line (``--model.optimizer AdamW``) keeps only the arguments the new class takes.
- ``no_weight_decay_on``: "norm" and/or "bias" parameters in a group with ``weight_decay`` 0, for any
  optimiser with a ``weight_decay`` argument.
- ``lr_schedule``: a [`Schedule`][csa_lightning.tasks.Schedule] (step decay, warm-up + step,
  warm-up + cosine, or a user's), stepped per optimiser step; the module supplies the steps per
  epoch and in the run.

The module stores the optimiser and the schedule as plain ``{class_path, init_args}`` values in its
hyperparameters, so ``load_from_checkpoint`` rebuilds them. Checkpoints written before these were
pieces (flat ``lr``, ``momentum``, ``milestones``, ``schedule`` ...) are read through
`csa_lightning.tasks.legacy.upgrade_recipe_hparams`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from ..checks import oversubscription_warning, require, require_positive
from ..errors import UsageError, first_line
from ..spec import plain, public_path, spec_from_config
from .legacy import read_checkpoint_hparams
from .schedules import Schedule, WarmupDecay

__all__ = [
    "ScaledRecipe",
    "OptimizerCallable",
    "LR_SCALING",
    "optimizer_config",
    "parameter_groups",
    "WarmupDecay",
]

LR_SCALING = ("linear", "sqrt", "none")
#: the optimiser argument's type, as LightningCLI's: jsonargparse makes a config's piece a partial
OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def sgd(**init_args) -> Dict[str, Any]:
    """An SGD piece as plain values (the tasks' defaults)."""
    return {"class_path": "torch.optim.SGD", "init_args": init_args}


def step_decay(**init_args) -> Dict[str, Any]:
    """A [`StepDecay`][csa_lightning.tasks.StepDecay] piece as plain values (the tasks' defaults)."""
    return {"class_path": "csa_lightning.tasks.StepDecay", "init_args": init_args}


def optimizer_config(value: Any, what: str = "model.optimizer") -> Dict[str, Any]:
    """The optimiser piece as plain ``{class_path, init_args}``, checked, from what a config, a checkpoint
    or Python gives: such a mapping, an ``Optimizer`` subclass, or ``functools.partial(OptimizerClass,
    **init_args)`` (what jsonargparse makes of a config's piece). One-line errors name what is wrong."""
    cls, init_args = None, {}
    if isinstance(value, Mapping) and "class_path" in value:
        cls = _import_optimizer(str(value["class_path"]), what)
        init_args = dict(value.get("init_args") or {})
    elif isinstance(value, type):
        cls = value
    elif isinstance(value, functools.partial):
        # jsonargparse: partial(call_without_instantiate_context, instantiator, cls, **init_args)
        candidates = [value.func, *value.args]
        cls = next((c for c in reversed(candidates) if isinstance(c, type)), None)
        init_args = dict(value.keywords)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(
            f"{what} must name a torch.optim.Optimizer subclass (class_path and init_args, e.g. torch.optim.AdamW), "
            f"got {value!r}"
        )
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "params")]
    unknown = sorted(set(init_args) - set(accepted))
    if unknown:
        raise ValueError(
            f"{what}: {public_path(cls)} takes no argument {', '.join(repr(u) for u in unknown)} "
            f"(it takes {', '.join(accepted)}); remove it or pick another optimiser"
        )
    return {"class_path": public_path(cls), "init_args": plain(init_args)}


def _import_optimizer(path: str, what: str) -> type:
    module_name, _, name = path.rpartition(".")
    if not module_name:  # a short name, as LightningCLI accepts: AdamW
        module_name = "torch.optim"
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{what}: cannot import '{path}' ({err}); give an optimiser's import path") from None


def optimizer_class(config: Mapping[str, Any]) -> type:
    return _import_optimizer(config["class_path"], "model.optimizer")


def configured_lr(config: Mapping[str, Any]) -> Any:
    """The piece's lr (for the reference batch): its init_args', else the class's default (None: none;
    `check_recipe` refuses that)."""
    lr = (config.get("init_args") or {}).get("lr")
    if lr is None:
        default = inspect.signature(optimizer_class(config)).parameters.get("lr")
        lr = None if default is None or default.default is inspect.Parameter.empty else default.default
    return lr


def check_recipe(optimizer: Mapping[str, Any], lr_scaling: str, lr_reference_batch: int, no_weight_decay_on) -> None:
    """One-line errors for a recipe that cannot run, when the module is built (not epochs later)."""
    cls = optimizer_class(optimizer)
    lr = configured_lr(optimizer)
    require_positive("model.optimizer.lr", lr)
    require(lr_scaling in LR_SCALING, "model.lr_scaling", lr_scaling, f"one of {', '.join(LR_SCALING)}")
    require_positive("model.lr_reference_batch", lr_reference_batch, integer=True)
    unknown = set(no_weight_decay_on) - {"norm", "bias"}
    require(not unknown, "model.no_weight_decay_on", list(no_weight_decay_on), "a list of 'norm' and 'bias'")
    takes_decay = "weight_decay" in inspect.signature(cls).parameters
    require(
        takes_decay or not no_weight_decay_on,
        "model.no_weight_decay_on",
        list(no_weight_decay_on),
        f"[] with {public_path(cls)}, which has no weight_decay argument",
    )
    # the optimiser's own checks (a negative momentum, betas out of range) now, on one stand-in tensor
    try:
        cls([torch.zeros(1, device="cpu", requires_grad=True)], **dict(optimizer.get("init_args") or {}))
    except (ValueError, TypeError, RuntimeError) as err:
        first = first_line(err)
        raise ValueError(f"model.optimizer: {public_path(cls)} refuses its arguments ({first})") from None


def parameter_groups(model: nn.Module, no_weight_decay_on: Sequence[str]) -> List[Dict[str, Any]]:
    """The trainable parameters, with those ``no_weight_decay_on`` names ("norm": weights of
    normalisation layers, "bias": every bias) in a second group with ``weight_decay`` 0; the first
    group takes the optimiser's own weight decay. An empty list decays everything, as the paper's
    recipe (and torchvision's reference) does."""
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            skip = ("bias" in no_weight_decay_on and name == "bias") or (
                "norm" in no_weight_decay_on and isinstance(module, NORM_TYPES)
            )
            (no_decay if skip else decay).append(param)
    groups: List[Dict[str, Any]] = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class ScaledRecipe(L.LightningModule):
    """The base of the task modules: the optimiser and schedule pieces (``hparams.optimizer``,
    ``hparams.lr_schedule``), the lr scaled to the global batch, and images/s logging. A subclass
    provides ``self.model`` (the network)."""

    model: nn.Module

    def init_recipe(self, optimizer: Any, lr_schedule: Any, lr_scaling: str, lr_reference_batch: int,
                    no_weight_decay_on: Sequence[str]) -> None:  # fmt: skip
        """Check and keep the pieces (call before ``save_hyperparameters``;
        `csa_lightning.tasks.recipe.ScaledRecipe.store_recipe` after)."""
        self.optimizer_piece = optimizer_config(optimizer)
        check_recipe(self.optimizer_piece, lr_scaling, lr_reference_batch, no_weight_decay_on)
        self.schedule = spec_from_config(lr_schedule, Schedule, "model.lr_schedule")

    def store_recipe(self) -> None:
        # plain values: load_from_checkpoint rebuilds the pieces (a jsonargparse partial is not plain)
        self.hparams["optimizer"] = self.optimizer_piece
        self.hparams["lr_schedule"] = self.schedule.config()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's, also for checkpoints written before the optimiser and schedule were pieces."""
        if isinstance(checkpoint_path, (str, Path)) and os.path.isfile(checkpoint_path):
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            if read_checkpoint_hparams(checkpoint):
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                buffer.seek(0)
                checkpoint_path = buffer
        return super().load_from_checkpoint(
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs
        )

    def global_batch_size(self) -> Optional[int]:
        """Per-process batch x processes x accumulation, from the datamodule (None if unknown)."""
        trainer: Optional[L.Trainer] = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        per_process = getattr(datamodule, "batch_size", None)
        if per_process is None or trainer is None:
            return None
        return int(per_process) * trainer.world_size * trainer.accumulate_grad_batches

    def lr_scale(self) -> float:
        """The factor from the reference batch's lr to this run's (1 when the batch is unknown)."""
        batch = self.global_batch_size()
        rule = self.hparams.get("lr_scaling", "linear")
        if batch is None or rule == "none":
            return 1.0
        ratio = batch / self.hparams["lr_reference_batch"]
        return ratio if rule == "linear" else math.sqrt(ratio)

    def scaled_lr(self) -> float:
        return configured_lr(self.optimizer_piece) * self.lr_scale()

    def optimizer_parameter_groups(self) -> Iterable:
        """What the optimiser optimises: the trainable parameters, split by ``no_weight_decay_on``."""
        return parameter_groups(self.model, self.hparams.get("no_weight_decay_on") or ())

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

    def lr_schedule(self):
        """The run's lr factor per optimiser step, from the schedule piece and the trainer's step counts
        (warns when the warm-up is longer than the run: the lr never reaches its configured value)."""
        per_epoch = self.steps_per_epoch() or 1
        total = self._trainer.estimated_stepping_batches if self._trainer is not None else per_epoch
        total = int(total) if total not in (None, float("inf")) else per_epoch
        factor = self.schedule.lr_lambda(per_epoch, total)
        warmup = self.schedule.warmup_steps(per_epoch)
        if warmup > total:
            reached = max(float(factor(total - 1)), float(factor(0)))
            rank_zero_warn(
                f"model.lr_schedule: the warm-up ({warmup} optimiser steps) is longer than the run ({total} steps): "
                f"the lr reaches only {100 * reached:.0f} % of the configured lr; shorten the warm-up "
                "(warmup_epochs / warmup_iters) or train longer"
            )
        return factor

    def check_applied_lr(self) -> None:
        """The lr each parameter group is about to be stepped with must be finite and >= 0: a schedule
        whose factor is negative trains by gradient ascent (it ran to the end with exit 0)."""
        trainer = self._trainer
        if trainer is None or not trainer.optimizers:
            return
        for group in trainer.optimizers[0].param_groups:
            lr = group["lr"]
            if not (math.isfinite(lr) and lr >= 0):
                raise UsageError(
                    f"model.lr_schedule {type(self.schedule).__name__} gives lr {lr:g} at optimiser step "
                    f"{trainer.global_step}: an applied lr must be finite and >= 0; fix its lr_lambda "
                    "(the factor of the configured lr at each step)"
                )

    def configure_optimizers(self):
        """The optimiser piece at the scaled lr over
        `csa_lightning.tasks.recipe.ScaledRecipe.optimizer_parameter_groups`, with the schedule piece stepped per
        optimiser step."""
        rank_zero_info(self.lr_message())
        init_args = dict(self.optimizer_piece["init_args"])
        init_args["lr"] = self.scaled_lr()
        optimizer = optimizer_class(self.optimizer_piece)(self.optimizer_parameter_groups(), **init_args)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.group_lr_lambdas(optimizer, self.lr_schedule()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def group_lr_lambdas(self, optimizer, factor: Callable[[int], float]) -> List[Callable[[int], float]]:
        """Each parameter group's lr factor per optimiser step: the schedule's for every group (a module
        with staged fine-tuning gives its pretrained groups their own). One LambdaLR over every group,
        all created up front: a group added later would not be in it."""
        return [factor for _ in optimizer.param_groups]

    def on_train_epoch_start(self) -> None:
        # the configured lr scaled to this run's global batch; the lr itself is LearningRateMonitor's
        self.log("lr_scaled", float(self.scaled_lr()), on_step=False, on_epoch=True)

    def lr_message(self) -> str:
        batch = self.global_batch_size()
        rule = self.hparams.get("lr_scaling", "linear")
        return (
            f"lr {configured_lr(self.optimizer_piece):g} for a global batch of {self.hparams['lr_reference_batch']} "
            f"-> {self.scaled_lr():g} ({rule} scaling) for the actual global batch of "
            f"{batch if batch is not None else 'unknown (no datamodule batch_size)'}"
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
        self.check_applied_lr()

    def configure_callbacks(self):
        """The training speed every run logs (`csa_lightning.tasks.callbacks.ImagesPerSecond`)."""
        from .callbacks import ImagesPerSecond

        return [ImagesPerSecond()]
