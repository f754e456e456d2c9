"""Object detection and instance segmentation: the LightningModule behind the paper's Tables 2 and 3.

torchvision's Faster R-CNN or Mask R-CNN on an attention-ResNet + FPN backbone
(`csa_lightning.models.detection`). The optimiser and schedule are the same pieces as the
classification task's (`csa_lightning.tasks.recipe`); their defaults are the paper's 2x
schedule as in torchvision's references and mmdetection: SGD, lr 0.02 for a global batch of 16
(scaled linearly), momentum 0.9, weight decay 1e-4, 24 epochs with lr / 10 at epochs 16 and 22,
linear warm-up over the first 500 iterations from lr / 1000; backbone from ImageNet weights,
FrozenBatchNorm, 3 trainable stages.

Validation and test report COCO AP, AP50, AP75, APs, APm and APl for boxes (``val/box_AP`` ...)
and, with Mask R-CNN, masks (``val/mask_AP`` ...), through torchmetrics' MeanAveragePrecision with
the faster_coco_eval backend; targets carry ``iscrowd`` and ``area`` so that crowd regions are
ignored and the size split uses the annotation area, as COCO's own evaluation does.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ..models import DetectorSpec, RCNNSpec, network_spec
from ..models.backbone_weights import BackboneLoadReport, load_backbone_weights
from ..run_folder import resolve_checkpoint
from .recipe import OptimizerCallable, ScaledRecipe, sgd, step_decay
from .schedules import Schedule

#: the paper's COCO 2x recipe (Section 4.2), the defaults of the two pieces
COCO_SGD = sgd(lr=0.02, momentum=0.9, weight_decay=1e-4)
COCO_2X_STEPS = step_decay(milestones=[16, 22], gamma=0.1, warmup_iters=500, warmup_factor=0.001)

__all__ = ["DetectionModule", "detection_metric", "gather_list_states", "METRIC_NAMES"]

#: torchmetrics' result keys -> the names logged (COCO's AP, AP50, AP75, APs, APm, APl)
METRIC_NAMES = {
    "map": "AP",
    "map_50": "AP50",
    "map_75": "AP75",
    "map_small": "APs",
    "map_medium": "APm",
    "map_large": "APl",
}
_IOU_PREFIX = {"bbox": "box", "segm": "mask"}


def detection_metric(iou_types: Sequence[str] = ("bbox",), backend: str = "faster_coco_eval"):
    """COCO mAP for boxes (and masks) as this module computes it."""
    import numpy as np
    from torchmetrics.detection import MeanAveragePrecision

    # COCO's own thresholds in float64: torchmetrics' defaults come from float32 torch.linspace
    # (0.550000011920929, 0.0099999998), which moves the recall sampling and AP by up to ~5e-4
    iou_thresholds = np.linspace(0.5, 0.95, 10).tolist()
    rec_thresholds = np.linspace(0.0, 1.0, 101).tolist()
    # built on the CPU whatever the default device (Lightning moves it with the module): under the
    # meta device (the ablation runner's up-front check of every variant) torchmetrics cannot build it
    with torch.device("cpu"):
        return MeanAveragePrecision(
            iou_type=tuple(iou_types),  # type: ignore[arg-type]  # checked: "bbox" and/or "segm"
            backend=backend,  # type: ignore[arg-type]  # checked: one of torchmetrics' two
            iou_thresholds=iou_thresholds,
            rec_thresholds=rec_thresholds,
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
        gathered: List[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, [t.cpu() if isinstance(t, Tensor) else t for t in local])
        device = metric.device
        setattr(metric, name, [t.to(device) if isinstance(t, Tensor) else t for part in gathered for t in part])


class DetectionModule(ScaledRecipe):
    """Faster R-CNN / Mask R-CNN with an attention ResNet-FPN backbone, with the paper's 2x recipe.

    Args:
        net: the detector, a [`DetectorSpec`][csa_lightning.models.DetectorSpec] (default ``RCNNSpec()``:
            Faster R-CNN, plain ResNet-50-FPN, 80 categories); in a config, ``class_path`` /
            ``init_args``, e.g. ``--model.net.attention csa``. Stored in the hyperparameters as
            plain values, so ``load_from_checkpoint`` rebuilds it.
        backbone_weights: a torchvision ResNet state dict, a ClassificationModule checkpoint of this
            project, or a run folder holding one (its newest checkpoint); the ``fc`` head is ignored.
            Loaded when a fresh fit starts (not on resume, not when building the module).
        backbone_partial: allow ``backbone_weights`` that leave tensors other than the gates' unloaded.
        optimizer: the recipe's pieces, as [`ClassificationModule`][csa_lightning.tasks.ClassificationModule]'s; the
            defaults are the COCO 2x recipe (SGD lr 0.02 for 16 images, momentum 0.9, weight decay 1e-4;
            ``StepDecay([16, 22], warmup_iters=500)``).
        lr_scaling: see ``optimizer``.
        lr_reference_batch: see ``optimizer``.
        lr_schedule: see ``optimizer``.
        no_weight_decay_on: see ``optimizer``.
    """

    def __init__(
        self,
        net: Optional[DetectorSpec] = None,
        backbone_weights: Optional[str] = None,
        backbone_partial: bool = False,
        optimizer: OptimizerCallable = COCO_SGD,  # type: ignore[assignment]  # a piece's config form
        lr_scaling: str = "linear",
        lr_reference_batch: int = 16,
        lr_schedule: Schedule = COCO_2X_STEPS,  # type: ignore[assignment]  # a piece's config form
        no_weight_decay_on: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.init_recipe(optimizer, lr_schedule, lr_scaling, lr_reference_batch, no_weight_decay_on)
        self.net_spec = network_spec(net if net is not None else RCNNSpec(), DetectorSpec)
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_schedule"])
        self.hparams["net"] = self.net_spec.config()  # plain values: load_from_checkpoint rebuilds the network
        self.store_recipe()
        self.backbone_report: Optional[BackboneLoadReport] = None
        self.model = self.build_model()
        self.iou_types = getattr(self.net_spec, "iou_types", ("bbox",))
        self.val_metric = detection_metric(self.iou_types)
        self.test_metric = detection_metric(self.iou_types)

    # ------------------------------------------------------------------ model

    def build_model(self) -> nn.Module:
        """The detector (``net.build()``); override to change it while keeping the recipe and the evaluation."""
        return self.net_spec.build()

    def load_backbone_weights(self, path: Optional[str] = None) -> Optional[BackboneLoadReport]:
        """Load classification weights (``backbone_weights`` unless ``path``) into the backbone's
        ResNet and report what was loaded, what is new, and what was ignored (the ``fc`` head)."""
        source = path or self.hparams["backbone_weights"]
        if not source:
            return None
        weights = resolve_checkpoint(source, what="backbone weights")
        body: nn.Module = self.model.backbone.body  # type: ignore[union-attr,assignment]
        self.backbone_report = load_backbone_weights(
            body, weights, exclude=("fc.",), allow_partial=self.hparams["backbone_partial"]
        )
        report = self.backbone_report
        rank_zero_info(f"backbone weights {weights}: {report.summary()}")
        return report

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # after a resume the checkpoint holds the weights: start from backbone_weights only on a
        # fresh run (Lightning restores checkpoints after setup, so this is the first hook that knows)
        if self.trainer.ckpt_path is None and self.hparams["backbone_weights"]:
            self.load_backbone_weights()

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        return self.model(images, targets)

    # ------------------------------------------------------------------ checks

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.net_spec.num_classes:
            raise ValueError(
                f"the data has {data_classes} object categories "
                f"but model.net.num_classes is {self.net_spec.num_classes}; "
                f"set --model.net.num_classes {data_classes}"
            )
        if "segm" in self.iou_types and datamodule is not None and not getattr(datamodule, "masks", True):
            raise ValueError("mask_rcnn needs instance masks: set --data.masks true")

    # ------------------------------------------------------------------ steps

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, [{k: v for k, v in t.items() if k != "image_id"} for t in targets])
        loss = sum(losses.values())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True, batch_size=len(images)
        )
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
            # copies: the metric keeps them until the epoch ends, and a loader may reuse its buffers
            gt = {key: t[key].clone() for key in ("boxes", "labels", "iscrowd", "area")}
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
        """torchvision's detections per image (boxes in the image's own pixels), with the image's
        id where the data has one; ``PredictionWriter`` writes them in COCO's results format."""
        has_targets = isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], (list, tuple))
        images = batch[0] if has_targets else batch
        detections = self.model(list(images))
        if has_targets:
            for detection, target in zip(detections, batch[1]):
                if "image_id" in target:
                    detection["image_id"] = int(target["image_id"])
        return detections

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
