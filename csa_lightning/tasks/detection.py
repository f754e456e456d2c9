"""Object detection and instance segmentation: the LightningModule behind the paper's Tables 2 and 3.

torchvision's Faster R-CNN or Mask R-CNN on an attention-ResNet + FPN backbone
(:mod:`csa_lightning.models.detection`). The recipe defaults are the paper's 2x schedule as in
torchvision's references and mmdetection: SGD, lr 0.02 for a global batch of 16 (scaled
linearly), momentum 0.9, weight decay 1e-4, 24 epochs with lr / 10 at epochs 16 and 22, linear
warm-up over the first 500 iterations from lr / 1000; backbone from ImageNet weights,
FrozenBatchNorm, 3 trainable stages.

Validation and test report COCO AP, AP50, AP75, APs, APm and APl for boxes (``val/box_AP`` ...)
and, with Mask R-CNN, masks (``val/mask_AP`` ...), through torchmetrics' MeanAveragePrecision with
the faster_coco_eval backend; targets carry ``iscrowd`` and ``area`` so that crowd regions are
ignored and the size split uses the annotation area, as COCO's own evaluation does.
"""

from __future__ import annotations

import bisect
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ..models.attention_resnet import BackboneLoadReport, load_backbone_weights
from ..models.detection import ARCHITECTURES, attention_resnet_fpn, build_detector
from .checkpoints import newest_checkpoint
from .recipe import LinearScaledRecipe

__all__ = ["DetectionModule", "detection_metric", "gather_list_states", "METRIC_NAMES"]

#: build_detector's keyword options, which DetectionModule takes under the same names
_DETECTOR_OPTIONS = tuple(inspect.signature(build_detector).parameters)[3:]

#: torchmetrics' result keys -> the names logged (COCO's AP, AP50, AP75, APs, APm, APl)
METRIC_NAMES = {"map": "AP", "map_50": "AP50", "map_75": "AP75", "map_small": "APs", "map_medium": "APm", "map_large": "APl"}
_IOU_PREFIX = {"bbox": "box", "segm": "mask"}


def detection_metric(iou_types: Sequence[str] = ("bbox",), backend: str = "faster_coco_eval"):
    """COCO mAP for boxes (and masks) as this module computes it."""
    import numpy as np
    from torchmetrics.detection import MeanAveragePrecision

    # COCO's own thresholds in float64: torchmetrics' defaults come from float32 torch.linspace
    # (0.550000011920929, 0.0099999998), which moves the recall sampling and AP by up to ~5e-4
    iou_thresholds = np.linspace(0.5, 0.95, 10).tolist()
    rec_thresholds = np.linspace(0.0, 1.0, 101).tolist()
    return MeanAveragePrecision(
        iou_type=tuple(iou_types), backend=backend, iou_thresholds=iou_thresholds, rec_thresholds=rec_thresholds,
        sync_on_compute=False,  # gathered by gather_list_states: ranks hold different numbers of images
    )


