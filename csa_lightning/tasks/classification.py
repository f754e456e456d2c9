"""Image classification with an attention ResNet: the LightningModule behind the paper's Table 1.

The network (``net``), the optimiser (``optimizer``) and the lr schedule (``lr_schedule``) are
injected pieces (`csa_lightning.tasks.recipe`); the defaults are the CSA paper's recipe: SGD,
Nesterov momentum 0.9, weight decay 1e-4, lr 0.1 for a global batch of 128 (scaled linearly to the
actual global batch, logged as ``lr_scaled`` and printed when training starts), divided by 10 at
epochs 30, 60 and 90, no warm-up.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..attention import GateRecord, record_gates
from ..checks import require, require_positive
from ..models import ClassifierSpec, ResNetSpec, network_spec
from ..spec import spec_from_config
from .batch_augment import BatchAugment
from .finetune import Finetune
from .recipe import OptimizerCallable, ScaledRecipe, sgd, step_decay
from .schedules import Schedule

#: the paper's ImageNet recipe (Section 3.6), the defaults of the two pieces
PAPER_SGD = sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
PAPER_STEPS = step_decay(milestones=[30, 60, 90], gamma=0.1)

__all__ = ["ClassificationModule"]

#: the classifier head's state-dict prefix in the networks (torchvision's ResNet and timm's ResNets: ``fc``)
HEAD = "fc."


class ClassificationModule(ScaledRecipe):
    """An image classifier (by default an attention ResNet) with the paper's recipe.

    Args:
        net: the network, a [`ClassifierSpec`][csa_lightning.models.ClassifierSpec] (default
            ``ResNetSpec()``: ResNet-50, no gates, 1000 classes); in a config, ``class_path`` /
            ``init_args``, e.g. ``--model.net.attention csa``. Stored in the hyperparameters as
            plain values, so ``load_from_checkpoint`` rebuilds it.
        optimizer: any ``torch.optim`` optimiser (or a subclass of your own) as ``class_path`` and
            ``init_args`` (default: the paper's SGD, lr 0.1, Nesterov momentum 0.9, weight decay 1e-4);
            e.g. ``--model.optimizer AdamW --model.optimizer.lr 0.001``. Its ``lr`` is for a global
            batch of ``lr_reference_batch``. In Python also ``functools.partial(torch.optim.AdamW, lr=...)``.
        lr_scaling: "linear", "sqrt" or "none": how ``lr`` follows the actual global batch.
        lr_reference_batch: the global batch the configured ``lr`` is for.
        lr_schedule: a [`Schedule`][csa_lightning.tasks.Schedule] (default the paper's
            ``StepDecay([30, 60, 90], 0.1)``; ``CosineDecay``, warm-ups), stepped per optimiser step.
        label_smoothing: cross-entropy label smoothing (0 in the paper).
        mixup_alpha: batch augmentation while training (0: off; see
            `csa_lightning.tasks.batch_augment.BatchAugment`). Mixed batches train on soft
            targets; train/top1 then counts the larger of the two mixed labels.
        cutmix_alpha: as ``mixup_alpha``.
        random_erasing: as ``mixup_alpha``.
        ema_decay: an exponential moving average of the weights (None: off),
            updated every ``ema_every_n_steps`` optimiser steps by Lightning's
            ``EMAWeightAveraging`` (added by
            [`configure_callbacks`][csa_lightning.tasks.ClassificationModule.configure_callbacks]): the EMA weights are
            the ones validated and saved as the checkpoint's ``state_dict`` (the raw ones beside them, for resuming).
        ema_every_n_steps: see ``ema_decay``.
        no_weight_decay_on: "norm" and/or "bias" parameters excluded from weight decay.
        channels_last: keep the network in channels_last memory format (matches ffcv's batches).
        backbone_weights: the weights to start from: a torchvision weight name (``IMAGENET1K_V2``, from
            torchvision's cache, downloaded there if missing), a torchvision ResNet state dict, or a checkpoint of
            this module. The head (``fc``) loads when the file has the same classes (so a network with gates at
            identity starts exactly as the file's), else it is new. Its name, path and content hash enter the
            run's provenance.
        backbone_partial: allow ``backbone_weights`` that leave tensors other than the gates' unloaded.
        finetune: staged fine-tuning from ``backbone_weights``, a [`Finetune`][csa_lightning.tasks.Finetune]
            (``configs/recipe/finetune.yaml``): the gates and the head alone first, then everything with the
            pretrained parameters at a lower lr.
        compile: ``torch.compile`` the network (in place: the same state-dict keys). Pays on GPUs
            over long runs; the first steps wait for compilation (see the README's figures).
    """

    def __init__(
        self,
        net: Optional[ClassifierSpec] = None,
        optimizer: OptimizerCallable = PAPER_SGD,  # type: ignore[assignment]  # a piece's config form
        lr_scaling: str = "linear",
        lr_reference_batch: int = 128,
        lr_schedule: Schedule = PAPER_STEPS,  # type: ignore[assignment]  # a piece's config form
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        random_erasing: float = 0.0,
        ema_decay: Optional[float] = None,
        ema_every_n_steps: int = 1,
        no_weight_decay_on: Sequence[str] = (),
        channels_last: bool = True,
        backbone_weights: Optional[str] = None,
        backbone_partial: bool = False,
        finetune: Optional[Finetune] = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.init_recipe(optimizer, lr_schedule, lr_scaling, lr_reference_batch, no_weight_decay_on)
        self.finetune = None if finetune is None else spec_from_config(finetune, Finetune, "model.finetune")
        if self.finetune is not None and not backbone_weights:
            raise ValueError(
                "model.finetune needs model.backbone_weights: staged fine-tuning starts from pretrained weights "
                "(a torchvision weight name such as IMAGENET1K_V1, a state dict or a checkpoint)"
            )
        require(0 <= label_smoothing < 1, "model.label_smoothing", label_smoothing, "in [0, 1)")
        require(ema_decay is None or 0 < ema_decay < 1, "model.ema_decay", ema_decay, "null or in (0, 1)")
        require_positive("model.ema_every_n_steps", ema_every_n_steps, integer=True)
        self.net_spec = network_spec(net if net is not None else ResNetSpec(), ClassifierSpec)
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_schedule", "finetune"])
        self.hparams["net"] = self.net_spec.config()  # plain values: load_from_checkpoint rebuilds the network
        self.hparams["finetune"] = None if self.finetune is None else self.finetune.config()
        self.store_recipe()
        self.model = self.build_model()
        #: the names of the parameters the backbone weights provided (staged fine-tuning's pretrained groups)
        self.pretrained_parameters: frozenset = frozenset()
        #: the weights this run started from, as given and as the file read (RunInfo adds its content hash)
        self.weights_source: Dict[str, str] = {}
        if backbone_weights:
            from ..models import load_backbone_weights

            # the head loads when the file has the same classes (the network unchanged), else it is new
            report = load_backbone_weights(self.model, backbone_weights, head=(HEAD,), allow_partial=backbone_partial)
            rank_zero_info(f"backbone weights {backbone_weights}: {report.summary()}")
            # the head trains with the gates (in staged fine-tuning's warm-up too), loaded or not
            parameters = {name for name, _ in self.model.named_parameters() if not name.startswith(HEAD)}
            self.pretrained_parameters = frozenset(k for k in report.loaded if k in parameters)
            self.weights_source = {"model.backbone_weights": str(backbone_weights), "path": report.path}
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            # nn.Module.compile: compiled in place, so state-dict keys and checkpoints stay as without it
            self.model.compile()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        num_classes = self.net_spec.num_classes
        self.batch_augment = BatchAugment(num_classes, mixup_alpha, cutmix_alpha, random_erasing)
        top5 = min(5, num_classes)
        metrics = MetricCollection(
            {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                f"top{top5}": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # ------------------------------------------------------------------ model

    def build_model(self) -> nn.Module:
        """The network (``net.build()``); override to change it while keeping the recipe and logging."""
        return self.net_spec.build()

    def optimizer_parameter_groups(self):
        """The recipe's groups; with staged fine-tuning each is split into its pretrained and its new
        parameters (``"pretrained": True / False``), so that the two get their own lr factors."""
        groups = super().optimizer_parameter_groups()
        if self.finetune is None:
            return groups
        pretrained = {id(p) for name, p in self.model.named_parameters() if name in self.pretrained_parameters}
        split = []
        for group in groups:
            for flag in (False, True):
                params = [p for p in group["params"] if (id(p) in pretrained) == flag]
                if params:
                    split.append({**group, "params": params, "pretrained": flag})
        return split

    def group_lr_lambdas(self, optimizer, factor):
        if self.finetune is None:
            return super().group_lr_lambdas(optimizer, factor)
        per_epoch = self.steps_per_epoch() or 1
        rank_zero_info(self.finetune.describe(per_epoch))
        pretrained = self.finetune.pretrained_lr_lambda(factor, per_epoch)
        return [pretrained if group.get("pretrained") else factor for group in optimizer.param_groups]

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # ------------------------------------------------------------------ checks

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes == 1:
            rank_zero_warn(
                "the data has a single class: accuracy is 100 % whatever the network does; check the data paths "
                "(every class needs its own folder, or labels 0..K-1 in the beton)"
            )
        if data_classes and data_classes > self.net_spec.num_classes:
            raise ValueError(
                f"the data has labels up to {data_classes - 1} "
                f"but model.net.num_classes is {self.net_spec.num_classes}; "
                f"set --model.net.num_classes {data_classes}"
            )

    # ------------------------------------------------------------------ steps

    def _shared_step(self, batch, metrics: MetricCollection, stage: str, batch_idx: int = 0) -> Tensor:
        images, labels = batch[0], batch[1]
        targets = labels
        if stage == "train" and self.batch_augment.active:
            # the draws are a function of (seed, epoch, batch, rank): a resumed run mixes and erases
            # exactly as an uninterrupted one (the global generator is not restored on resume)
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            key = ((seed * 100_003 + self.current_epoch) * 10_000_019 + batch_idx) * 1_009 + self.global_rank
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key % 2**63)
                images, targets = self.batch_augment(images, labels)
        extra = stage == "train" and type(self).extra_losses is not ClassificationModule.extra_losses
        with record_gates(self.model) if extra else contextlib.nullcontext() as gates:
            logits = self(images)
        loss = self.criterion(logits.float(), targets)
        metrics.update(logits.detach().float(), targets.argmax(dim=1) if targets.dim() == 2 else targets)
        on_step = stage == "train"
        if extra and gates is not None:
            terms = self.extra_losses(gates, (images, targets), logits)
            for name, term in terms.items():
                self.log(f"train/{name}", term, on_step=True, on_epoch=True, batch_size=len(labels))
            self.log("train/loss_classification", loss, on_step=True, on_epoch=True, batch_size=len(labels))
            loss = loss + sum(terms.values())
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=not on_step,
            batch_size=len(labels),
        )
        return loss

    def extra_losses(self, gates: GateRecord, batch, logits: Tensor) -> Dict[str, Tensor]:
        """Extra loss terms of a training step: override to add, e.g., a penalty on the gates.

        ``gates`` holds this step's gate values ([`record_gates`][csa_lightning.attention.record_gates]:
        ``gates.values("p")``, differentiable), ``batch`` the (images, targets) the network saw
        (after mixup / cutmix), ``logits`` its output. Each returned term is added to the loss and
        logged as ``train/<name>``; the classification loss alone is then ``train/loss_classification``
        and ``train/loss`` their sum. Not overridden, nothing is recorded (no hooks, no cost).
        """
        return {}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, self.train_metrics, "train", batch_idx)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, self.test_metrics, "test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Tensor]:
        """Top-k classes and probabilities (k = min(5, classes)); the label too where the data has one.
        ``PredictionWriter`` (in the callbacks config) writes them to predictions.csv."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        probs = self(images).float().softmax(dim=1)
        top_probs, top_classes = probs.topk(min(5, probs.shape[1]), dim=1)
        out = {
            "prediction": top_classes[:, 0],
            "confidence": top_probs[:, 0],
            "top_classes": top_classes,
            "top_probs": top_probs,
        }
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            # a copy: the outputs are kept until the epoch ends, and ffcv refills its label buffer
            # a few batches later (a view made the first rows of predictions.csv show later labels)
            out["label"] = batch[1].clone()
        return out

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        """Accuracies (0..1) and errors (%), synchronised across processes by torchmetrics."""
        values = metrics.compute()
        errors = {f"{name}_err": 100.0 * (1.0 - value) for name, value in values.items()}
        top1 = f"{metrics.prefix}top1"
        self.log(top1, values.pop(top1), prog_bar=True)
        self.log_dict({**values, **errors})
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics)

    # ------------------------------------------------------------------ optimisation

    def configure_callbacks(self):
        """The recipe's (the training speed), and the EMA of the weights when ``ema_decay`` is set."""
        callbacks = list(super().configure_callbacks())
        if self.hparams.get("ema_decay") is None:
            return callbacks
        from lightning.pytorch.callbacks import EMAWeightAveraging

        decay, every = self.hparams["ema_decay"], self.hparams["ema_every_n_steps"]
        return [*callbacks, EMAWeightAveraging(decay=decay, update_every_n_steps=every)]