def gather_list_states(metric) -> None:
    """Give every process all processes' per-image states of a list-state metric, in rank order.

    torchmetrics synchronises a list state one element at a time, which needs the same number of
    elements on every rank; validation sharded without padding (no image counted twice) holds
    3 images on one rank and 2 on another. all_gather_object handles any lengths.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    for name in metric._defaults:
        local = getattr(metric, name)
        if not isinstance(local, list):
            continue
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, [t.cpu() if isinstance(t, Tensor) else t for t in local])
        device = metric.device
        setattr(metric, name, [t.to(device) if isinstance(t, Tensor) else t for part in gathered for t in part])


def _resolve_backbone_weights(path: Optional[str], recipe: Optional[str]) -> Optional[str]:
    """A checkpoint file as given; a run folder -> its newest checkpoint; trained first from
    ``recipe`` (a cli.py classification config) when there is none yet."""
    if not path:
        return None
    if Path(path).is_file():
        return path
    found = newest_checkpoint(path)
    if found is None and recipe:
        rank_zero_info(f"no classification checkpoint under {path}: training one first with {recipe}")
        command = [sys.executable, "-m", "csa_lightning.cli", "fit", "--config", recipe, "--trainer.default_root_dir", str(path)]
        if subprocess.run(command).returncode != 0:
            raise ValueError(f"training the backbone with {recipe} failed (see its output above); fix it or pass model.backbone_weights")
        found = newest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"backbone weights {path} not found (no file, no checkpoint under it); pass a ResNet state dict or "
            "a classification checkpoint, or set model.backbone_recipe to train one"
        )
    return str(found)


class DetectionModule(LinearScaledRecipe, L.LightningModule):
    """Faster R-CNN / Mask R-CNN with an attention ResNet-FPN backbone.

    Args:
        architecture: "faster_rcnn" or "mask_rcnn".
        depth, attention, placement, attention_options: the backbone, as in ClassificationModule.
        num_classes: object categories (COCO: 80; the background is added by the model).
        trainable_layers: backbone stages trained, counted from the top (torchvision's; 3 in the paper).
        backbone_weights: a torchvision ResNet state dict, a ClassificationModule checkpoint of this
            project, or a run folder holding one (its newest last.ckpt); the ``fc`` head is ignored.
        backbone_recipe: a cli.py classification config to train first when ``backbone_weights``
            is a folder without a checkpoint (the demos make their digits backbone this way).
        frozen_bn: FrozenBatchNorm2d in the backbone (default: when starting from weights).
        lr: learning rate for a global batch of ``lr_reference_batch`` (scaled linearly).
        momentum, weight_decay: SGD.
        milestones, gamma: lr divided by 1 / gamma at these epochs.
        warmup_iters, warmup_factor: linear warm-up from ``lr * warmup_factor`` over these steps.
        min_size, max_size: torchvision's resizing of the input images (800 / 1333 for COCO).
        anchor_sizes: one anchor size per FPN level (default torchvision's 32..512).
        rpn_*, box_*, mask_head_layers: torchvision's sampling and proposal numbers, the box head's
            width and the mask head's convolutions (its defaults are COCO's; the demos slim them).
    """

    def __init__(
        self,
        architecture: str = "faster_rcnn",
        depth: int = 50,
        attention: Optional[str] = None,
        placement: Union[None, str, Sequence[Sequence[int]]] = None,
        attention_options: Optional[Dict[str, Any]] = None,
        num_classes: int = 80,
        trainable_layers: int = 3,
        backbone_weights: Optional[str] = None,
        backbone_recipe: Optional[str] = None,
        frozen_bn: Optional[bool] = None,
        lr: float = 0.02,
        lr_reference_batch: int = 16,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: Sequence[int] = (16, 22),
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_factor: float = 0.001,
        min_size: int = 800,
        max_size: int = 1333,
        anchor_sizes: Optional[Sequence[int]] = None,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        box_representation_size: int = 1024,
        box_detections_per_img: int = 100,
        box_score_thresh: float = 0.05,
        mask_head_layers: Sequence[int] = (256, 256, 256, 256),
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{architecture}': choose one of {', '.join(ARCHITECTURES)}")
        self.save_hyperparameters()
        self.backbone_report = None
        self.model = self.build_model()
        self.iou_types = ("bbox", "segm") if architecture == "mask_rcnn" else ("bbox",)
        self.val_metric = detection_metric(self.iou_types)
        self.test_metric = detection_metric(self.iou_types)

    # ------------------------------------------------------------------ model

    def build_backbone(self) -> nn.Module:
        """The attention ResNet-FPN, randomly initialised; override to change the backbone.

        ``backbone_weights`` are loaded when training starts (:meth:`load_backbone_weights`), not
        here: building the module (configs, checkpoints, analysis) never needs the file.
        """
        hp = self.hparams
        frozen_bn = hp.frozen_bn if hp.frozen_bn is not None else bool(hp.backbone_weights)
        backbone, _ = attention_resnet_fpn(
            hp.depth, hp.attention, hp.placement, hp.attention_options,
            trainable_layers=hp.trainable_layers, frozen_bn=frozen_bn,
        )
        return backbone

    def load_backbone_weights(self, path: Optional[str] = None) -> Optional[BackboneLoadReport]:
        """Load classification weights (``backbone_weights`` unless ``path``) into the backbone's
        ResNet and report what was loaded, what is new, and what was ignored (the ``fc`` head)."""
        weights = _resolve_backbone_weights(path or self.hparams.backbone_weights, self.hparams.backbone_recipe)
        if weights is None:
            return None
        self.backbone_report = load_backbone_weights(self.model.backbone.body, weights, exclude=("fc.",))
        rank_zero_info(f"backbone weights {weights}: {self.backbone_report.summary()}")
        return self.backbone_report

    def build_model(self) -> nn.Module:
        """The detector; override to change it while keeping the recipe and the evaluation."""
        hp = self.hparams
        # the size options go through under their own names (see build_detector for their meaning)
        options = {name: hp[name] for name in _DETECTOR_OPTIONS}
        return build_detector(hp.architecture, hp.num_classes, self.build_backbone(), **options)

    def on_fit_start(self) -> None:
        # after a resume the checkpoint holds the weights: start from backbone_weights only on a
        # fresh run (Lightning restores checkpoints after setup, so this is the first hook that knows)
        if self.trainer.ckpt_path is None and self.hparams.backbone_weights:
            if self.trainer.is_global_zero:  # a missing digits backbone is trained once, by rank 0
                _resolve_backbone_weights(self.hparams.backbone_weights, self.hparams.backbone_recipe)
            self.trainer.strategy.barrier("backbone_weights")
            self.load_backbone_weights()

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        return self.model(images, targets)

    # ------------------------------------------------------------------ checks

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(
                f"the data has {data_classes} object categories but model.num_classes is {self.hparams.num_classes}; "
                f"set --model.num_classes {data_classes}"
            )
        if self.hparams.architecture == "mask_rcnn" and datamodule is not None and not getattr(datamodule, "masks", True):
            raise ValueError("mask_rcnn needs instance masks: set --data.masks true")

    # ------------------------------------------------------------------ steps

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, [{k: v for k, v in t.items() if k != "image_id"} for t in targets])
        loss = sum(losses.values())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    @staticmethod
    def metric_inputs(predictions: List[Dict[str, Tensor]], targets: List[Dict[str, Tensor]]):
        """torchvision's outputs and the data's targets in torchmetrics' format (boolean masks)."""
        preds, truth = [], []
        for p, t in zip(predictions, targets):
            entry = {"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"]}
            if "masks" in p:
                entry["masks"] = p["masks"][:, 0] > 0.5  # (N, 1, H, W) probabilities -> (N, H, W)
            preds.append(entry)
            gt = {"boxes": t["boxes"], "labels": t["labels"], "iscrowd": t["iscrowd"], "area": t["area"]}
            if "masks" in t and "masks" in p:
                gt["masks"] = t["masks"].bool()
            truth.append(gt)
        return preds, truth

    def _evaluate(self, batch, metric) -> None:
        images, targets = batch
        predictions = self.model(images)
        metric.update(*self.metric_inputs(predictions, targets))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> List[Dict[str, Tensor]]:
        images = batch[0] if isinstance(batch, (tuple, list)) and isinstance(batch[0], (list, tuple)) else batch
        return self.model(list(images))

    def _log_metric(self, metric, stage: str) -> None:
        gather_list_states(metric)
        # how many images the AP covers (all processes'): COCO val2017 gives 5000
        self.log(f"{stage}/images", float(len(metric.groundtruth_labels)))
        values = metric.compute()
        logged = {}
        for iou_type in self.iou_types:
            prefix = iou_type if len(self.iou_types) > 1 else ""
            for key, name in METRIC_NAMES.items():
                value = values[f"{prefix}_{key}" if prefix else key]
                logged[f"{stage}/{_IOU_PREFIX[iou_type]}_{name}"] = value.float()
        self.log(f"{stage}/box_AP50", logged.pop(f"{stage}/box_AP50"), prog_bar=True)
        self.log_dict(logged)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        hp = self.hparams
        rank_zero_info(self.lr_message())
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.scaled_lr(), momentum=hp.momentum, weight_decay=hp.weight_decay)
        steps_per_epoch = self._steps_per_epoch()
        milestones = sorted(hp.milestones)

        def factor(step: int) -> float:
            # one schedule per optimiser step: warm-up over the first steps, then the epoch steps;
            # a pure function of the step count, so a resumed run continues it exactly
            warm = 1.0
            if step < hp.warmup_iters:
                alpha = step / hp.warmup_iters
                warm = hp.warmup_factor * (1 - alpha) + alpha
            epoch = step // steps_per_epoch if steps_per_epoch else self.current_epoch
            return warm * hp.gamma ** bisect.bisect_right(milestones, epoch)

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _steps_per_epoch(self) -> Optional[int]:
        trainer = self._trainer
        if trainer is None or not trainer.max_epochs or trainer.max_epochs < 1:
            return None
        trainer.estimated_stepping_batches  # noqa: B018 - loads the training data, sets num_training_batches
        batches = trainer.num_training_batches
        if batches in (None, float("inf")):
            return None
        return max(1, -(-int(batches) // trainer.accumulate_grad_batches))

    def on_train_epoch_start(self) -> None:
        self.log("lr_scaled", float(self.scaled_lr()), on_step=False, on_epoch=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, prog_bar=True)
